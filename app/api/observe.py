"""What operators read: /metrics (Prometheus), /readyz, and a VM's console log and stats."""
from __future__ import annotations

from flask import Response
from flask.views import MethodView

from app import metrics
from app.api import Blueprint, document_errors, services
from app.schemas.vms import ApiErrorSchema
from app.schemas.observe import (ConsoleLogSchema, ExecLogSchema, ExecLogsQuerySchema,
                                 LogsQuerySchema, ReadinessSchema, VmStatsSchema)

blp = Blueprint("observe", __name__, url_prefix="/", description="Operations")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@blp.route("metrics")
class Metrics(MethodView):
    @blp.doc(operationId="getMetrics",
             responses={"200": {"description": "Prometheus text format (version 0.0.4)",
                                "content": {"text/plain": {"schema": {"type": "string"}}}}})
    @blp.alt_response(401, schema=ApiErrorSchema,
                      description="Missing or wrong credentials (unless METRICS_PUBLIC)")
    @blp.alt_response(403, schema=ApiErrorSchema,
                      description="An API key without the admin scope (unless METRICS_PUBLIC)")
    def get(self):
        """Prometheus metrics of this host (every worker's, added up)"""
        return Response(metrics.exposition(services().host_metrics), mimetype=None,
                        content_type=PROMETHEUS_TEXT)


@blp.route("readyz")
class Ready(MethodView):
    @blp.doc(operationId="getReadiness")
    @blp.response(200, ReadinessSchema)
    @blp.alt_response(503, schema=ReadinessSchema, description="not ready: see checks")
    def get(self):
        """Whether this host can take work (libvirt, network, filtering, default image)"""
        readiness = services().health.ready()
        body = {"status": "ready" if readiness.ready else "not ready",
                "checks": readiness.checks}
        return body, 200 if readiness.ready else 503


@blp.route("v1/vms/<vm_id>/logs")
class VmLogs(MethodView):
    @blp.doc(operationId="getVmLogs")
    @blp.arguments(LogsQuerySchema, location="query")
    @blp.response(200, ConsoleLogSchema)
    @document_errors(blp, 400, 404)
    def get(self, query, vm_id):
        """The last lines of a VM's serial console (kernel and init output)"""
        return services().console.tail(vm_id, query["tail"])


@blp.route("v1/vms/<vm_id>/stats")
class VmStats(MethodView):
    @blp.doc(operationId="getVmStats")
    @blp.response(200, VmStatsSchema)
    @document_errors(blp, 404)
    def get(self, vm_id):
        """A VM's CPU, memory, disk and network use, from libvirt"""
        return services().stats.read(vm_id)


@blp.route("v1/vms/<vm_id>/exec-logs")
class VmExecLogs(MethodView):
    @blp.doc(operationId="getVmExecLogs")
    @blp.arguments(ExecLogsQuerySchema, location="query")
    @blp.response(200, ExecLogSchema(many=True))
    @document_errors(blp, 400, 404)
    def get(self, query, vm_id):
        """A VM's recent exec / run-ts / run-js calls, newest first"""
        services().vms.get(vm_id)  # 404 for an unknown VM
        return services().history.list(vm_id, query["limit"], query["type"])
