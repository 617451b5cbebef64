#!/usr/bin/env python3
"""What address-space randomization costs a command under TCG: bash's start, inside a guest.

    flock -o /tmp/rds-vm.lock .venv/bin/python bench/guest_aslr.py --rounds 3

One VM through a live server. In one exec, ``--starts`` times `bash -c true` in a session as
the sandbox user runs it (under TCG without randomization: guest/build/sandbox-shell.c), then
as many in a session put back to randomized addresses (`setarch x86_64`, which sets a
personality without ADDR_NO_RANDOMIZE), ``--rounds`` times in turn; then the same for a cold
`deno run` of a one-line program. Milliseconds per start, as the guest's clock measures them.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import loadgen
from bench.common import live_server_services

KEY = "bench-load-key"

SCRIPT = """
ms() {{ echo $(( $(date +%s%N) / 1000000 )); }}
starts() {{
  local s; s=$(ms)
  for _ in $(seq {starts}); do "$@" >/dev/null; done
  echo $(( ($(ms) - s) / {starts} ))
}}
randomized() {{ setarch x86_64 bash -c "$(declare -f ms starts); starts $*"; }}
echo 'console.log(42)' > /tmp/aslr.ts
export DENO_DIR=/tmp/aslr-deno; deno run /tmp/aslr.ts >/dev/null
echo "personality $(cat /proc/self/personality)"
for _ in $(seq {rounds}); do
  echo "bash -c true: fixed $(starts bash -c true) randomized $(randomized bash -c true)"
  echo "deno run: fixed $(starts deno run /tmp/aslr.ts) randomized \\
$(randomized deno run /tmp/aslr.ts)"
done
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    services = live_server_services(KEY)
    with loadgen.vms_on_a_live_server(KEY, 1, "guest-aslr-") as (base, _server, vms):
        http = loadgen.client(base, KEY)
        answer = http.post(f"/v1/vms/{vms[0]['id']}/exec", json={
            "cmd": SCRIPT.format(starts=args.starts, rounds=args.rounds),
            "timeoutMs": 120_000}, timeout=180)  # the service's maximum (MAX_EXEC_TIMEOUT_MS)
        body = answer.json()
        print(body.get("stdout", ""), body.get("stderr", ""), body.get("message", ""), sep="")
        http.close()
    services.close()


if __name__ == "__main__":
    main()
