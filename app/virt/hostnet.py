"""Facts about the host's network stack that the VMs' isolation depends on (read-only)."""
from __future__ import annotations

from pathlib import Path

# With bridge netfilter off, frames between a VM's tap and the bridge skip iptables: the
# nwfilter's IP rules (what a guest may reach) are not applied, only its ebtables rules.
BRIDGE_NF_IPTABLES = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def bridge_netfilter_problem(path: Path = BRIDGE_NF_IPTABLES) -> str:
    """"" when bridged traffic passes iptables, else what is wrong (for ``/healthz``)."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return ("bridge netfilter is not loaded (modprobe br_netfilter): guests' IP rules are "
                "not enforced")
    except OSError as exc:
        return f"cannot read {path}: {exc}"
    if value != "1":
        return (f"{path.name} is {value} (must be 1: sysctl -w "
                f"net.bridge.bridge-nf-call-iptables=1): guests' IP rules are not enforced")
    return ""
