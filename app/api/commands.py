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
    @blp.arguments(ExecSchema)
    @blp.response(200, CommandResultSchema)
    @document_errors(blp, 400, 404, 409, 504)
    def post(self, body, vm_id):
        """Run a shell command as uid 1000 in /workspace"""
        return services().commands.exec(vm_id, body["cmd"], body["cwd"], body["env"],
                                        body["timeoutMs"])


@blp.route("/<vm_id>/run-ts")
class RunTs(MethodView):
    @blp.arguments(RunTsSchema)
    @blp.response(200, RunResultSchema)
    @document_errors(blp, 400, 404, 409, 504)
    def post(self, body, vm_id):
        """Run TypeScript with Deno inside its permission sandbox"""
        run = services().commands.run_ts(vm_id, body["code"], body["path"], body["args"],
                                         body["env"], body["denoFlags"], body["timeoutMs"])
        return _merge(run)


@blp.route("/<vm_id>/run-js")
class RunJs(MethodView):
    @blp.arguments(RunJsSchema)
    @blp.response(200, RunResultSchema)
    @document_errors(blp, 400, 404, 409, 504)
    def post(self, body, vm_id):
        """Run JavaScript (ES module) with Node.js"""
        run = services().commands.run_js(vm_id, body["code"], body["path"], body["args"],
                                         body["env"], body["nodeFlags"], body["timeoutMs"])
        return _merge(run)


def _merge(run):
    """The command result's fields plus ``result``/``error`` when the script set them."""
    merged = RunView(run.command)
    for key in ("result", "error"):
        if key in run.outcome:
            setattr(merged, key, run.outcome[key])
    return merged


class RunView:
    """Attribute view for RunResultSchema: the command's fields, then result/error."""

    def __init__(self, command) -> None:
        self.__dict__.update(command.__dict__)
