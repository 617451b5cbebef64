"""EgressPolicy: a VM's ``allowIps``/``outboundInternet`` as the kernel enforces them.

The policy lives in the VM's ipsets, which its nwfilter matches against
(:mod:`app.virt.egress`); applying one is an atomic swap of those sets.
"""
from __future__ import annotations

from app.config import Settings
from app.errors import InvalidRequest
from app.models import VmRecord
from app.virt.ipsets import IpSets


class EgressPolicy:
    def __init__(self, settings: Settings, ipsets: IpSets) -> None:
        self.settings = settings
        self.ipsets = ipsets

    def check(self, allow_ips: tuple[str, ...]) -> None:
        """:raises InvalidRequest: more entries than ``MAX_ALLOW_IPS``."""
        limit = self.settings.max_allow_ips
        if len(allow_ips) > limit:
            raise InvalidRequest(f"allowIps has {len(allow_ips)} entries; at most {limit} are "
                                 f"allowed (the first one over is {allow_ips[limit]!r})")

    def apply(self, record: VmRecord) -> None:
        """Fill the VM's egress sets from its record (its nwfilter matches against them)."""
        self.ipsets.apply(record.name, record.allow_ips, record.outbound_internet,
                          str(self.settings.gateway_ip))
