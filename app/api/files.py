"""/v1/vms/{id}/files: tar.gz upload into and download out of the workspace."""
from __future__ import annotations

from flask import Response, request, stream_with_context
from flask.views import MethodView

from app.api import Blueprint, document_errors, services
from app.errors import InvalidRequest
from app.schemas.commands import DownloadQueryArgsSchema, UploadQueryArgsSchema

blp = Blueprint("files", __name__, url_prefix="/v1/vms", description="Files in the workspace")
ARCHIVE_TYPES = ("application/gzip", "application/x-gzip", "application/octet-stream",
                 "application/x-tar+gzip", "")


@blp.route("/<vm_id>/files/upload")
class Upload(MethodView):
    @blp.arguments(UploadQueryArgsSchema, location="query")
    @blp.response(204)
    @document_errors(blp, 400, 404, 409, 413, 429, 504)
    def post(self, query, vm_id):
        """Extract a tar.gz body into a workspace directory (all or nothing)"""
        bundle = services()
        request.max_content_length = bundle.settings.max_upload_bytes
        if request.mimetype not in ARCHIVE_TYPES:
            raise InvalidRequest(f"Content-Type {request.mimetype!r} is not a gzip archive; "
                                 f"send application/gzip")
        bundle.files.upload(vm_id, query["dest"], request.stream)


@blp.route("/<vm_id>/files/download")
class Download(MethodView):
    @blp.arguments(DownloadQueryArgsSchema, location="query")
    @blp.response(200, content_type="application/gzip",
                  description="tar.gz of the directory's contents or of the single file")
    @document_errors(blp, 400, 404, 409, 413, 429, 502, 504)
    def get(self, query, vm_id):
        """Download a file or directory of the workspace as tar.gz"""
        chunks = services().files.download(vm_id, query["path"])
        return Response(stream_with_context(chunks), mimetype="application/gzip",
                        headers={"Content-Disposition": 'attachment; filename="download.tar.gz"'})
