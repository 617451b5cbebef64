"""VM templates (``vm-templates/<id>/``) and the guest image builds behind them."""
from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path

from app.errors import ImageNotReady, InvalidRequest
from app.models import Template

TEMPLATE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclasses.dataclass(frozen=True)
class ImageBuild:
    """One build of a guest image (``<images>/<image>/<hash>/``)."""

    path: Path
    disk: Path
    kernel: Path
    initrd: Path
    disk_size_mb: int


def default_disk_size_mb(template: Template, build: ImageBuild) -> int:
    """A VM's disk size when the caller gives none (never smaller than the image)."""
    return max(template.default_disk_size_mb, build.disk_size_mb)


class TemplateCatalog:
    """Reads templates from disk on each call, so an edit needs no restart."""

    def __init__(self, templates_dir: str, images_dir: Path, default_id: str) -> None:
        self.templates_dir = Path(templates_dir)
        self.images_dir = images_dir
        self.default_id = default_id

    def ids(self) -> list[str]:
        return sorted(p.parent.name for p in self.templates_dir.glob("*/template.toml"))

    def get(self, template_id: str | None) -> Template:
        """:raises InvalidRequest: for an unknown ``imageId``."""
        template_id = template_id or self.default_id
        folder = self.templates_dir / template_id
        if not TEMPLATE_ID.match(template_id) or not (folder / "template.toml").is_file():
            known = ", ".join(self.ids()) or "none"
            raise InvalidRequest(f"unknown imageId {template_id!r} (known: {known})")
        meta = tomllib.loads((folder / "template.toml").read_text())
        return Template(
            id=template_id,
            description=str(meta.get("description", "")),
            image=str(meta["image"]),
            domain_xml=(folder / "domain.xml").read_text(),
            default_disk_size_mb=int(meta.get("default_disk_size_mb", 4096)),
            kernel_cmdline=str(meta.get("kernel_cmdline", "console=ttyS0")),
        )

    def current_builds(self) -> list[tuple[Template, ImageBuild]]:
        """Every template whose image is built on this host, with its current build."""
        found = []
        for template_id in self.ids():
            try:
                template = self.get(template_id)
                found.append((template, self.current_build(template)))
            except (ImageNotReady, InvalidRequest):
                continue
        return found

    def current_build(self, template: Template) -> ImageBuild:
        """The newest build of the template's image, resolved to its hash directory.

        :raises ImageNotReady: when the image has not been built on this host.
        """
        path = (self.images_dir / template.image / "current").resolve()
        if not (path / "manifest.json").is_file():
            raise ImageNotReady(
                f"image {template.image!r} for template {template.id!r} is not built on this "
                f"host (run: make image)")
        return self.build_at(path)

    def build_at(self, path: Path) -> ImageBuild:
        """The build in directory ``path``, newest or not (a VM's or a snapshot's).

        :raises ImageNotReady: when that build is no longer on this host.
        """
        manifest = path / "manifest.json"
        if not manifest.is_file():
            raise ImageNotReady(f"image build {path} is not on this host any more")
        info = json.loads(manifest.read_text())
        return ImageBuild(path=path, disk=path / "disk.qcow2", kernel=path / "vmlinuz",
                          initrd=path / "initrd.img",
                          disk_size_mb=int(info.get("diskSizeMb", 4096)))
