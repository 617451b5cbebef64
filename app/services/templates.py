"""VM templates (``vm-templates/<id>/``), the custom images built on them
(:mod:`app.services.image_store`), and the guest image builds behind both.

A custom image is a template too: ``imageId`` names either. It takes its domain XML and kernel
command line from the built-in template it was made from, and its image is its own build
(``images/custom/<id>/current``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import tomllib
from pathlib import Path

from app.errors import ImageNotReady, ImageStateConflict, InvalidRequest
from app.models import ImageRecord, ImageState, Template
from app.services.image_store import ImageStore

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

    def __init__(self, templates_dir: str, images_dir: Path, default_id: str,
                 custom: ImageStore | None = None) -> None:
        """:param default_id: the default when no default image was chosen (or no ``custom``).
        :param custom: the custom images (None: built-in templates only)."""
        self.templates_dir = Path(templates_dir)
        self.images_dir = images_dir
        self.custom = custom
        self._default_id = default_id

    @property
    def default_id(self) -> str:
        """The image a create without ``imageId`` gets (``POST /v1/images/{id}/set-default``)."""
        return self.custom.default_id() if self.custom else self._default_id

    def builtin_ids(self) -> list[str]:
        return sorted(p.parent.name for p in self.templates_dir.glob("*/template.toml"))

    def is_builtin(self, template_id: str) -> bool:
        return bool(TEMPLATE_ID.match(template_id)) and \
            (self.templates_dir / template_id / "template.toml").is_file()

    def ids(self) -> list[str]:
        """Built-in templates and READY custom images."""
        custom = [r.id for r in self.custom.all() if r.state is ImageState.READY] \
            if self.custom else []
        return self.builtin_ids() + sorted(set(custom) - set(self.builtin_ids()))

    def get(self, template_id: str | None) -> Template:
        """A built-in template or a READY custom image.

        :raises InvalidRequest: for an unknown ``imageId``.
        :raises ImageStateConflict: a custom image that is not READY (409).
        """
        template_id = template_id or self.default_id
        if not self.is_builtin(template_id):
            return self._custom(template_id)
        folder = self.templates_dir / template_id
        meta = tomllib.loads((folder / "template.toml").read_text())
        return Template(
            id=template_id,
            description=str(meta.get("description", "")),
            image=str(meta["image"]),
            domain_xml=(folder / "domain.xml").read_text(),
            default_disk_size_mb=int(meta.get("default_disk_size_mb", 4096)),
            kernel_cmdline=str(meta.get("kernel_cmdline", "console=ttyS0")),
        )

    def _custom(self, image_id: str) -> Template:
        record = self.custom.load(image_id) if self.custom else None
        if record is None:
            known = ", ".join(self.ids()) or "none"
            raise InvalidRequest(f"unknown imageId {image_id!r} (known: {known})")
        if record.state is not ImageState.READY:
            raise ImageStateConflict(f"image {image_id} is {record.state.value}, not READY")
        return self.template_of(record)

    def template_of(self, record: ImageRecord) -> Template:
        """A custom image as a template, whatever its state (its build checks it so)."""
        base = self.get(record.template)
        return dataclasses.replace(base, id=record.id, description=record.description,
                                   image=f"custom/{record.id}",
                                   default_disk_size_mb=record.disk_size_mb)

    def current_builds(self, building: bool = False) -> list[tuple[Template, ImageBuild]]:
        """Every template whose image is built on this host, with its current build.

        :param building: also custom images still BUILDING whose build is published already
            (their memory snapshots are being saved: the last step of a build).
        """
        found = []
        for template_id in self.ids():
            try:
                template = self.get(template_id)
                found.append((template, self.current_build(template)))
            except (ImageNotReady, InvalidRequest, ImageStateConflict):
                continue
        for record in self.custom.all() if building and self.custom else []:
            if record.state is ImageState.BUILDING:
                with contextlib.suppress(ImageNotReady, InvalidRequest):
                    template = self.template_of(record)
                    found.append((template, self.current_build(template)))
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
