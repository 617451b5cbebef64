"""How ``rds`` prints VMs: a table for people, the server's JSON for scripts."""
from __future__ import annotations

import datetime as dt
import json
import typing as t

from rds_client.models import Vm

COLUMNS = ("ID", "STATE", "CPU", "MEM", "IP", "CREATED", "EXPIRES", "LABELS")


def print_json(value: t.Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _time(value: dt.datetime | None) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _labels(vm: Vm) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(vm.labels.items())) or "-"


def vm_row(vm: Vm) -> tuple[str, ...]:
    return (vm.id, vm.state, str(vm.cpu), f"{vm.mem_mb}M", vm.guest_ip or "-",
            _time(vm.created_at), _time(vm.expires_at), _labels(vm))


def print_vms(vms: t.Iterable[Vm]) -> None:
    rows = [COLUMNS, *(vm_row(vm) for vm in vms)]
    widths = [max(len(row[index]) for row in rows) for index in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())


def print_vm(vm: Vm) -> None:
    for name, value in zip(COLUMNS, vm_row(vm), strict=True):
        print(f"{name.lower() + ':':<9}{value}")
    print(f"{'name:':<9}{vm.name or '-'}")
    print(f"{'allow:':<9}{','.join(vm.allow_ips) or '-'}"
          f"{' (internet)' if vm.outbound_internet else ''}")
