#!/bin/sh
# Boot script run once by busybox init. Configures the VM from the kernel command line
# (address, gateway, hostname: nothing secret) and from fw_cfg (host key, authorized key:
# root-only files) and prepares what sshd needs.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
# What this script prints goes to the serial console, which the host keeps as the VM's console
# log (GET /v1/vms/{id}/logs): a few lines say how far the boot got.
say() { echo "rds-boot: $*"; }

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
say "$(cat /proc/version)"
mkdir -p /run/sshd /run/lock
chmod 1777 /tmp /var/tmp
# Where the sandbox user may write, nothing setuid or device-like counts (the image carries no
# setuid file either; see guest/build/build_image.py).
for dir in /workspace /tmp /var/tmp; do
    mount --bind "$dir" "$dir" && mount -o remount,bind,nosuid,nodev "$dir"
done
# run-ts's spool of warm Denos (guest/rootfs/usr/local/lib/rds/run-ts): outside every path a
# Deno program may read or write (--allow-read/--allow-write), made fresh at each boot.
mkdir -m 700 /run/rds-deno
chown 1000:1000 /run/rds-deno

# virtio_balloon: free page reporting (the host reclaims the memory the guest frees; the
# domain's <memballoon freePageReporting='on'>, app/virt/domain_xml.py).
for module in virtio_net qemu_fw_cfg virtio_console virtio_rng virtio_balloon; do
    modprobe -q "$module"
done

ip=""; gateway=""; name="rds-guest"
# shellcheck disable=SC2013  # /proc/cmdline: one line of parameters, split into words on purpose
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        rds.ip=*) ip="${arg#rds.ip=}" ;;
        rds.gw=*) gateway="${arg#rds.gw=}" ;;
        rds.hostname=*) name="${arg#rds.hostname=}" ;;
    esac
done
hostname "$name"
echo "$name" > /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$name" > /etc/hosts

ip link set lo up
if [ -n "$ip" ]; then
    ip addr add "$ip" dev eth0
    ip link set eth0 up
    [ -n "$gateway" ] && ip route add default via "$gateway"
    [ -n "$gateway" ] && echo "nameserver $gateway" > /etc/resolv.conf
fi
say "hostname $name, address ${ip:-none}, gateway ${gateway:-none}"

fwcfg=/sys/firmware/qemu_fw_cfg/by_name/opt/org.rundatsheesh
if [ -r "$fwcfg/ssh_host_ed25519_key/raw" ]; then
    umask 077
    cat "$fwcfg/ssh_host_ed25519_key/raw" > /etc/ssh/ssh_host_ed25519_key
    umask 022
fi
if [ -r "$fwcfg/authorized_keys/raw" ]; then
    mkdir -p /etc/ssh/authorized_keys
    cat "$fwcfg/authorized_keys/raw" > /etc/ssh/authorized_keys/user
    chmod 0644 /etc/ssh/authorized_keys/user
fi

mkdir -p /dev/virtio-ports
for port in /sys/class/virtio-ports/*; do
    [ -r "$port/name" ] || continue
    ln -sf "/dev/${port##*/}" "/dev/virtio-ports/$(cat "$port/name")"
done

# Grow the filesystem when the VM's disk is bigger than the template's (diskSizeMb).
resize2fs /dev/vda >/dev/null 2>&1 &
say "configured; starting sshd and the guest agent"
exit 0
