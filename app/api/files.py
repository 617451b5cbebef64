"""/v1/vms/{id}/files: tar.gz upload into and download out of the workspace."""
from __future__ import annotations

import typing as t

from flask import Response, current_app, g, request, stream_with_context
from flask.views import MethodView
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_input_stream

from app.api import Blueprint, document_errors, services
from app.api.openapi import BINARY, binary_body
from app.errors import InvalidRequest
from app.schemas.commands import DownloadQueryArgsSchema, UploadQueryArgsSchema

blp = Blueprint("files", __name__, url_prefix="/v1/vms", description="Files in the workspace")
# The contract's three, and two more that clients send: x-tar+gzip and none at all.
ARCHIVE_TYPES = ("application/gzip", "application/x-gzip", "application/octet-stream",
                 "application/x-tar+gzip", "")
ARCHIVE_BODY = binary_body("application/gzip", "a tar.gz archive; sent as application/gzip, "
                                               "application/x-gzip or application/octet-stream")
UPLOAD_ENDPOINT = "files.Upload"
DRAIN_SLACK = 16 * 1024 * 1024  # read this far past MAX_UPLOAD_BYTES to deliver an early answer
DRAIN_CHUNK = 256 * 1024


@blp.route("/<vm_id>/files/upload")
class Upload(MethodView):
    @blp.doc(operationId="uploadFiles", requestBody=ARCHIVE_BODY)
    @blp.arguments(UploadQueryArgsSchema, location="query")
    @blp.response(204)
    @document_errors(blp, 400, 404, 409, 413, 429, 504)
    def post(self, query, vm_id):
        """Extract a tar.gz body into a workspace directory (all or nothing)"""
        if request.mimetype not in ARCHIVE_TYPES:
            raise InvalidRequest(f"Content-Type {request.mimetype!r} is not a gzip archive; "
                                 f"send application/gzip")
        services().files.upload(vm_id, query["dest"], upload_body(), request.content_length)


@blp.route("/<vm_id>/files/download")
class Download(MethodView):
    @blp.doc(operationId="downloadFiles")
    @blp.arguments(DownloadQueryArgsSchema, location="query")
    @blp.response(200, BINARY, content_type="application/gzip",
                  description="tar.gz of the directory's contents or of the single file")
    @document_errors(blp, 400, 404, 409, 413, 429, 502, 504)
    def get(self, query, vm_id):
        """Download a file or directory of the workspace as tar.gz"""
        chunks = services().files.download(vm_id, query["path"])
        return Response(stream_with_context(chunks), mimetype="application/gzip",
                        headers={"Content-Disposition": 'attachment; filename="download.tar.gz"'})


class UploadBody:
    """The upload's body as the WSGI server delivers it (ended by Content-Length or by the
    last chunk), counting what was read.

    Not ``request.stream``: werkzeug applies MAX_CONTENT_LENGTH (2 MiB, meant for JSON) to it
    and raises 413 before anyone could drain the body. FileService enforces MAX_UPLOAD_BYTES.
    """

    def __init__(self, stream: t.BinaryIO) -> None:
        self._stream = stream
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        """:raises InvalidRequest: when the server cannot read the body (client gone, bad
        chunked framing)."""
        try:
            data = self._stream.read(size)
        except HTTPException:
            raise  # werkzeug's ClientDisconnected: a 400 already
        except Exception as exc:  # the server's own (gunicorn: NoMoreData, ...)
            raise InvalidRequest(f"the upload body could not be read "
                                 f"({type(exc).__name__}: {exc})") from exc
        self.consumed += len(data)
        return data


def upload_body() -> UploadBody:
    """This request's upload body: one reader for the view and the drain after it."""
    if "upload_body" not in g:
        g.upload_body = UploadBody(get_input_stream(request.environ, max_content_length=None))
    return g.upload_body


@blp.after_request
def drain_unread_upload(response: Response) -> Response:
    """Before an upload's error answer leaves (413, 400 for dest or Content-Type, 404/409 for
    the VM), read and drop what is left of its body, up to MAX_UPLOAD_BYTES + 16 MiB in all.

    A server that answers and closes while the client is still sending resets the
    connection, and the client sees "connection reset" (Node: "fetch failed") instead of the
    answer. Past that bound, and for a caller without credentials (401, not worth reading
    for), the connection closes instead.
    """
    if request.endpoint != UPLOAD_ENDPOINT or response.status_code < 400:
        return response
    return close_or_drain(response,
                          current_app.extensions["rds"].settings.max_upload_bytes + DRAIN_SLACK)


def close_or_drain(response: Response, bound: int) -> Response:
    """An error answer to an upload: read the rest of the body first (at most ``bound``
    bytes in all), or, past that or for a caller without credentials, close the connection
    after it (also for the image uploads of app.api.images)."""
    if response.status_code == 401 or not _drain(upload_body(), request.content_length, bound):
        response.headers["Connection"] = "close"
    return response


def _drain(body: UploadBody, declared: int | None, bound: int) -> bool:
    """Whether the body was read to its end within ``bound`` bytes."""
    if declared is not None and declared > bound:
        return False  # known too long: reading it would only delay the answer
    try:
        while body.consumed <= bound:
            if not body.read(min(DRAIN_CHUNK, bound + 1 - body.consumed)):
                return True
    except Exception:  # noqa: BLE001 - whatever stops the read, the answer stands
        return False
    return False
