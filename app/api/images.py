"""/v1/images: the images VMs are made from, built-in and custom (extension; docs/images.md)."""
from __future__ import annotations

from flask import Response, current_app, request, stream_with_context
from flask.views import MethodView

from app.api import Blueprint, allow_ips, document_errors, services
from app.api.files import ARCHIVE_BODY, ARCHIVE_TYPES, DRAIN_SLACK, close_or_drain, upload_body
from app.api.ndjson import STREAM_HEADERS
from app.api.openapi import binary_body
from app.errors import InvalidRequest
from app.models import ImageRequest
from app.schemas.images import (BuildLogQuerySchema, BuildLogSchema, ImageCreateSchema,
                                ImageSchema)

blp = Blueprint("images", __name__, url_prefix="/v1/images",
                description="Images VMs are made from (extension): built-in templates and "
                            "custom images built by a setup script or from an uploaded disk")
DISK_TYPES = ("application/octet-stream", "")
REASONS = {404: "Unknown image",
           409: "Built in, the default, in use, or not in the state the operation needs",
           429: "Image quota (MAX_IMAGES), or this worker runs its maximum of long calls "
                "(Retry-After)"}
UPLOAD_ENDPOINTS = {"images.ImageFiles": "files", "images.ImageDisk": "disk"}
DISK_BODY = binary_body("application/octet-stream", "the image's disk: raw (ext4 from its first "
                                                   "byte) or qcow2 with no backing or data "
                                                   "file, at most MAX_IMAGE_UPLOAD_MB")


@blp.route("")
class Images(MethodView):
    @blp.doc(operationId="listImages")
    @blp.response(200, ImageSchema(many=True))
    @document_errors(blp, reasons=REASONS)
    def get(self):
        """List images: built-in ones first, then custom ones, oldest first"""
        return services().images.list()

    @blp.doc(operationId="createImage")
    @blp.arguments(ImageCreateSchema)
    @blp.response(202, ImageSchema)
    @document_errors(blp, 400, 409, 429, reasons=REASONS)
    def post(self, body):
        """Build a custom image in the background (state BUILDING, or PENDING until its
        announced uploads arrive)

        The setup script runs as root in a build VM booted from the base image, with the
        given egress policy (default: none) and time limit; the disk is then flattened into
        a read-only image with its own memory snapshots. Follow GET .../build-log.
        """
        return services().images.create(ImageRequest(
            name=body["name"], description=body["description"], base=body["from_"],
            setup=body["setup"], allow_ips=allow_ips(body),
            outbound_internet=body["outboundInternet"], timeout_s=body["timeoutSeconds"],
            cpu=body["cpu"], mem_mb=body["memMb"], disk_size_mb=body["diskSizeMb"],
            files=body["files"], disk=body["disk"]))


@blp.route("/<image_id>")
class ImageById(MethodView):
    @blp.doc(operationId="getImage")
    @blp.response(200, ImageSchema)
    @document_errors(blp, 404, reasons=REASONS)
    def get(self, image_id):
        """Get an image"""
        return services().images.get(image_id)

    @blp.doc(operationId="deleteImage")
    @blp.response(204)
    @document_errors(blp, 404, 409, reasons=REASONS)
    def delete(self, image_id):
        """Delete a custom image; 409 while built in, the default, being built, or used by a
        VM, a disk snapshot or another image's build"""
        services().images.delete(image_id)


@blp.route("/<image_id>/set-default")
class ImageSetDefault(MethodView):
    @blp.doc(operationId="setDefaultImage")
    @blp.response(200, ImageSchema)
    @document_errors(blp, 404, 409, reasons=REASONS)
    def post(self, image_id):
        """Make a READY image the one creates without imageId get"""
        return services().images.set_default(image_id)


@blp.route("/<image_id>/files")
class ImageFiles(MethodView):
    @blp.doc(operationId="uploadImageFiles", requestBody=ARCHIVE_BODY)
    @blp.response(202, ImageSchema)
    @document_errors(blp, 400, 404, 409, 413, 429, reasons=REASONS)
    def put(self, image_id):
        """Upload the files a PENDING image's create announced (tar.gz, checked like a VM
        upload)"""
        if request.mimetype not in ARCHIVE_TYPES:
            raise InvalidRequest(f"Content-Type {request.mimetype!r} is not a gzip archive; "
                                 f"send application/gzip")
        return services().images.upload_files(image_id, upload_body(), request.content_length)


@blp.route("/<image_id>/disk")
class ImageDisk(MethodView):
    @blp.doc(operationId="uploadImageDisk", requestBody=DISK_BODY)
    @blp.response(202, ImageSchema)
    @document_errors(blp, 400, 404, 409, 413, 429, reasons=REASONS)
    def put(self, image_id):
        """Upload the disk a PENDING image's create announced (raw or qcow2)"""
        if request.mimetype not in DISK_TYPES:
            raise InvalidRequest(f"Content-Type {request.mimetype!r}: send the disk as "
                                 f"application/octet-stream")
        return services().images.upload_disk(image_id, upload_body(), request.content_length)


@blp.route("/<image_id>/build-log")
class ImageBuildLog(MethodView):
    @blp.doc(operationId="getImageBuildLog")
    @blp.arguments(BuildLogQuerySchema, location="query")
    @blp.response(200, BuildLogSchema)
    @blp.alt_response(200, content_type="text/plain", schema={"type": "string"},
                      description="The log's tail; with `follow=true` a text/plain stream: the "
                                  "tail, then new output until the build ends")
    @document_errors(blp, 400, 404, reasons=REASONS)
    def get(self, query, image_id):
        """The build log of a custom image: its tail, or (follow=true) a live stream"""
        if query["follow"]:
            chunks = services().images.follow_log(image_id, query["tail"])
            return Response(stream_with_context(chunks), mimetype="text/plain",
                            headers=STREAM_HEADERS)
        return services().images.build_log(image_id, query["tail"])


@blp.after_request
def drain_unread_upload(response: Response) -> Response:
    """An upload answered with an error before its body was read: read the rest (files: up
    to MAX_UPLOAD_BYTES more; disks: a little), or close the connection (see app.api.files)."""
    what = UPLOAD_ENDPOINTS.get(request.endpoint or "")
    if what is None or response.status_code < 400:
        return response
    settings = current_app.extensions["rds"].settings
    bound = settings.max_upload_bytes + DRAIN_SLACK if what == "files" else DRAIN_SLACK
    return close_or_drain(response, bound)
