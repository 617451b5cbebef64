"""``rds``: the command line of run-dat-sheesh.

    rds vm create --cpu 1 --mem 256 --label ci.job=42 --ttl 600     # prints the VM id
    rds exec "$VM" -- make test                                      # exits with make's code
    rds vm rm --label ci.job=42

``RDS_URL`` and ``RDS_API_KEY`` give the service (``--url``/``--api-key`` override them).
Exit codes: 0 done, 1 an error (the server's message on stderr), 2 bad usage, 130 interrupted;
``exec``, ``run-ts`` and ``run-js`` exit with the command's own code, 124 when it timed out.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import typing as t
from pathlib import Path

from rds_client._version import __version__
from rds_client.cli.output import print_json, print_vm, print_vms
from rds_client.cli.progress import Spinner
from rds_client.client import Client, resolve_config
from rds_client.errors import RdsError
from rds_client.models import CommandResult, OutputChunk, RunResult
from rds_client.streaming import ExecStream

EXIT_ERROR, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 1, 2, 124, 130


class UsageError(Exception):
    """Bad arguments found after parsing (exit 2)."""


def key_value(text: str) -> tuple[str, str]:
    """``k=v`` of ``--label``/``--env``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    # --url/--api-key may come before or after the subcommand: every parser knows them, and
    # SUPPRESS keeps a subparser from resetting what the main parser read.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help="service URL (default: $RDS_URL)")
    common.add_argument("--api-key", default=argparse.SUPPRESS,
                        help="API key (default: $RDS_API_KEY)")
    parser = argparse.ArgumentParser(
        prog="rds", parents=[common], description="Disposable Linux sandboxes of "
        "run-dat-sheesh.", epilog="Exit codes: 0 ok, 1 error, 2 usage; exec/run-ts/run-js "
        "exit with the command's code (124: timed out).")
    parser.add_argument("--version", action="version", version=f"rds {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    vm = commands.add_parser("vm", parents=[common], help="create, list, inspect and delete VMs")
    vms = vm.add_subparsers(dest="vm_command", required=True, metavar="ACTION")
    _add_vm_commands(vms, common)

    run = commands.add_parser("exec", parents=[common],
                              help="run a shell command, streaming its output")
    run.add_argument("vm_id", metavar="ID")
    run.add_argument("--cwd", help="working directory inside /workspace")
    run.add_argument("--env", action="append", type=key_value, default=[], metavar="K=V")
    _add_timeout(run)
    run.add_argument("argv", nargs="*", metavar="CMD", help="after '--': one argument is a "
                     "shell command line; several are quoted and run as argv")
    run.set_defaults(handler=cmd_exec, takes_tail=True)

    for name, runtime, flag in (("run-ts", "TypeScript (Deno)", "--deno-flag"),
                                ("run-js", "JavaScript (Node.js)", "--node-flag")):
        script = commands.add_parser(name, parents=[common], help=f"run a {runtime} file")
        script.add_argument("vm_id", metavar="ID")
        script.add_argument("file", help="local file to run ('-': stdin)")
        script.add_argument("--in-vm", action="store_true",
                            help="FILE is a path inside the VM's workspace instead")
        script.add_argument("--env", action="append", type=key_value, default=[],
                            metavar="K=V")
        script.add_argument(flag, dest="flags", action="append", default=[], metavar="FLAG",
                            help=f"repeatable; write {flag}=--FLAG (e.g. {flag}=--seed=1)")
        _add_timeout(script)
        script.add_argument("args", nargs="*", metavar="ARG",
                            help="the script's arguments (after '--')")
        script.set_defaults(handler=cmd_run, route=name, takes_tail=True)

    cp = commands.add_parser("cp", parents=[common], help="copy files in or out: "
                             "cp ./dir ID:/workspace/x, cp ID:/workspace/x ./out")
    cp.add_argument("source", metavar="SRC")
    cp.add_argument("dest", metavar="DEST", help="a directory: a directory's contents land "
                    "in it, a file under its own name")
    cp.set_defaults(handler=cmd_cp)

    snap = commands.add_parser("snapshot", parents=[common], help="snapshot a VM's disk")
    snap.add_argument("vm_id", metavar="ID")
    snap.add_argument("-o", "--output", choices=["id", "json"], default="id")
    snap.set_defaults(handler=cmd_snapshot)
    return parser


def _add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=int, dest="timeout_ms", metavar="MS",
                        help="the command's timeout in ms (server default 30000)")


def _add_vm_commands(vms: t.Any, common: argparse.ArgumentParser) -> None:
    create = vms.add_parser("create", parents=[common], help="create a VM; prints its id")
    create.add_argument("--cpu", type=int, default=1)
    create.add_argument("--mem", type=int, default=256, metavar="MB")
    create.add_argument("--allow", action="append", default=[], metavar="CIDR",
                        help="egress destination (repeatable; needs --internet)")
    create.add_argument("--internet", action="store_true", help="outboundInternet: true")
    create.add_argument("--label", action="append", type=key_value, default=[], metavar="K=V")
    create.add_argument("--ttl", type=int, metavar="SECONDS", help="delete it after this long")
    create.add_argument("--idle-stop", type=int, metavar="SECONDS")
    create.add_argument("--image", help="template (imageId)")
    create.add_argument("--snapshot", help="start the disk from this disk snapshot")
    create.add_argument("--disk", type=int, metavar="MB", help="disk size")
    create.add_argument("--provision", choices=["auto", "boot", "snapshot", "pool"])
    create.add_argument("-o", "--output", choices=["id", "json"], default="id")
    create.set_defaults(handler=cmd_vm_create)

    ls = vms.add_parser("ls", parents=[common], help="list VMs")
    ls.add_argument("--label", action="append", type=key_value, default=[], metavar="K=V")
    ls.add_argument("--state", help="e.g. RUNNING")
    ls.add_argument("-o", "--output", choices=["table", "json"], default="table")
    ls.set_defaults(handler=cmd_vm_ls)

    get = vms.add_parser("get", parents=[common], help="show one VM")
    get.add_argument("vm_id", metavar="ID")
    get.add_argument("-o", "--output", choices=["table", "json"], default="json")
    get.set_defaults(handler=cmd_vm_get)

    rm = vms.add_parser("rm", parents=[common], help="delete VMs by id or by label")
    rm.add_argument("vm_ids", nargs="*", metavar="ID")
    rm.add_argument("--label", action="append", type=key_value, default=[], metavar="K=V")
    rm.set_defaults(handler=cmd_vm_rm)

    keep = vms.add_parser("keepalive", parents=[common], help="push a VM's expiry")
    keep.add_argument("vm_id", metavar="ID")
    keep.add_argument("--ttl", type=int, metavar="SECONDS",
                      help="from now (default: the VM's own TTL)")
    keep.set_defaults(handler=cmd_vm_keepalive)

    for action, text in (("stop", "shut a VM down (disk kept)"), ("start", "boot it again")):
        sub = vms.add_parser(action, parents=[common], help=text)
        sub.add_argument("vm_id", metavar="ID")
        sub.set_defaults(handler=cmd_vm_power, action=action)


# ---- handlers: each returns the exit code ------------------------------------------------------

def cmd_vm_create(client: Client, args: argparse.Namespace) -> int:
    with Spinner("creating VM", stream=sys.stderr):
        vm = client.create_vm(cpu=args.cpu, mem_mb=args.mem, allow_ips=args.allow,
                              outbound_internet=args.internet,
                              labels=dict(args.label) if args.label else None,
                              ttl_seconds=args.ttl, idle_stop_seconds=args.idle_stop,
                              image_id=args.image, snapshot_id=args.snapshot,
                              disk_size_mb=args.disk, provision_mode=args.provision)
    if args.output == "json":
        print_json(vm.raw)
    else:
        print(vm.id)
    return 0


def cmd_vm_ls(client: Client, args: argparse.Namespace) -> int:
    vms = client.list_vms(labels=dict(args.label), state=args.state)
    if args.output == "json":
        print_json([vm.raw for vm in vms])
    else:
        print_vms(vms)
    return 0


def cmd_vm_get(client: Client, args: argparse.Namespace) -> int:
    vm = client.get_vm(args.vm_id)
    if args.output == "json":
        print_json(vm.raw)
    else:
        print_vm(vm)
    return 0


def cmd_vm_rm(client: Client, args: argparse.Namespace) -> int:
    if bool(args.vm_ids) == bool(args.label):
        raise UsageError("give VM ids or --label K=V (not both)")
    if args.label:
        for vm_id in client.delete_by_label(dict(args.label)):
            print(vm_id)
        return 0
    for vm_id in args.vm_ids:
        client.delete_vm(vm_id)
        print(vm_id, flush=True)
    return 0


def cmd_vm_keepalive(client: Client, args: argparse.Namespace) -> int:
    vm = client.keepalive(args.vm_id, args.ttl)
    print(vm.expires_at.isoformat() if vm.expires_at else "no expiry")
    return 0


def cmd_vm_power(client: Client, args: argparse.Namespace) -> int:
    stop = args.action == "stop"
    with Spinner("stopping VM" if stop else "starting VM", stream=sys.stderr):
        (client.stop_vm if stop else client.start_vm)(args.vm_id)
    return 0


def cmd_exec(client: Client, args: argparse.Namespace) -> int:
    argv = args.argv + args.tail
    if not argv:
        raise UsageError("exec needs a command: rds exec ID -- CMD [ARG ...]")
    cmd = argv[0] if len(argv) == 1 else shlex.join(argv)
    stream = client.stream(args.vm_id, cmd, cwd=args.cwd, env=dict(args.env),
                           timeout_ms=args.timeout_ms)
    return relay(stream)


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    script_args = args.args + args.tail
    source: dict[str, t.Any]
    if args.in_vm:
        source = {"path": args.file}
    elif args.file == "-":
        source = {"code": sys.stdin.read()}
    else:
        source = {"code": Path(args.file).read_text(encoding="utf-8")}
    flags = {"deno_flags" if args.route == "run-ts" else "node_flags": args.flags}
    opener = client.stream_ts if args.route == "run-ts" else client.stream_js
    stream = opener(args.vm_id, **source, args=script_args, env=dict(args.env),
                    timeout_ms=args.timeout_ms, **flags)
    return relay(stream)


def relay(stream: ExecStream[t.Any]) -> int:
    """Copy a streamed command's output to ours as it comes; its exit code becomes ours."""
    outputs = {"stdout": sys.stdout, "stderr": sys.stderr}
    with stream:
        for item in stream:
            if isinstance(item, OutputChunk):
                write_through(outputs[item.stream], item)
    result = stream.result
    assert result is not None  # the stream raises when it ends without one
    return finish(result)


def write_through(out: t.TextIO, chunk: OutputChunk) -> None:
    """The chunk's bytes as they are (binary output stays binary), flushed at once."""
    out.flush()
    if hasattr(out, "buffer"):
        out.buffer.write(chunk.data)
        out.buffer.flush()
    else:  # a replaced stream (tests, IDEs) takes text
        out.write(chunk.text)
        out.flush()


def finish(result: CommandResult) -> int:
    for name in ("stdout", "stderr"):
        if getattr(result, f"{name}_truncated"):
            print(f"rds: {name} was cut at the server's output cap", file=sys.stderr)
    if isinstance(result, RunResult):
        if result.has_result:
            print(json.dumps(result.result))
        if result.error is not None:
            print(f"rds: script error: {json.dumps(result.error)}", file=sys.stderr)
    if result.timed_out:
        print("rds: the command timed out", file=sys.stderr)
        return EXIT_TIMEOUT
    return result.exit_code if 0 <= result.exit_code <= 255 else EXIT_ERROR


def cmd_cp(client: Client, args: argparse.Namespace) -> int:
    source, dest = remote_path(args.source), remote_path(args.dest)
    if (source is None) == (dest is None):
        raise UsageError("cp copies between here and a VM: one side must be ID:/path")
    if dest is not None:
        with Spinner("uploading", stream=sys.stderr) as spinner:
            client.upload(dest[0], args.source, dest[1], progress=spinner.bytes_done)
    else:
        assert source is not None
        with Spinner("downloading", stream=sys.stderr) as spinner:
            client.download(source[0], source[1], args.dest, progress=spinner.bytes_done)
    return 0


def remote_path(text: str) -> tuple[str, str] | None:
    """``ID:/path`` as (id, path); ``None`` for a local path (one with '/' before any ':')."""
    head, sep, tail = text.partition(":")
    if not sep or not head or "/" in head or head.startswith("."):
        return None
    return head, tail or "/workspace"


def cmd_snapshot(client: Client, args: argparse.Namespace) -> int:
    with Spinner("taking snapshot", stream=sys.stderr):
        snapshot = client.snapshot(args.vm_id)
    if args.output == "json":
        print_json(snapshot.raw)
    else:
        print(snapshot.id)
    return 0


# ---- entry point ------------------------------------------------------------------------------

def main(argv: t.Sequence[str] | None = None) -> int:
    """Run ``rds`` with ``argv`` (default: the process's); returns the exit code."""
    parser = build_parser()
    # What follows the first "--" is the command (exec) or the script's arguments (run-ts),
    # taken as it is: options there belong to the command, not to rds.
    argv = list(sys.argv[1:] if argv is None else argv)
    head, tail = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, None)
    args = parser.parse_args(head)  # exits 2 on bad usage
    if tail is not None and not getattr(args, "takes_tail", False):
        parser.error("'--' is only for exec, run-ts and run-js")
    args.tail = tail or []
    try:
        try:
            url, api_key = resolve_config(getattr(args, "url", None),
                                          getattr(args, "api_key", None))
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        with Client(url, api_key) as client:
            return int(args.handler(client, args))
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"rds: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RdsError as exc:
        print(f"rds: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError) as exc:  # a local file to upload, run or download into
        print(f"rds: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("rds: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
