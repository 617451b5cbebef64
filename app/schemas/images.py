"""Schemas of the image resource (``/v1/images``)."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from app.schemas.fields import NulFreeString, StrictBoolean
from app.schemas.vms import NetworkPolicySchema

IMAGE_NAME = validate.Regexp(r"^[a-z0-9][a-z0-9._-]{0,62}\Z",
                             error="must be 1-63 characters of a-z, 0-9, '.', '_', '-', "
                                   "starting with a letter or digit")
MAX_SETUP_CHARS = 256 * 1024
MAX_DESCRIPTION_CHARS = 1000
STATES = ["PENDING", "BUILDING", "READY", "FAILED", "NOT_BUILT"]
ALWAYS = {"dump_only": True, "required": True}  # an answer field every answer carries


class ImageCreateSchema(NetworkPolicySchema):
    """``allowIps``/``outboundInternet`` are the build VM's egress policy (default: none)."""

    name = fields.String(required=True, validate=IMAGE_NAME, metadata={
        "description": "the image's id: what POST /v1/vms takes as imageId"})
    description = NulFreeString(load_default="",
                                validate=validate.Length(max=MAX_DESCRIPTION_CHARS))
    from_ = fields.String(data_key="from", load_default=None, allow_none=True,
                          validate=IMAGE_NAME, metadata={
                              "description": "the image to build on (default: the default "
                                             "image); its kernel and initrd boot the new one"})
    setup = NulFreeString(load_default="", validate=validate.Length(max=MAX_SETUP_CHARS),
                          metadata={"description": "shell script run as root in the build "
                                                   "VM (bash -e unless it starts with #!), "
                                                   "in the directory of the uploaded files"})
    timeoutSeconds = fields.Integer(load_default=None, allow_none=True, strict=True,
                                    validate=validate.Range(min=1, max=7 * 24 * 3600),
                                    metadata={"description": "the setup script's time limit "
                                                             "(default IMAGE_BUILD_TIMEOUT_S, "
                                                             "at most "
                                                             "MAX_IMAGE_BUILD_TIMEOUT_S)"})
    cpu = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1, max=1024),
                         metadata={"description": "the build VM's vCPUs (1..MAX_CPU)"})
    memMb = fields.Integer(load_default=None, allow_none=True, strict=True,
                           validate=validate.Range(min=128, max=1024 * 1024),
                           metadata={"description": "the build VM's memory (default 1024, "
                                                    "at most MAX_MEM_MB)"})
    diskSizeMb = fields.Integer(load_default=None, allow_none=True, strict=True,
                                validate=validate.Range(min=1, max=1024 * 1024),
                                metadata={"description": "the image's disk size (default and "
                                                         "minimum: the base's)"})
    files = StrictBoolean(load_default=False, metadata={
        "description": "a tar.gz of files follows (PUT /v1/images/{id}/files): the build "
                       "waits for it (state PENDING)"})
    disk = StrictBoolean(load_default=False, metadata={
        "description": "the image's disk is uploaded (PUT /v1/images/{id}/disk) instead of "
                       "the base's; the build waits for it (state PENDING)"})


class ImageHostSchema(Schema):
    name = fields.String(metadata={"description": "the host (`local`, or a HOSTS name)"},
                         **ALWAYS)
    ready = fields.Boolean(metadata={
        "description": "creates can use it there: built (local), or its current build "
                       "shipped and verified (a remote host)"}, **ALWAYS)
    snapshotReady = fields.Boolean(attribute="snapshot_ready", metadata={
        "description": "a memory snapshot of every SNAPSHOT_SHAPES shape of its current build "
                       "is saved there: creates there restore it"}, **ALWAYS)


class ImageSchema(Schema):
    """An image as every answer shows it: all fields always present (``required``), null
    where they do not apply (``nullable``)."""

    id = fields.String(**ALWAYS)
    name = fields.String(attribute="id", **ALWAYS)
    description = fields.String(**ALWAYS)
    state = fields.String(validate=validate.OneOf(STATES), **ALWAYS)
    reason = fields.String(allow_none=True, metadata={
        "description": "why it FAILED (or is NOT_BUILT)"}, **ALWAYS)
    builtIn = fields.Boolean(attribute="built_in", metadata={
        "description": "a template of vm-templates/"}, **ALWAYS)
    isDefault = fields.Boolean(attribute="is_default", **ALWAYS)
    base = fields.String(allow_none=True, metadata={
        "description": "the image it was built from"}, **ALWAYS)
    snapshotReady = fields.Boolean(attribute="snapshot_ready", metadata={
        "description": "a memory snapshot of every SNAPSHOT_SHAPES shape is saved: creates "
                       "restore it"}, **ALWAYS)
    sizeMb = fields.Integer(allow_none=True, attribute="size_mb", metadata={
        "description": "space its build takes on the host"}, **ALWAYS)
    diskSizeMb = fields.Integer(allow_none=True, attribute="disk_size_mb", **ALWAYS)
    createdAt = fields.String(allow_none=True, attribute="created_at", **ALWAYS)
    buildStartedAt = fields.String(allow_none=True, attribute="build_started_at", **ALWAYS)
    buildFinishedAt = fields.String(allow_none=True, attribute="build_finished_at", **ALWAYS)
    awaiting = fields.List(fields.String(), metadata={
        "description": "uploads the build waits for: files, disk"}, **ALWAYS)
    allowIps = fields.List(fields.String(), attribute="allow_ips", **ALWAYS)
    outboundInternet = fields.Boolean(attribute="outbound_internet", **ALWAYS)
    timeoutSeconds = fields.Integer(allow_none=True, attribute="timeout_s", **ALWAYS)
    hosts = fields.List(fields.Nested(ImageHostSchema), metadata={
        "description": "where it is ready: the local host, then each of HOSTS (a host that "
                       "does not answer: not ready)"}, **ALWAYS)

    def get_attribute(self, obj, attr, default):  # ImageState enum -> its value
        value = super().get_attribute(obj, attr, default)
        return getattr(value, "value", value)


class BuildLogQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    tail = fields.Integer(load_default=200, validate=validate.Range(min=0, max=10000),
                          metadata={"description": "how many of the last lines"})
    follow = fields.Boolean(load_default=False, metadata={
        "description": "stream text/plain: the tail, then new output until the build ends"})


class BuildLogSchema(Schema):
    type = fields.Constant("build", **ALWAYS)
    imageId = fields.String(attribute="image_id", **ALWAYS)
    state = fields.Function(lambda view: view.state.value,
                            metadata={"type": "string", "enum": STATES}, **ALWAYS)
    lines = fields.List(fields.String(), **ALWAYS)
    truncated = fields.Boolean(metadata={"description": "earlier lines were left out"},
                               **ALWAYS)
    updatedAt = fields.String(allow_none=True, attribute="updated_at", **ALWAYS)
