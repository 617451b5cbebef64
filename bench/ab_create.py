"""A/B of memory-snapshot creates between two checkouts of this repository, in-process.

Usage (run the two alternately, several times, so both see the same machine load):
    python bench/ab_create.py REPO N [STORAGE_ROOT]

REPO is a checkout (e.g. a ``git worktree add --detach /work/wt-old <commit>``); the old code
gets its own STORAGE_ROOT whose ``images`` is a symlink to this host's images, so both restore
the same guest image (each saves its own memory snapshot of it). Prints ``RESULT REPO [s, ...]``:
seconds from ``POST /v1/vms`` (provisionMode snapshot) to its 201, one per create.
"""
import json
import os
import sys
import time

repo, rounds = sys.argv[1], int(sys.argv[2])
storage_root = sys.argv[3] if len(sys.argv) > 3 else ""
sys.path.insert(0, repo)
os.chdir(repo)
from app import create_app  # noqa: E402  (the checkout under test, put first on the path)

config = {"TESTING": True, "API_KEY": "ab-key"}
if storage_root:
    config["STORAGE_ROOT"] = storage_root
app = create_app(config)
services = app.extensions["rds"]
services.seeds.ensure(1, 256)
client = app.test_client()
headers = {"X-API-Key": "ab-key"}
samples = []
for _ in range(rounds):
    started = time.monotonic()
    created = client.post("/v1/vms", json={"cpu": 1, "memMb": 256, "provisionMode": "snapshot"},
                          headers=headers)
    samples.append(time.monotonic() - started)
    assert created.status_code == 201, created.json
    # ?wait=true: everything removed before the next create (older code ignores it: its
    # delete always waited)
    deleted = client.delete(f"/v1/vms/{created.json['id']}?wait=true", headers=headers)
    assert deleted.status_code == 204, deleted.json
print("RESULT", repo, json.dumps([round(sample, 3) for sample in samples]))
services.close()
