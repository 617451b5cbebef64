#!/usr/bin/env python3
"""Build the guest template image from Debian packages.

Output (outside git), one directory per input hash::

    <images-dir>/<image>/<hash>/disk.qcow2   root filesystem (ext4, whole disk /dev/vda)
                                vmlinuz      kernel for direct kernel boot
                                initrd.img   tiny busybox initramfs (virtio + ext4 modules)
                                manifest.json
    <images-dir>/<image>/current -> <hash>

The hash covers every file under ``guest/`` and the Deno version, so the image is rebuilt only
when the guest recipe changes. Running VMs keep using the build their overlay was cloned from.
Stdlib only: this runs before the project's virtualenv exists. Must run as root.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parent.parent
BUILD_DIR = GUEST_DIR / "build"
SUITE = "bookworm"
DISK_SIZE_MB = 4096
INITRD_MODULES = ["virtio_pci", "virtio_blk", "ext4"]
DEFAULT_MIRROR = "http://deb.debian.org/debian"
STEP_TIMEOUT = 1800
# The sandbox user's login shell: bash behind a small static program (sandbox-shell.c).
SANDBOX_SHELL = "/usr/local/lib/rds/sandbox-shell"


class Steps:
    """Prints each build step with how long it took."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    @contextlib.contextmanager
    def step(self, title: str):
        print(f"[guest-build] {title} ...", flush=True)
        begin = time.monotonic()
        yield
        print(f"[guest-build] {title}: done in {time.monotonic() - begin:.1f}s", flush=True)

    def total(self) -> float:
        return time.monotonic() - self.started


def run(argv: list[str], timeout: float = STEP_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, timeout=timeout, **kwargs)


def packages() -> list[str]:
    lines = (BUILD_DIR / "packages.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def deno_version() -> str:
    return (BUILD_DIR / "deno.version").read_text().strip()


def input_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in GUEST_DIR.rglob("*") if p.is_file()):
        if "__pycache__" in path.parts or path.name == "README.md":
            continue
        digest.update(str(path.relative_to(GUEST_DIR)).encode() + b"\0")
        digest.update(oct(path.stat().st_mode & 0o777).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(f"suite={SUITE} disk={DISK_SIZE_MB}".encode())
    return digest.hexdigest()[:16]


def base_hash(mirror: str) -> str:
    """Identity of the Debian-only part (debootstrap + packages), cached between builds."""
    digest = hashlib.sha256()
    digest.update((BUILD_DIR / "packages.txt").read_bytes())
    digest.update(f"suite={SUITE} mirror={mirror} base=1".encode())
    return digest.hexdigest()[:16]


def save_base(rootfs: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    for old in target.parent.glob("*.tar"):
        old.unlink()  # keep only the newest base
    partial = target.with_suffix(".partial")
    run(["tar", "-cf", str(partial), "--numeric-owner", "-C", str(rootfs), "."])
    os.replace(partial, target)


def apt_mirror() -> str:
    """The Debian mirror apt already uses on this host (the only one reachable here)."""
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for source in sources:
        if not source.is_file() or "disabled" in source.name:
            continue
        text = source.read_text(errors="replace")
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            uri = match.group(1)
            if "security" not in uri and "/debian" in uri:
                return uri
    return DEFAULT_MIRROR


def fetch_deno(cache_dir: Path) -> Path:
    """The deno binary from the PyPI ``deno`` wheel (the only source of Deno here)."""
    version = deno_version()
    binary = cache_dir / f"deno-{version}"
    if binary.exists():
        return binary
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "-d", tmp, f"deno=={version}"], timeout=600)
        wheel = next(Path(tmp).glob("deno-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith("/scripts/deno"))
            with archive.open(member) as src, open(tmp + "/deno", "wb") as dst:
                shutil.copyfileobj(src, dst)
        os.chmod(tmp + "/deno", 0o755)
        os.replace(tmp + "/deno", binary)
    return binary


def chroot(rootfs: Path, argv: list[str], timeout: float = STEP_TIMEOUT) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LC_ALL": "C"}
    run(["chroot", str(rootfs), *argv], timeout=timeout, env=env)


@contextlib.contextmanager
def chroot_mounts(rootfs: Path):
    mounted = []
    try:
        for kind, target in (("proc", "proc"), ("sysfs", "sys"), ("devtmpfs", "dev")):
            run(["mount", "-t", kind, kind, str(rootfs / target)], timeout=30)
            mounted.append(rootfs / target)
        yield
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], timeout=30, check=False)


def bootstrap(rootfs: Path, cache_dir: Path, mirror: str) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    run(["debootstrap", "--variant=minbase", f"--cache-dir={cache_dir}", SUITE, str(rootfs),
         mirror])


def install_packages(rootfs: Path, mirror: str) -> None:
    (rootfs / "etc/apt/sources.list").write_text(f"deb {mirror} {SUITE} main\n")
    # Services must not start inside the chroot.
    policy = rootfs / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    with chroot_mounts(rootfs):
        chroot(rootfs, ["apt-get", "update", "-q"])
        chroot(rootfs, ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages()])
        chroot(rootfs, ["apt-get", "clean"])
    policy.unlink()


def build_sandbox_shell(rootfs: Path) -> None:
    """Compile guest/build/sandbox-shell.c with the host's gcc into the image: static, so the
    guest needs no compiler and the program maps no loader or libc (host and guest are both
    Debian bookworm on x86-64)."""
    target = rootfs / SANDBOX_SHELL.lstrip("/")
    run(["gcc", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o", str(target),
         str(BUILD_DIR / "sandbox-shell.c")], timeout=300)
    target.chmod(0o755)


def configure(rootfs: Path, deno: Path) -> None:
    run(["cp", "-a", "--no-preserve=ownership", f"{GUEST_DIR}/rootfs/.", str(rootfs)])
    build_sandbox_shell(rootfs)
    shutil.copy2(deno, rootfs / "usr/local/bin/deno")
    (rootfs / "usr/local/bin/deno").chmod(0o755)
    init = rootfs / "sbin/init"
    if init.exists() or init.is_symlink():
        init.unlink()
    init.symlink_to("/bin/busybox")
    chroot(rootfs, ["groupadd", "-g", "1000", "user"])
    chroot(rootfs, ["useradd", "-u", "1000", "-g", "1000", "-d", "/workspace", "-M",
                    "-s", SANDBOX_SHELL, "user"])
    # sshd (UsePAM no) refuses accounts whose password field is "!"; "*" = no password login.
    chroot(rootfs, ["usermod", "-p", "*", "user"])
    chroot(rootfs, ["usermod", "-p", "*", "root"])
    (rootfs / "workspace").mkdir(mode=0o755, exist_ok=True)
    os.chown(rootfs / "workspace", 1000, 1000)
    # Deno's cache (DENO_DIR): the sandbox user's, outside every path a Deno program may read
    # or write, so that no run can plant compiled code for the next one.
    (rootfs / "var/cache/rds-deno").mkdir(mode=0o700, exist_ok=True)
    os.chown(rootfs / "var/cache/rds-deno", 1000, 1000)
    (rootfs / "home").mkdir(exist_ok=True)
    home = rootfs / "home/user"
    if not home.is_symlink():
        home.symlink_to("/workspace")
    # qemu-guest-agent's guest-set-time runs /sbin/hwclock -w; util-linux's waits for the next
    # second boundary (up to 1 s), busybox's writes the RTC at once.
    hwclock = rootfs / "sbin/hwclock"
    if hwclock.exists() or hwclock.is_symlink():
        hwclock.unlink()
    hwclock.symlink_to("/bin/busybox")
    (rootfs / "etc/fstab").write_text("/dev/vda / ext4 rw,noatime 0 1\n")
    for stock_initrd in (rootfs / "boot").glob("initrd.img*"):
        stock_initrd.unlink()  # we boot with our own small initrd
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every VM gets its own host key at boot (fw_cfg)
    for path in ("usr/share/doc", "usr/share/man", "usr/share/info", "var/lib/apt/lists",
                 "var/cache/apt", "var/cache/debconf/templates.dat-old"):
        shutil.rmtree(rootfs / path, ignore_errors=True)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    strip_setuid(rootfs)


def strip_setuid(rootfs: Path) -> list[str]:
    """Clear every setuid/setgid bit in the image (su, passwd, chfn, chsh, gpasswd, mount,
    umount, newgrp, ssh-keysign, ...): the sandbox user needs none of them, and root inside
    the guest (the boot script, the guest agent) does not need the bits."""
    stripped = []
    for path in sorted(rootfs.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        mode = path.stat().st_mode
        if mode & (stat.S_ISUID | stat.S_ISGID):
            path.chmod(stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
            stripped.append("/" + str(path.relative_to(rootfs)))
    print(f"setuid/setgid bits cleared: {' '.join(stripped) or 'none'}", flush=True)
    return stripped


def kernel_version(rootfs: Path) -> str:
    versions = sorted(p.name for p in (rootfs / "lib/modules").iterdir())
    if not versions:
        raise SystemExit("no kernel installed in the guest root filesystem")
    return versions[-1]


def build_initrd(rootfs: Path, kver: str, out: Path, work: Path) -> None:
    tree = work / "initrd"
    for sub in ("bin", "dev", "proc", "sys", "newroot", "modules"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(rootfs / "bin/busybox", tree / "bin/busybox")
    shutil.copy2(GUEST_DIR / "initrd/init", tree / "init")
    shown = run(["modprobe", "-d", str(rootfs), "-S", kver, "--show-depends", "-a",
                 *INITRD_MODULES], capture_output=True, text=True, timeout=60).stdout
    order: list[str] = []
    for line in shown.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != "insmod":
            continue
        source = Path(parts[1])
        if not source.exists():
            source = rootfs / str(source).lstrip("/")
        name = source.name
        if name in order:
            continue
        target = tree / "modules" / name
        shutil.copy2(source, target)
        if name.endswith(".xz"):  # busybox insmod wants plain modules
            run(["xz", "-d", str(target)], timeout=60)
            name = name[:-3]
        elif name.endswith(".zst"):
            run(["zstd", "-d", "--rm", "-q", str(target)], timeout=60)
            name = name[:-4]
        order.append(name)
    (tree / "modules/order").write_text("\n".join(order) + "\n")
    cpio = subprocess.Popen(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    files = "\n".join(str(p.relative_to(tree)) for p in sorted(tree.rglob("*"))).encode()
    with open(out, "wb") as initrd:
        gzip = subprocess.Popen(["gzip", "-9"], stdin=cpio.stdout, stdout=initrd)
        cpio.stdout.close()
        cpio.communicate(files, timeout=120)
        gzip.wait(timeout=120)
    if cpio.returncode or gzip.returncode:
        raise SystemExit("building the initrd failed")


def make_disk(rootfs: Path, out: Path, work: Path) -> None:
    raw = work / "disk.raw"
    with open(raw, "wb") as handle:
        handle.truncate(DISK_SIZE_MB * 1024 * 1024)
    run(["mkfs.ext4", "-q", "-F", "-L", "rds-root", "-d", str(rootfs), str(raw)], timeout=900)
    run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out)], timeout=900)
    raw.unlink()


def build(images_dir: Path, image: str, force: bool) -> Path:
    steps = Steps()
    digest = input_hash()
    image_dir = images_dir / image
    final = image_dir / digest
    current = image_dir / "current"
    if (final / "manifest.json").exists() and not force:
        print(f"[guest-build] image {image} is up to date ({digest}): {final}")
        _point_current(current, digest)
        return final
    image_dir.mkdir(parents=True, exist_ok=True)
    cache = images_dir.parent / "cache"
    work = Path(tempfile.mkdtemp(prefix=f"build-{digest}-", dir=image_dir))
    rootfs = work / "rootfs"
    try:
        mirror = apt_mirror()
        print(f"[guest-build] building image {image} ({digest}) from {mirror}", flush=True)
        with steps.step("fetch deno " + deno_version()):
            deno = fetch_deno(cache / "deno")
        base = cache / "rootfs" / f"{base_hash(mirror)}.tar"
        if base.exists():
            with steps.step(f"unpack cached base root filesystem {base.name}"):
                rootfs.mkdir()
                run(["tar", "-xpf", str(base), "--numeric-owner", "-C", str(rootfs)])
        else:
            with steps.step("debootstrap minbase " + SUITE):
                bootstrap(rootfs, cache / "debootstrap", mirror)
            with steps.step("install guest packages"):
                install_packages(rootfs, mirror)
            with steps.step("cache base root filesystem"):
                save_base(rootfs, base)
        with steps.step("configure init, sshd, user 1000, deno"):
            configure(rootfs, deno)
        kver = kernel_version(rootfs)
        out = work / "out"
        out.mkdir()
        with steps.step(f"initrd for kernel {kver}"):
            build_initrd(rootfs, kver, out / "initrd.img", work)
            shutil.copy2(rootfs / f"boot/vmlinuz-{kver}", out / "vmlinuz")
        with steps.step("ext4 filesystem and qcow2 image"):
            make_disk(rootfs, out / "disk.qcow2", work)
        manifest = {"image": image, "hash": digest, "kernel": kver, "suite": SUITE,
                    "deno": deno_version(), "diskSizeMb": DISK_SIZE_MB,
                    "builtAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(out / "disk.qcow2", 0o444)  # the template is a read-only backing file
        if final.exists():
            shutil.rmtree(final)
        os.replace(out, final)
        _point_current(current, digest)
        prune_old_builds(image_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"[guest-build] image {image} ready in {steps.total():.1f}s: {final}", flush=True)
    return final


def builds_in_use(storage_root: Path) -> set[Path]:
    """Image builds that some VM's or memory snapshot's overlay uses as its backing file, or
    that a disk snapshot is based on (its ``snapshot.json`` names the build: ``imagePath``)."""
    used: set[Path] = set()
    for meta in (storage_root / "snapshots").glob("*/snapshot.json"):
        try:
            image = json.loads(meta.read_text())["imagePath"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        used.add(Path(image).resolve().parent)
    overlays = [*(storage_root / "vms").glob("*/disk.qcow2"),
                *(storage_root / "seeds").glob("*/disk.qcow2")]  # memory snapshots' disks
    for overlay in overlays:
        try:
            info = json.loads(subprocess.run(
                ["qemu-img", "info", "--output=json", "-U", str(overlay)], capture_output=True,
                text=True, timeout=30, check=True).stdout)
        except (subprocess.SubprocessError, ValueError):
            continue
        backing = info.get("full-backing-filename") or info.get("backing-filename")
        if backing:
            used.add(Path(backing).resolve().parent)
    return used


def prune_old_builds(image_dir: Path, keep: int = 2) -> None:
    """Delete all but the newest ``keep`` builds, never one a VM or a snapshot still uses."""
    builds = sorted((p for p in image_dir.iterdir()
                     if p.is_dir() and not p.is_symlink() and (p / "manifest.json").exists()),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    current = (image_dir / "current").resolve()
    in_use = builds_in_use(image_dir.parent.parent)
    for old in builds[keep:]:
        if old.resolve() == current or old.resolve() in in_use:
            continue
        print(f"[guest-build] removing old build {old.name}", flush=True)
        shutil.rmtree(old, ignore_errors=True)


def _point_current(current: Path, digest: str) -> None:
    tmp = current.with_name("current.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(digest)
    os.replace(tmp, current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images-dir",
                        default=os.environ.get("STORAGE_ROOT", "/var/lib/run-dat-sheesh")
                        + "/images")
    parser.add_argument("--image", default="debian-bookworm")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--print-hash", action="store_true")
    args = parser.parse_args()
    if args.print_hash:
        print(input_hash())
        return
    if os.geteuid() != 0:
        raise SystemExit("the guest image build must run as root (debootstrap, chroot)")
    build(Path(args.images_dir), args.image, args.force)


if __name__ == "__main__":
    main()
