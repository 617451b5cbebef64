"""Images as the API shows them: a built-in template or a custom image, with what the host
has of it (its build, its size, its memory snapshots), and a build log's tail."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from app.clock import iso_at
from app.config import Settings
from app.errors import AppError
from app.models import BuildLogView, Image, ImageRecord, ImageState, Template
from app.services.capacity import allocated_mb
from app.services.image_store import LOG, ImageStore, read_tail
from app.services.seeds import SeedStore
from app.services.templates import ImageBuild, TemplateCatalog, default_disk_size_mb

log = logging.getLogger(__name__)


class ImageViews:
    def __init__(self, settings: Settings, store: ImageStore, templates: TemplateCatalog,
                 seeds: SeedStore) -> None:
        self.settings = settings
        self.store = store
        self.templates = templates
        self.seeds = seeds

    def builtin(self, image_id: str) -> Image:
        template = self.templates.get(image_id)
        default = image_id == self.templates.default_id
        try:
            build = self.templates.current_build(template)
        except AppError:
            return Image(id=image_id, description=template.description, built_in=True,
                         state=ImageState.NOT_BUILT, is_default=default, snapshot_ready=False,
                         reason="not built on this host (run: make image)")
        return Image(id=image_id, description=template.description, built_in=True,
                     state=ImageState.READY, is_default=default,
                     snapshot_ready=self.snapshot_ready(template, build),
                     size_mb=allocated_mb(build.path), disk_size_mb=build.disk_size_mb,
                     created_at=_manifest_time(build.path))

    def custom(self, record: ImageRecord) -> Image:
        build: ImageBuild | None = None
        template: Template | None = None
        if record.state is ImageState.READY:
            try:
                template = self.templates.template_of(record)
                build = self.templates.current_build(template)
            except AppError as exc:
                log.warning("image %s is READY but unusable: %s", record.id, exc.message)
        return Image(
            id=record.id, description=record.description, state=record.state, built_in=False,
            is_default=record.id == self.templates.default_id, base=record.base,
            snapshot_ready=bool(template and build and self.snapshot_ready(template, build)),
            reason=record.reason or None,
            size_mb=allocated_mb(build.path) if build else None,
            disk_size_mb=record.disk_size_mb or None, created_at=record.created_at,
            build_started_at=record.started_at or None,
            build_finished_at=record.finished_at or None, awaiting=record.awaiting,
            allow_ips=record.allow_ips, outbound_internet=record.outbound_internet,
            timeout_s=record.timeout_s)

    def snapshot_ready(self, template: Template, build: ImageBuild) -> bool:
        """Whether a memory snapshot of every ``SNAPSHOT_SHAPES`` shape is saved."""
        shapes = self.settings.snapshot_shape_list
        size = default_disk_size_mb(template, build)
        return bool(shapes) and all(self.seeds.find(template, build, cpu, mem, size)
                                    for cpu, mem in shapes)

    def build_log(self, record: ImageRecord, tail: int, end: int | None = None) -> BuildLogView:
        """:param end: the log as it was at this size (see :func:`read_tail`)."""
        path = self.store.path(record.id, LOG)
        lines, truncated = read_tail(path, tail, end=end)
        try:
            updated = iso_at(path.stat().st_mtime)
        except OSError:
            updated = None
        return BuildLogView(image_id=record.id, state=record.state, lines=lines,
                            truncated=truncated, updated_at=updated)


def read_from(path: Path, offset: int) -> tuple[bytes, int]:
    """New bytes of a growing log from ``offset``. After the builder dropped the oldest half
    of a long log the file is shorter: reading goes on from its new end."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            offset = size if size < offset else offset
            handle.seek(offset)
            data = handle.read(1024 * 1024)
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)


def _manifest_time(build: Path) -> str | None:
    try:
        return json.loads((build / "manifest.json").read_text()).get("builtAt")
    except (OSError, ValueError, AttributeError):
        return None
