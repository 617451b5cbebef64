"""Operator commands: ``python -m app.cli {prepare-host,serve,purge [--snapshots],cleanup}``."""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from app.config import DEV_API_KEY, ConfigError, load_settings
from app.virt.network_xml import build_network_xml

log = logging.getLogger("app.cli")


def prepare_host() -> None:
    """Define/start the guests' network and remove what dead VMs left behind."""
    from app.services.container import build_services
    services = build_services(load_settings())
    settings = services.settings
    bridge = settings.network_bridge
    created = services.hypervisor.ensure_network(
        settings.network_name,
        build_network_xml(settings.network_name, bridge, settings.network_cidr,
                          settings.network_mode),
        bridge_present=lambda: os.path.exists(f"/sys/class/net/{bridge}"),
        remove_stale_bridge=lambda: subprocess.run(["ip", "link", "delete", bridge],
                                                   timeout=30, check=False))
    print(f"network {settings.network_name} ({settings.network_cidr}, bridge "
          f"{settings.network_bridge}, {settings.network_mode}) "
          f"{'created' if created else 'present'}")
    services.vms.manager_key()
    services.vms.ipsets.refresh_host_sets()
    services.image_builder.sync_pool()
    print("storage pool rds-images lists the images (virsh vol-list rds-images)")
    for item in services.remove_orphans():
        print(f"removed orphan {item}")


def purge(snapshots: bool) -> None:
    """Delete every VM this service created (stale leftovers of test runs) and, with
    ``snapshots``, every snapshot too."""
    from app.services.container import build_services
    services = build_services(load_settings())
    count = services.vms.purge_all()
    snapshot_count = services.snapshots.purge_all() if snapshots else 0
    removed = services.remove_orphans(min_age_s=0)
    outdated = services.seeds.prune()
    print(f"purged {count} VM(s), {snapshot_count} snapshot(s), {len(removed)} orphan item(s), "
          f"{len(outdated)} outdated memory snapshot(s)")


def serve(extra: list[str]) -> None:
    settings = load_settings()
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "deploy", "gunicorn.conf.py")
    host = settings.bind_host if ":" not in settings.bind_host else f"[{settings.bind_host}]"
    print(f"run-dat-sheesh listening on http://{host}:{settings.port}  "
          f"(docs: http://{host}:{settings.port}/docs)")
    # Only the public default is shown: a real key must not end up in a journal.
    print(f"API key: {DEV_API_KEY}   <- development default, do not expose"
          if settings.api_key == DEV_API_KEY else "API key: as set in API_KEY")
    sys.stdout.flush()
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    os.execv(gunicorn, [gunicorn, "-c", config, *extra, "app:create_app()"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.cli", description=__doc__)
    parser.add_argument("command", choices=["prepare-host", "serve", "purge", "cleanup"])
    parser.add_argument("--snapshots", action="store_true",
                        help="purge: delete every disk snapshot too (kept by default)")
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    try:
        if args.command == "prepare-host":
            prepare_host()
        elif args.command == "serve":
            serve(extra)
        elif args.command == "purge":
            purge(args.snapshots)
        else:
            from app.services.container import build_services
            for item in build_services(load_settings()).remove_orphans():
                print(f"removed orphan {item}")
    except ConfigError as exc:
        raise SystemExit(f"configuration error: {exc}") from None


if __name__ == "__main__":
    main()
