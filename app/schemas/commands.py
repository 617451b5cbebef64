"""Schemas of exec, run-ts / run-js and file transfer."""
from __future__ import annotations

import types

from marshmallow import RAISE, Schema, fields, pre_dump, validate

from app.schemas.fields import EnvVars, NulFreeString

MAX_CODE = 1_000_000


class ExecSchema(Schema):
    class Meta:
        unknown = RAISE

    cmd = NulFreeString(required=True, validate=validate.Length(min=1, max=100_000))
    cwd = NulFreeString(load_default=None, allow_none=True)
    env = EnvVars()
    timeoutMs = fields.Integer(load_default=None, allow_none=True, strict=True,
                               metadata={"description": "default 30000, max "
                                                        "MAX_EXEC_TIMEOUT_MS (120000)"})


class CommandResultSchema(Schema):
    """A command's outcome: all fields always present (``required``)."""

    exitCode = fields.Integer(required=True, attribute="exit_code",
                              metadata={"description": "-1 when the command timed out"})
    stdout = fields.Method("_stdout", required=True, metadata={
        "type": "string", "description": "UTF-8 (invalid bytes become U+FFFD), at most "
                                         "MAX_OUTPUT_BYTES"})
    stderr = fields.Method("_stderr", required=True, metadata={
        "type": "string", "description": "as stdout"})
    timedOut = fields.Boolean(required=True, attribute="timed_out")
    stdoutTruncated = fields.Boolean(required=True, attribute="stdout_truncated")
    stderrTruncated = fields.Boolean(required=True, attribute="stderr_truncated")
    durationMs = fields.Integer(required=True, attribute="duration_ms")

    def _stdout(self, obj) -> str:  # invalid UTF-8 becomes U+FFFD, never a 500
        return obj.stdout.decode("utf-8", errors="replace")

    def _stderr(self, obj) -> str:
        return obj.stderr.decode("utf-8", errors="replace")


class _RunSchema(Schema):
    class Meta:
        unknown = RAISE

    # code goes to the runtime on stdin, so it may hold NUL; everything else is on the command
    # line (see NulFreeString).
    code = fields.String(load_default=None, allow_none=True,
                         validate=validate.Length(max=MAX_CODE))
    path = NulFreeString(load_default=None, allow_none=True)
    args = fields.List(NulFreeString(), load_default=list)
    env = EnvVars()
    timeoutMs = fields.Integer(load_default=None, allow_none=True, strict=True)


class RunTsSchema(_RunSchema):
    denoFlags = fields.List(NulFreeString(), load_default=list)


class RunJsSchema(_RunSchema):
    nodeFlags = fields.List(NulFreeString(), load_default=list)


class RunResultSchema(CommandResultSchema):
    """A RunResult: the command's fields, plus ``result``/``error`` only when the script set
    them."""

    result = fields.Raw(allow_none=True, metadata={
        "description": "the value of result.set(value); absent when the script set none"})
    error = fields.Raw(allow_none=True, metadata={
        "description": "result.error(err) or an uncaught exception ({name, message, stack} "
                       "for an Error); absent when there was none"})

    @pre_dump
    def _flatten(self, run, **_kwargs):
        return types.SimpleNamespace(**vars(run.command), **{
            key: run.outcome[key] for key in ("result", "error") if key in run.outcome})


# Lines of a streamed answer (Accept: application/x-ndjson; app/api/ndjson.py) ##############

class OutputLineSchema(Schema):
    """A chunk of output, as it arrived."""

    class Meta:
        unknown = RAISE

    type = fields.String(required=True, validate=validate.OneOf(["output"]))
    stream = fields.String(required=True, validate=validate.OneOf(["stdout", "stderr"]))
    data = fields.String(required=True, metadata={
        "description": "the chunk as UTF-8 text, or the base64 of its bytes when `encoding` "
                       "is `base64`"})
    encoding = fields.String(validate=validate.OneOf(["base64"]), metadata={
        "description": "only when the chunk is not valid UTF-8"})


class ErrorLineSchema(Schema):
    """The last line when the call failed after its output had started."""

    class Meta:
        unknown = RAISE

    type = fields.String(required=True, validate=validate.OneOf(["error"]))
    message = fields.String(required=True)


class CommandResultLineSchema(CommandResultSchema):
    """The last line: the buffered answer, with stdout and stderr empty (the output lines
    carried them)."""

    type = fields.String(required=True, dump_default="result",
                         validate=validate.OneOf(["result"]))


class RunResultLineSchema(RunResultSchema):
    """The last line: the buffered answer, with stdout and stderr empty (the output lines
    carried them)."""

    type = fields.String(required=True, dump_default="result",
                         validate=validate.OneOf(["result"]))


# What app.services.workspace.workspace_path refuses outright; that a path stays inside the
# workspace once its ".." are resolved, the description says.
GUEST_PATH = "^[^\\x00\\n\\r]*\\Z"


class UploadQueryArgsSchema(Schema):
    dest = fields.String(required=True, metadata={
        "description": "directory inside the workspace: /workspace/..., relative, or "
                       "/home/user/... (.. may not lead out of it)", "pattern": GUEST_PATH})


class DownloadQueryArgsSchema(Schema):
    path = fields.String(required=True, metadata={
        "description": "file or directory inside the workspace, as dest of the upload",
        "pattern": GUEST_PATH})
