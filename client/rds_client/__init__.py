"""Python SDK for run-dat-sheesh: disposable Linux sandboxes (QEMU/KVM VMs) over REST.

    from rds_client import Sandbox

    with Sandbox.create(cpu=1, mem_mb=256, ttl_seconds=600) as sb:  # RDS_URL, RDS_API_KEY
        result = sb.exec("uname -a")
        print(result.exit_code, result.stdout)

:class:`Sandbox` is one VM from create to delete; :class:`Client` is every API call, for
listing and cleaning up. Errors are :class:`RdsError` subclasses carrying the server's message.
"""
from rds_client._version import __version__
from rds_client.client import Client
from rds_client.errors import (BadRequest, CommandFailed, Conflict, Forbidden, NotFound,
                               PayloadTooLarge, QuotaExceeded, RdsError, ServerError, Timeout,
                               TransportError, Unauthorized, Unavailable, UnsafeArchive)
from rds_client.models import CommandResult, OutputChunk, RunResult, Snapshot, Vm
from rds_client.sandbox import Sandbox
from rds_client.streaming import ExecStream

__all__ = [
    "BadRequest", "Client", "CommandFailed", "CommandResult", "Conflict", "ExecStream",
    "Forbidden", "NotFound", "OutputChunk", "PayloadTooLarge", "QuotaExceeded", "RdsError",
    "RunResult", "Sandbox", "ServerError", "Snapshot", "Timeout", "TransportError",
    "Unauthorized", "Unavailable", "UnsafeArchive", "Vm", "__version__",
]
