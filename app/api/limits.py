"""Long calls never starve cheap ones: each worker process runs at most ``LONG_CALL_SLOTS``
long calls (creates, commands, file transfers, ...) at once, so some of its threads are always
free for ``/healthz``, listings and reads. A long call beyond that is answered at once with 429
and ``Retry-After`` instead of queueing behind the others (gunicorn's gthread workers hand a
connection to the next free thread, and there is no other queue to wait in)."""
from __future__ import annotations

import threading

from flask import Flask, Response, g, request

from app.errors import TooBusy

# (endpoint, method) of every call that may take seconds to minutes.
LONG_CALLS = {
    ("vms.Vms", "POST"), ("vms.VmById", "DELETE"), ("vms.VmStop", "POST"),
    ("vms.VmStart", "POST"), ("vms.VmNetwork", "PUT"),
    ("commands.Exec", "POST"), ("commands.RunTs", "POST"), ("commands.RunJs", "POST"),
    ("files.Upload", "POST"), ("files.Download", "GET"),
    ("snapshots.VmSnapshots", "POST"), ("images.ImageFiles", "PUT"),
    ("images.ImageDisk", "PUT"), ("admin.EventStream", "GET"), ("hosts.HostImage", "PUT"),
}
# ... and calls that are long only with a query flag set (a followed build log streams for as
# long as the build runs; its tail is a quick read).
LONG_WITH_FLAG = {("images.ImageBuildLog", "GET"): "follow"}
RETRY_AFTER_S = 2


def install(app: Flask, slots: int) -> None:
    """Hold a slot for each long call from before the view until the response is done: for a
    streamed answer (a download, a streamed exec) until its last byte is out or its client
    has gone (the WSGI server closes the response then).

    Flask runs ``teardown_request`` as soon as the view's response is made, before a
    streamed body is sent (even with ``stream_with_context``), so a streamed response takes
    the slot over and gives it back when it is closed. Install this before the other
    ``after_request`` hooks: it runs last, so no later hook can swap the response it handed
    the slot to.
    """
    semaphore = threading.BoundedSemaphore(slots)
    app.extensions["rds.long_call_slots"] = slots

    @app.before_request
    def take_slot() -> None:
        call = (request.endpoint, request.method)
        flag = LONG_WITH_FLAG.get(call)
        if call not in LONG_CALLS and not (flag and request.args.get(flag, "").lower() in
                                           ("1", "true", "yes", "on")):
            return
        if not semaphore.acquire(blocking=False):
            raise TooBusy(f"this worker is running its maximum of {slots} long calls; retry "
                          f"in {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
        g.long_call_slot = semaphore

    @app.after_request
    def hand_slot_to_stream(response: Response) -> Response:
        held = g.get("long_call_slot")
        if held is not None and response.is_streamed:
            del g.long_call_slot
            response.call_on_close(held.release)
        return response

    @app.teardown_request
    def give_slot_back(_error: BaseException | None) -> None:
        held = g.pop("long_call_slot", None)
        if held is not None:
            held.release()
