#!/usr/bin/env bash
# Prepare a Debian 12 host for run-dat-sheesh. Idempotent; run as root.
#   - installs the Debian packages (QEMU, libvirt, image build tools, nginx, and chromium for
#     the admin console's browser tests)
#   - configures libvirt's QEMU driver and starts virtlogd + libvirtd
#   - with ENABLE_KSM=1: switches on and tunes kernel samepage merging (KSM_PAGES_TO_SCAN,
#     KSM_SLEEP_MS); ENABLE_KSM=0 stops it; unset leaves it as it is
#     (systemctl where systemd is PID 1, the daemons directly where it is not)
#   - creates the project virtualenv (VENV, default .venv) with the app and the client
#     (`rds`) installed
#   - defines and starts the guests' network and removes leftovers of dead VMs
#     (python -m app.cli prepare-host)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO_ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
log() { printf '[host-setup] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "host-setup: must run as root (installs packages, manages libvirt)" >&2
    exit 1
fi

PACKAGES=(
    qemu-system-x86 qemu-utils
    libvirt-daemon libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
    libvirt-dev pkg-config gcc libc6-dev python3-dev python3-venv
    dnsmasq-base iptables ebtables nftables ipset iproute2
    debootstrap busybox-static cpio kmod e2fsprogs xz-utils wget ca-certificates
    openssh-client nginx make tini shellcheck
    chromium
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -q
    timeout 1200 apt-get install -y -q --no-install-recommends "${missing[@]}"
    # nginx is configured by deploy/nginx/ when wanted; the package must not squat port 80.
    if [ -d /run/systemd/system ]; then systemctl disable --now nginx 2>/dev/null || true; fi
else
    log "Debian packages already installed"
fi

# libvirt's QEMU driver: QEMU runs as the unprivileged libvirt-qemu user (group kvm), and
# libvirt's DAC driver hands each VM's files (disk chain, kernel, initrd, fw_cfg files) to it
# while the VM runs (dynamic_ownership, remember_owner); the app makes the directories on the
# way searchable by group kvm (app/virt/qemu_access.py). No MAC driver (AppArmor/SELinux) is
# configured here. Earlier versions ran QEMU as root: their block is replaced.
QEMU_CONF=/etc/libvirt/qemu.conf
if ! grep -q '^# run-dat-sheesh v2' "$QEMU_CONF" 2>/dev/null; then
    log "configuring $QEMU_CONF (QEMU as libvirt-qemu)"
    sed -i '/^# run-dat-sheesh/,/^security_driver/d' "$QEMU_CONF"
    cat >> "$QEMU_CONF" <<'EOF'
# run-dat-sheesh v2: QEMU runs unprivileged; libvirt hands it each VM's files (DAC).
user = "libvirt-qemu"
group = "kvm"
dynamic_ownership = 1
remember_owner = 1
security_driver = "none"
EOF
    restart_libvirtd=1
fi
# As udev does on systemd hosts: /dev/kvm for group kvm (QEMU's group). Without it libvirt,
# probing QEMU as libvirt-qemu, sees KVM come and go and re-probes on every call.
if [ -e /dev/kvm ]; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi

# The guests' network policy is iptables rules on bridged traffic: without bridge netfilter
# those rules are skipped (only the ebtables part applies). /healthz reports 503 while it is off.
modprobe br_netfilter 2>/dev/null || true
for key in net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables; do
    sysctl -q -w "$key=1" >/dev/null 2>&1 || true
done
if [ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null)" != 1 ]; then
    echo "host-setup: bridge netfilter cannot be turned on (modprobe br_netfilter;" \
         "sysctl net.bridge.bridge-nf-call-iptables=1): the network policy would not apply" >&2
    exit 1
fi
if [ -d /etc/sysctl.d ] && [ ! -f /etc/sysctl.d/60-run-dat-sheesh.conf ]; then
    printf '%s\n' "# run-dat-sheesh: guests' IP rules need bridged traffic to pass iptables" \
        "net.bridge.bridge-nf-call-iptables = 1" "net.bridge.bridge-nf-call-ip6tables = 1" \
        > /etc/sysctl.d/60-run-dat-sheesh.conf
    echo br_netfilter > /etc/modules-load.d/run-dat-sheesh.conf 2>/dev/null || true
fi

# Kernel samepage merging, only when the operator asks (README "Density"). VMs restored from
# one memory snapshot hold many identical pages; ksmd merges them (an idle 256 MiB VM: ~194 MiB
# of host memory without, ~91 MiB with) at the price of CPU for the scanning and of a side
# channel between guests (the time a write to a merged page takes tells a guest that another
# one holds the same page). QEMU marks guest memory mergeable by default. Not persistent: the
# next run of this script (make run) applies it again.
KSM=/sys/kernel/mm/ksm
case "${ENABLE_KSM:-}" in
    1)
        if [ ! -w "$KSM/run" ]; then
            echo "host-setup: ENABLE_KSM=1 but this kernel has no KSM ($KSM)" >&2
            exit 1
        fi
        # ~200 MiB/s scanned: catches up with a burst of creates within a minute or two, for
        # a fraction of one core.
        echo "${KSM_PAGES_TO_SCAN:-1000}" > "$KSM/pages_to_scan"
        echo "${KSM_SLEEP_MS:-20}" > "$KSM/sleep_millisecs"
        echo 1 > "$KSM/run"
        log "KSM on (pages_to_scan $(cat "$KSM/pages_to_scan"), sleep_millisecs $(cat "$KSM/sleep_millisecs"))"
        ;;
    0)
        if [ -w "$KSM/run" ]; then echo 0 > "$KSM/run"; log "KSM stopped"; fi
        ;;
    "") ;;
    *)
        echo "host-setup: ENABLE_KSM must be 1 or 0, not ${ENABLE_KSM}" >&2
        exit 1
        ;;
esac

daemon_up() { timeout 10 virsh -c qemu:///system version >/dev/null 2>&1; }
if [ -d /run/systemd/system ]; then
    systemctl enable --now virtlogd.socket libvirtd.socket >/dev/null 2>&1 || true
    if [ "${restart_libvirtd:-0}" = 1 ]; then systemctl restart libvirtd; fi
    systemctl start libvirtd
else
    # No systemd: start the daemons directly (a dead or silent libvirtd is restarted).
    if [ "${restart_libvirtd:-0}" = 1 ]; then
        "$REPO_ROOT/deploy/libvirt-daemons.sh" restart
    else
        "$REPO_ROOT/deploy/libvirt-daemons.sh" start
    fi
fi
for _ in $(seq 1 100); do daemon_up && break; sleep 0.2; done
daemon_up || { echo "host-setup: libvirtd does not answer" >&2; exit 1; }
log "libvirtd up ($(virsh -c qemu:///system version --daemon 2>/dev/null | awk '/daemon/ {print "libvirt " $NF} /hypervisor/ {print "QEMU " $NF}' | tr '\n' ' '))"

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# The app, and the Python client with its `rds` command (client/, also installable alone).
stamp="$VENV/.rds-installed"
if [ ! -f "$stamp" ] || [ "$REPO_ROOT/setup.cfg" -nt "$stamp" ] \
        || [ "$REPO_ROOT/client/pyproject.toml" -nt "$stamp" ] || [ ! -x "$VENV/bin/rds" ]; then
    log "installing the app, the client (rds) and their dependencies into $VENV"
    pip_log="$(mktemp)"
    if ! timeout 1200 "$VENV/bin/pip" install -q -e "${REPO_ROOT}[libvirt,test]" \
            -e "${REPO_ROOT}/client" >"$pip_log" 2>&1; then
        cat "$pip_log" >&2
        exit 1
    fi
    rm -f "$pip_log"
    touch "$stamp"
fi

log "preparing libvirt network and cleaning leftovers"
cd "$REPO_ROOT"
timeout 300 "$VENV/bin/python" -m app.cli prepare-host
log "host ready"
