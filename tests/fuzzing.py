"""What the schemathesis runs share (issue 16): every check, the few exclusions the OpenAPI
document cannot avoid, and a tally of what the cases got.

Two runs use it: tests/unit/test_schemathesis_wsgi.py (the app on the unit fakes, through
WSGI: no VMs) and tests/integration/test_fuzz_live.py (a live gunicorn with real VMs; ``make
fuzz`` is its long run). Either fails on a 5xx or on any check's failure.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import typing as t
import urllib.parse
import uuid
import zlib

import schemathesis
from schemathesis.checks import CHECKS
from schemathesis.specs.openapi.checks import positive_data_acceptance

@schemathesis.check
def status_documented_explicitly(_ctx: t.Any, response: t.Any, case: schemathesis.Case) -> None:
    """The status is one the operation lists itself. schemathesis's status_code_conformance
    takes the ``default`` response, which flask-smorest gives every operation, so it would let
    any status through; the document is to list each status a route can answer."""
    if case.method.upper() != case.operation.method.upper():
        return  # an undeclared method (405): unsupported_method judges it
    listed = case.operation.definition.raw.get("responses", {})
    if str(response.status_code) not in listed:
        raise AssertionError(f"{case.method} {case.operation.path} answered "
                             f"{response.status_code}, which its responses do not list "
                             f"({', '.join(sorted(listed))})")


# Every built-in check (and the one above): not_a_server_error, status_code_conformance,
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
    # a path's ".." segments may not lead out of /workspace (no pattern says that simply)
    "downloadFiles": "the path must stay inside /workspace",
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


# What each create operation makes (Guard.record).
CREATES = {"createVm": "vms", "createSnapshot": "snapshots", "createImage": "images",
           "createWebhook": "webhooks", "createApiKey": "keys"}
SHAPE = {"cpu": 1, "memMb": 256}  # the integration suite's memory snapshot's: a fast restore
# Where a VM id goes (Guard): the operations that change a VM's policy or state get VM C.
ON_VM_C = {"setVmNetwork", "stopVm", "startVm", "keepaliveVm", "updateVm"}
IMAGE_OPS = {"deleteImage", "setDefaultImage", "uploadImageDisk", "uploadImageFiles",
             "getImage", "getImageBuildLog"}


class Guard:
    """Rewrites each request before it is sent, in every phase (schemathesis's global
    ``before_call`` hook, which acts only while a run has put its Guard in ACTIVE):

    * operations on a VM get real VMs: exec, run-ts/js, files, snapshots, logs, stats go to VM
      A or B (one in eight keeps its generated id: a 404); those that change a VM's policy or
      state (network, stop, start, keepalive, labels) to VM C, so no command runs in a VM
      whose egress the fuzzer opened; ``DELETE /v1/vms/{id}`` to an id no VM has, and the
      label filters of ``DELETE /v1/vms`` get a key no VM but the fuzzer's own can have;
    * images and snapshots that existed before the run are never deleted, made the default
      or given a disk (their ids are swapped for ones that do not exist);
    * a webhook URL's host (and port) becomes ``sink``, on 127.0.0.1: no name is resolved and
      no delivery can leave the machine;
    * a create the schema takes gets the shape of the suite's memory snapshot (a restore in a
      second, not a cold boot of a random size).
    """

    def __init__(self, vms: list[str], images: set[str], snapshots: set[str],
                 sink: str) -> None:
        self.vms, self.images, self.snapshots, self.sink = vms, images, snapshots, sink
        self.created: dict[str, set[str]] = collections.defaultdict(set)

    @contextlib.contextmanager
    def active(self) -> t.Iterator[None]:
        ACTIVE.append(self)
        try:
            yield
        finally:
            ACTIVE.remove(self)

    def record(self, case: schemathesis.Case, response: t.Any) -> None:
        """Remember what a create made (by kind: vms, snapshots, ...), to delete it after."""
        kind = CREATES.get(case.operation.definition.raw.get("operationId"))
        if kind and 200 <= response.status_code < 300 and case.method.upper() == "POST":
            try:
                made = response.json()
            except ValueError:
                return
            if isinstance(made, dict) and isinstance(made.get("id"), str):
                self.created[kind].add(made["id"])

    def apply(self, case: schemathesis.Case) -> None:
        operation_id = case.operation.definition.raw.get("operationId")
        params = case.path_parameters or {}
        if "vm_id" in params:
            spread = zlib.crc32(case.id.encode())
            if operation_id == "deleteVm":
                params["vm_id"] = str(uuid.uuid4())
            elif operation_id in ON_VM_C:
                params["vm_id"] = self.vms[2]
            elif spread % 8:  # most go to a real guest, a few keep their generated id (404s)
                params["vm_id"] = self.vms[spread % 2]
        if params.get("image_id") in self.images and operation_id in IMAGE_OPS - {
                "getImage", "getImageBuildLog"}:
            params["image_id"] = "fz-no-such-image"
        if params.get("snapshot_id") in self.snapshots and operation_id == "deleteSnapshot":
            params["snapshot_id"] = "fz-no-such-snapshot"
        if operation_id == "deleteVms" and isinstance(case.query, dict):
            labels = case.query.get("label")
            if isinstance(labels, list):
                case.query["label"] = [f"fz-{label}" if isinstance(label, str) and label
                                       and not label.startswith("=") else label
                                       for label in labels]
            elif isinstance(labels, str) and labels and not labels.startswith("="):
                case.query["label"] = f"fz-{labels}"
        if operation_id in ("createWebhook", "updateWebhook") and isinstance(case.body, dict):
            case.body["url"] = self._local_url(case.body.get("url"))
        if operation_id == "createVm" and isinstance(case.body, dict):
            self._seed_shape(case.body)

    def _local_url(self, url: t.Any) -> t.Any:
        """The same URL with its host (and port) made this test's sink on 127.0.0.1."""
        if not isinstance(url, str):
            return url
        try:
            parts = urllib.parse.urlsplit(url)
            if not parts.netloc:
                return url
        except ValueError:
            return url
        return urllib.parse.urlunsplit(parts._replace(netloc=self.sink))

    @staticmethod
    def _seed_shape(body: dict[str, t.Any]) -> None:
        """A create the schema takes gets the memory snapshot's shape: a restore in a second,
        not a cold boot of a random size (the other fields are the fuzzer's)."""
        for name, value in SHAPE.items():
            if isinstance(body.get(name), int) and not isinstance(body.get(name), bool):
                body[name] = value
        if isinstance(body.get("diskSizeMb"), int):  # the snapshot's disk, not a new one
            body["diskSizeMb"] = None
        if body.get("provisionMode") == "boot":  # a cold boot: ~15 s of TCG each
            body["provisionMode"] = "auto"


ACTIVE: list[Guard] = []  # the running fuzz test's


@schemathesis.hook
def before_call(_context: schemathesis.HookContext, case: schemathesis.Case,
                _kwargs: dict[str, t.Any]) -> None:
    if ACTIVE:
        ACTIVE[-1].apply(case)


@schemathesis.hook
def after_call(_context: schemathesis.HookContext, case: schemathesis.Case,
               response: t.Any) -> None:
    if ACTIVE:
        ACTIVE[-1].record(case, response)


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
