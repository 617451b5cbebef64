"""Prometheus metrics: the series this service exports, defined once (prometheus-client).

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` is set before any worker starts
(deploy/gunicorn.conf.py), so every worker's counters and histograms are files there and a
scrape of any worker adds them all up (prometheus-client's multiprocess mode). Without it
(tests, ``flask run``) they live in this process. What is read from libvirt at scrape time
(VMs by state, warm-pool size) is not counted here but collected by the scraping worker
(:class:`app.services.observe.HostCollector`).
"""
from __future__ import annotations

import os
import typing as t

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

HTTP_REQUESTS = Counter("rds_http_requests_total", "HTTP requests answered",
                        ["method", "route", "status"])
HTTP_DURATION = Histogram("rds_http_request_duration_seconds", "HTTP request duration",
                          ["method", "route"], buckets=SECONDS)
VM_CREATE_DURATION = Histogram("rds_vm_create_duration_seconds",
                               "POST /v1/vms until the VM answered, by how it was made",
                               ["provision_mode"], buckets=SECONDS)
VM_CREATE_FAILURES = Counter("rds_vm_create_failures_total", "Creates that failed, by error",
                             ["error"])
VMS_DELETED = Counter("rds_vms_deleted_total",
                      "VMs deleted, by why: api (DELETE), label (DELETE by label), expired",
                      ["reason"])
VMS_IDLE_STOPPED = Counter("rds_vms_idle_stopped_total",
                           "VMs stopped because nobody used them (idleStopSeconds)")
WARM_POOL_CLAIMS = Counter("rds_warm_pool_claims_total", "Warm-pool claims, by result",
                           ["result"])
COMMAND_DURATION = Histogram("rds_command_duration_seconds",
                             "exec / run-ts / run-js duration in the guest", ["type"],
                             buckets=SECONDS)
TRANSFER_BYTES = Counter("rds_transfer_bytes_total", "Bytes moved by files upload/download",
                         ["direction"])
SSH_ERRORS = Counter("rds_ssh_errors_total", "SSH failures talking to guests, by kind",
                     ["kind"])
LIBVIRT_ERRORS = Counter("rds_libvirt_errors_total", "libvirt calls that failed or timed out",
                         ["call"])


def exposition(*collectors: t.Any) -> bytes:
    """The text format of every series: this host's workers' (all of them in multiprocess
    mode) plus ``collectors`` (read at scrape time)."""
    if os.environ.get(MULTIPROC_ENV):
        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)
        text = generate_latest(counted)
    else:
        from prometheus_client import REGISTRY
        text = generate_latest(REGISTRY)
    extra = CollectorRegistry()
    for collector in collectors:
        extra.register(collector)
    return text + generate_latest(extra)


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (gunicorn's ``child_exit``)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)
