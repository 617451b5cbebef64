"""Remote hosts (HOSTS, issue 17) for the unit tests over fakes: a module that needs them
overrides the ``world_settings`` fixture (tests/unit/conftest.py) with :func:`hosts_settings`;
each host's libvirt is then a fake in ``world.fakes.remotes[name]``."""
from __future__ import annotations

import json
import typing as t

H2 = {"name": "h2", "uri": "qemu+tcp://10.210.0.2/system", "guestCidr": "172.16.1.0/24"}
PROBE_S = 0.5  # HOST_PROBE_TIMEOUT_S: a fake host that hangs is DOWN after this


def hosts_settings(*hosts: dict[str, t.Any]) -> dict[str, t.Any]:
    """Settings for a World whose HOSTS are ``hosts``."""
    return {"HOSTS": json.dumps(list(hosts)), "HOST_PROBE_TIMEOUT_S": PROBE_S}


def shipped_h2(world: t.Any) -> t.Any:
    """h2's fake libvirt, with the default image shipped there."""
    world.services.shipper.ship("h2", "default")
    return world.fakes.remotes["h2"]
