"""/v1/vms/{id}/exec, /run-ts, /run-js: run code in a RUNNING VM."""
from __future__ import annotations

from flask.views import MethodView

from app.api import Blueprint, document_errors, services
from app.schemas.commands import (CommandResultSchema, ExecSchema, RunJsSchema, RunResultSchema,
                                  RunTsSchema)

blp = Blueprint("commands", __name__, url_prefix="/v1/vms",
                description="Run shell commands, TypeScript (Deno) and JavaScript (Node.js)")


@blp.route("/<vm_id>/exec")
class Exec(MethodView):
    @blp.doc(operationId="execInVm")
    @blp.arguments(ExecSchema)
    @blp.response(200, CommandResultSchema)
    @document_errors(blp, 400, 404, 409, 429, 504)
    def post(self, body, vm_id):
        """Run a shell command as uid 1000 in /workspace"""
        return services().commands.exec(vm_id, body["cmd"], body["cwd"], body["env"],
                                        body["timeoutMs"])


@blp.route("/<vm_id>/run-ts")
class RunTs(MethodView):
    @blp.doc(operationId="runTsInVm")
    @blp.arguments(RunTsSchema)
    @blp.response(200, RunResultSchema)
    @document_errors(blp, 400, 404, 409, 429, 504)
    def post(self, body, vm_id):
        """Run TypeScript with Deno inside its permission sandbox"""
        return services().commands.run_ts(vm_id, body["code"], body["path"], body["args"],
                                          body["env"], body["denoFlags"], body["timeoutMs"])


@blp.route("/<vm_id>/run-js")
class RunJs(MethodView):
    @blp.doc(operationId="runJsInVm")
    @blp.arguments(RunJsSchema)
    @blp.response(200, RunResultSchema)
    @document_errors(blp, 400, 404, 409, 429, 504)
    def post(self, body, vm_id):
        """Run JavaScript (ES module) with Node.js"""
        return services().commands.run_js(vm_id, body["code"], body["path"], body["args"],
                                          body["env"], body["nodeFlags"], body["timeoutMs"])
