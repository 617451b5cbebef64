"""/v1/vms/{id}/exec, /run-ts, /run-js: run code in a RUNNING VM.

Each answers with one JSON object, or, with ``Accept: application/x-ndjson``, streams the
output as it happens (app/api/ndjson.py)."""
from __future__ import annotations

from flask.views import MethodView

from app.api import Blueprint, document_errors, services
from app.api.ndjson import document_ndjson, ndjson_response, wants_ndjson
from app.schemas.commands import (CommandResultLineSchema, CommandResultSchema, ExecSchema,
                                  RunJsSchema, RunResultLineSchema, RunResultSchema,
                                  RunTsSchema)

blp = Blueprint("commands", __name__, url_prefix="/v1/vms",
                description="Run shell commands, TypeScript (Deno) and JavaScript (Node.js)")


@blp.route("/<vm_id>/exec")
class Exec(MethodView):
    @blp.doc(operationId="execInVm")
    @blp.arguments(ExecSchema)
    @blp.response(200, CommandResultSchema)
    @document_ndjson(blp, CommandResultLineSchema)
    @document_errors(blp, 400, 404, 409, 429, 504)
    def post(self, body, vm_id):
        """Run a shell command as uid 1000 in /workspace"""
        args = (vm_id, body["cmd"], body["cwd"], body["env"], body["timeoutMs"])
        if wants_ndjson():
            return ndjson_response(services().commands.exec_stream(*args),
                                   CommandResultLineSchema())
        return services().commands.exec(*args)


@blp.route("/<vm_id>/run-ts")
class RunTs(MethodView):
    @blp.doc(operationId="runTsInVm")
    @blp.arguments(RunTsSchema)
    @blp.response(200, RunResultSchema)
    @document_ndjson(blp, RunResultLineSchema)
    @document_errors(blp, 400, 404, 409, 429, 504)
    def post(self, body, vm_id):
        """Run TypeScript with Deno inside its permission sandbox"""
        args = (vm_id, body["code"], body["path"], body["args"], body["env"],
                body["denoFlags"], body["timeoutMs"])
        if wants_ndjson():
            return ndjson_response(services().commands.run_ts_stream(*args),
                                   RunResultLineSchema())
        return services().commands.run_ts(*args)


@blp.route("/<vm_id>/run-js")
class RunJs(MethodView):
    @blp.doc(operationId="runJsInVm")
    @blp.arguments(RunJsSchema)
    @blp.response(200, RunResultSchema)
    @document_ndjson(blp, RunResultLineSchema)
    @document_errors(blp, 400, 404, 409, 429, 504)
    def post(self, body, vm_id):
        """Run JavaScript (ES module) with Node.js"""
        args = (vm_id, body["code"], body["path"], body["args"], body["env"],
                body["nodeFlags"], body["timeoutMs"])
        if wants_ndjson():
            return ndjson_response(services().commands.run_js_stream(*args),
                                   RunResultLineSchema())
        return services().commands.run_js(*args)
