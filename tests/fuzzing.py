"""What the schemathesis runs share (issue 16): every check, the few exclusions the OpenAPI
document cannot avoid, and a tally of what the cases got.

Two runs use it: tests/unit/test_schemathesis_wsgi.py (the app on the unit fakes, through
WSGI: no VMs) and tests/integration/test_fuzz_live.py (a live gunicorn with real VMs; ``make
fuzz`` is its long run). Either fails on a 5xx or on any check's failure.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import typing as t

import schemathesis
from schemathesis.checks import CHECKS
from schemathesis.specs.openapi.checks import positive_data_acceptance

# Every built-in check: not_a_server_error, status_code_conformance,
# content_type_conformance, response_headers_conformance, response_schema_conformance,
# negative_data_rejection, positive_data_acceptance, missing_required_header,
# unsupported_method (405 with Allow), use_after_free, ensure_resource_availability,
# ignored_auth, ...
ALL_CHECKS = CHECKS.get_all()

# Operations whose bodies carry a rule OpenAPI 3.0 cannot say, so a body the document allows
# may still be refused (400): only the positive-data check is left out for them, and only
# because of the rule named here (every other check, the negative-data one included, runs).
# Each rule is in the field's or the operation's description.
NOT_EXPRESSIBLE = {
    # snapshotId and userOverlaySnapshotId are one field under two names: both given must
    # be equal (a cross-field rule); a label key must match [a-z0-9][a-z0-9_./-]{0,62} (no
    # propertyNames in 3.0); diskSizeMb may not be below the template's own disk (depends on
    # the template named).
    "createVm": "cross-field snapshotId/userOverlaySnapshotId; label keys; template's disk",
    "updateVm": "label keys (OpenAPI 3.0 has no propertyNames)",
    # exactly one of code and path (3.0 could say it only with a oneOf of two object schemas,
    # which generated clients turn into two types); and, as for exec, env's object keys
    "runTsInVm": "exactly one of code or path; env names in the object form",
    "runJsInVm": "exactly one of code or path; env names in the object form",
    # env's object form: its keys must be variable names (no propertyNames in 3.0)
    "execInVm": "env names in the object form",
    # a cursor is one the service handed out (a signed token: no pattern can say which)
    "listVms": "cursor must be one the service handed out",
    # expiresAt must be in the future: true of a fixed value only until it is not
    "createApiKey": "expiresAt must be in the future",
    # the body must be a tar.gz archive (or a qcow2/raw disk image) of bounded size
    "uploadFiles": "the body must be a tar.gz archive",
    "uploadImageFiles": "the body must be a tar.gz archive",
    "uploadImageDisk": "the body must be a qcow2 or raw disk image",
    # a setup script, or disk: true (and then an uploaded disk); and the base's disk size
    "createImage": "setup or disk: true; diskSizeMb at least the base image's",
    # the URL's host must resolve, and not to the guests' network or link-local addresses
    "createWebhook": "the URL's host must resolve to an allowed address",
    "updateWebhook": "the URL's host must resolve to an allowed address",
}


# 413 is a right answer either way: a JSON body over 2 MiB (MAX_CONTENT_LENGTH), whether or
# not the schema allows what is in it (a 1,000,000-character `code` of 3-byte characters).
NEGATIVE_STATUSES = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                     "428", "429", "5xx"]
POSITIVE_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]


def config_dict(**project: t.Any) -> dict[str, t.Any]:
    """schemathesis's configuration (as its schemathesis.toml would hold it): every check,
    the expected statuses above, and positive_data_acceptance off for the operations of
    NOT_EXPRESSIBLE only; ``project`` adds settings (``seed``, ``headers``, ...)."""
    generation = {"max-examples": project.pop("max_examples")} \
        if "max_examples" in project else {}
    return {"checks": {"enabled": True,
                       "negative_data_rejection": {"expected-statuses": NEGATIVE_STATUSES},
                       "positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES}},
            "generation": generation,
            "operations": [{"include-operation-id": operation_id,
                            "checks": {"positive_data_acceptance": {"enabled": False}}}
                           for operation_id in NOT_EXPRESSIBLE],
            **project}


CONFIG = schemathesis.Config.from_dict(config_dict())


@schemathesis.serializer("application/gzip", "application/octet-stream")
def _raw_bytes(_ctx: t.Any, value: t.Any) -> bytes:
    """Upload bodies (``format: binary``): schemathesis generates bytes, sent as they are."""
    return value if isinstance(value, bytes) else str(value).encode()


def excluded_checks(operation_id: str | None) -> list[t.Any]:
    return [positive_data_acceptance] if operation_id in NOT_EXPRESSIBLE else []


@dataclasses.dataclass
class Tally:
    """Cases run, their statuses, and every failure (a 5xx or a failed check)."""

    cases: int = 0
    statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    failures: list[str] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def run(self, case: schemathesis.Case, **kwargs: t.Any) -> None:
        """``case.call_and_validate`` with every check; records the answer or the failure
        (and re-raises it, so that hypothesis shrinks and reports it)."""
        operation_id = case.operation.definition.raw.get("operationId")
        try:
            response = case.call(**kwargs)
            with self.lock:
                self.cases += 1
                self.statuses[response.status_code] += 1
            case.validate_response(response, checks=ALL_CHECKS,
                                   excluded_checks=excluded_checks(operation_id),
                                   headers=kwargs.get("headers"), transport_kwargs=kwargs)
        except Exception as exc:
            with self.lock:
                self.failures.append(f"{case.method} {case.path}: {str(exc)[:2000]}")
            raise

    def record(self, recorder: t.Any) -> None:
        """Count what one scenario of schemathesis's engine sent and what failed in it."""
        with self.lock:
            for interaction in recorder.interactions.values():
                self.cases += 1
                if interaction.response is not None:
                    self.statuses[interaction.response.status_code] += 1
            for checks in recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        self.failures.append(f"{recorder.label}: {check.name}: "
                                             f"{failure.title}: {failure.message[:1500]}\n"
                                             f"  {check.failure_info.code_sample[:1500]}")

    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    def summary(self, title: str) -> str:
        statuses = ", ".join(f"{status}: {count}"
                             for status, count in sorted(self.statuses.items()))
        return (f"{title}: {self.cases} cases; statuses {{{statuses}}}; "
                f"{self.server_errors()} 5xx; {len(self.failures)} failures")
