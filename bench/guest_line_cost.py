#!/usr/bin/env python3
"""What a command line costs the guest: raw SSH variants of an exec, QEMU CPU per call.

    flock -o /tmp/rds-vm.lock .venv/bin/python bench/guest_line_cost.py --window 10 --rounds 4

A live server makes 4 VMs; then ``--concurrency`` (16) threads run each variant over raw
paramiko connections to them (the manager's transport, AES-GCM), in ``--window``-second
windows, the variants in a new random order every round. Per variant: calls per second and the
guests' QEMU CPU per call (under TCG the guests' CPU is most of an exec's cost, so a few ms
there is a few % of throughput). Variants: `true` alone; with its stdin's EOF sent after the
exec request's answer (as paramiko's exec_command + shutdown_write do) or right behind the
request (app.guestssh.channels.exec_without_stdin); the service's command line
(app.services.prelude); and its lines one at a time.
"""
from __future__ import annotations

import argparse
import pathlib
import random
import sys
import typing as t
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from app.guestssh.channels import exec_without_stdin
from app.guestssh import GuestTransport
from app.services.prelude import marker_environment, sandbox_command_line
from bench import loadgen
from bench.common import live_server_services, raw_client
from bench.host_cpu import cpu_s, qemu_pids

KEY = "bench-load-key"
SEVEN = ("SSH_CLIENT SSH_CONNECTION SSH_TTY SSH_ORIGINAL_COMMAND SSH_AUTH_SOCK SSH_USER_AUTH "
         "MAIL")


def run(client, made: tuple[str, dict[str, str]], eof: str) -> None:
    line, environment = made
    channel = client.get_transport().open_session(timeout=30)
    if eof == "with request":
        exec_without_stdin(channel, line, environment)
    else:
        channel.exec_command(line)
        if eof == "after answer":
            channel.shutdown_write()
    while channel.recv(65536):
        pass
    assert channel.recv_exit_status() == 0
    channel.close()


def variants() -> dict[str, tuple[t.Callable[[], tuple[str, dict[str, str]]], str]]:
    """Each: what makes a call's (command line, env requests), and when its stdin's EOF goes."""
    def api_line() -> tuple[str, dict[str, str]]:
        marker = uuid.uuid4().hex
        return (sandbox_command_line("true", "/workspace", [], marker),
                marker_environment(marker))

    def alone(line: str) -> t.Callable[[], tuple[str, dict[str, str]]]:
        return lambda: (line, {})
    return {
        "true": (alone("true"), "none"),
        "true, EOF after the answer": (alone("true"), "after answer"),
        "true, EOF with the request": (alone("true"), "with request"),
        "service line (marker as env request), EOF with the request": (api_line,
                                                                       "with request"),
        "true, env request RDS_EXEC_ID, EOF with the request": (
            lambda: ("true", marker_environment(uuid.uuid4().hex)), "with request"),
        "export RDS_EXEC_ID; true": (lambda: (f"export RDS_EXEC_ID={uuid.uuid4().hex}\ntrue",
                                              {}), "none"),
        "unset 7 names; true": (alone(f"unset {SEVEN}\ntrue"), "none"),
        "unset 3 names; true": (alone("unset SSH_CLIENT SSH_CONNECTION MAIL\ntrue"), "none"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    services = live_server_services(KEY)
    with loadgen.vms_on_a_live_server(KEY, 4, "guest-line-") as (_base, _server, vms):
        clients = [raw_client(services, vm, transport_factory=GuestTransport) for vm in vms]
        try:
            calls = {name: (lambda index, make=make, eof=eof:
                            run(clients[index % len(clients)], make(), eof))
                     for name, (make, eof) in variants().items()}
            for call in calls.values():
                loadgen.throughput(call, args.concurrency, 3)
            totals = {name: [0, 0.0] for name in calls}
            for _round in range(args.rounds):
                order = list(calls.items())
                random.shuffle(order)
                for name, call in order:
                    pids = qemu_pids()
                    before = sum(cpu_s(pid) for pid in pids)
                    done, _latencies, errors = loadgen.throughput(call, args.concurrency,
                                                                  args.window)
                    assert not errors, errors[:3]
                    totals[name][0] += done
                    totals[name][1] += sum(cpu_s(pid) for pid in pids) - before
            for name, (done, spent) in totals.items():
                print(f"{name}: {done / (args.window * args.rounds):.1f}/s, QEMU "
                      f"{1000 * spent / done:.1f} ms per call")
        finally:
            for client in clients:
                client.close()
    services.close()


if __name__ == "__main__":
    main()
