"""openapi-python-client run on our OpenAPI document, as docs/api.md tells users to run it;
for tests/unit/test_openapi_document.py and tests/integration/test_generated_client.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "docs" / "openapi-python-client.yaml"
PACKAGE = "rds_openapi_client"  # package_name_override in CONFIG


def generate_client(document: bytes, where: Path) -> Path:
    """Generate the client package from ``document`` into ``where`` (``--meta none``: the
    package alone), insisting on no warning about the document.

    :returns: the package's directory, ``where / PACKAGE``.
    """
    spec = where / "openapi.json"
    spec.write_bytes(document)
    bin_dir = Path(sys.executable).parent  # the generator formats its output with our ruff
    done = subprocess.run(
        [str(bin_dir / "openapi-python-client"), "generate", "--path", str(spec),
         "--config", str(CONFIG), "--meta", "none", "--output-path", str(where / PACKAGE),
         "--fail-on-warning"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Warning" not in output, output
    return where / PACKAGE
