#!/usr/bin/env bash
# Start (or restart) virtlogd and libvirtd on a host without systemd, as deploy/host-setup.sh
# does; the fault-injection tests restart libvirtd with it too (tests/integration/test_faults_host.py).
#   libvirt-daemons.sh start     start what is not running or does not answer
#   libvirt-daemons.sh restart   stop libvirtd (SIGTERM, then SIGKILL) and start it again
# Running VMs survive: QEMU runs on without libvirtd and the new libvirtd reconnects to it.
set -euo pipefail

log() { printf '[libvirt-daemons] %s\n' "$*"; }
daemon_up() { timeout 10 virsh -c qemu:///system version >/dev/null 2>&1; }

# The daemons outlive this script: they must not inherit its open files (a caller's `flock`
# on a lock file, say, would be held for as long as libvirtd runs).
close_inherited_fds() {
    local fd
    for fd in /proc/"$BASHPID"/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
}

# libvirtd runs under tini as a subreaper: QEMU daemonizes, and where PID 1 is slow to reap
# orphans (as on this kind of host) libvirt waits for each exited QEMU's zombie.
# The system libvirtd's pid, from its pid file (not by name: other libvirtd instances, e.g. a
# test's private one in a network namespace, are none of our business).
PID_FILE=/run/libvirtd.pid
system_libvirtd() {
    local pid
    pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = libvirtd ] || return 1
    echo "$pid"
}

under_tini() {
    local pid
    pid=$(system_libvirtd) || return 1
    [ "$(ps -o comm= -p "$(ps -o ppid= -p "$pid" | tr -d ' ')")" = tini ]
}

stop_libvirtd() {
    local pid
    pid=$(system_libvirtd) || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do [ -d "/proc/$pid" ] || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || return 0; sleep 0.1; done
}

start_libvirtd() {
    log "starting libvirtd (under tini -s)"
    mkdir -p /var/log/libvirt
    (close_inherited_fds; exec setsid tini -s -- libvirtd) </dev/null \
        >>/var/log/libvirt/libvirtd-run.log 2>&1 &
}

case "${1:-start}" in
    start|restart) ;;
    *) echo "usage: $0 start|restart" >&2; exit 2 ;;
esac
# A second virtlogd exits at once on the held pid-file lock, so starting it is idempotent (and
# immune to a dead one still listed as a zombie).
(close_inherited_fds; exec virtlogd -d) 2>/dev/null || true
if [ "${1:-start}" = restart ] || ! daemon_up || ! under_tini; then
    stop_libvirtd
    start_libvirtd
fi
for _ in $(seq 1 100); do daemon_up && break; sleep 0.2; done
daemon_up || { echo "libvirt-daemons: libvirtd does not answer" >&2; exit 1; }
