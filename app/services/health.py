"""HealthService: what ``/healthz`` reports about the host (libvirt, the guests' network, and
whether the network policy can be enforced)."""
from __future__ import annotations

import dataclasses
import typing as t
from pathlib import Path

from app.config import Settings
from app.errors import AppError
from app.services.templates import TemplateCatalog
from app.virt.hostnet import BRIDGE_NF_IPTABLES, bridge_netfilter_problem

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor


@dataclasses.dataclass(frozen=True)
class HostHealth:
    healthy: bool  # False: the host must not be sent work (503)
    status: str  # "ok", "degraded" (guest network down), "unhealthy" or "unavailable"
    libvirt: str
    accelerator: str
    libvirt_version: str | None = None
    network: str | None = None
    network_policy: str | None = None


@dataclasses.dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, str]  # each check: "ok" or what is wrong


class HealthService:
    """:param bridge_nf_path: the sysctl that says whether bridged frames pass iptables."""

    def __init__(self, settings: Settings, hypervisor: Hypervisor, domain_type: str,
                 bridge_nf_path: Path = BRIDGE_NF_IPTABLES,
                 templates: TemplateCatalog | None = None) -> None:
        self.settings = settings
        self.templates = templates
        self.hypervisor = hypervisor
        self.accelerator = "kvm" if domain_type == "kvm" else "tcg"
        self.bridge_nf_path = bridge_nf_path

    def check(self) -> HostHealth:
        try:
            version = self.hypervisor.ping()
            network_up = self.hypervisor.network_is_active(self.settings.network_name)
        except AppError as exc:
            return HostHealth(healthy=False, status="unavailable", libvirt=exc.message,
                              accelerator=self.accelerator)
        problem = bridge_netfilter_problem(self.bridge_nf_path)
        status = "unhealthy" if problem else "ok" if network_up else "degraded"
        return HostHealth(healthy=not problem, status=status, libvirt="reachable",
                          libvirt_version=version,
                          network="active" if network_up else "inactive",
                          network_policy=problem or "enforced", accelerator=self.accelerator)

    def ready(self) -> Readiness:
        """Whether this host can take work now (a load balancer's probe): libvirt answers,
        the guest network and bridge filtering are up, and the default image is built."""
        health = self.check()
        checks = {"libvirt": "ok" if health.libvirt == "reachable" else health.libvirt,
                  "network": "ok" if health.network == "active" else
                  f"network {self.settings.network_name} is {health.network or 'unknown'}",
                  "networkPolicy": "ok" if health.network_policy == "enforced" else
                  health.network_policy or "unknown"}
        checks["image"] = self._image_problem() or "ok"
        return Readiness(ready=all(value == "ok" for value in checks.values()), checks=checks)

    def _image_problem(self) -> str:
        if self.templates is None:
            return "no template catalog"
        try:
            self.templates.current_build(self.templates.get(None))
        except AppError as exc:
            return exc.message
        return ""
