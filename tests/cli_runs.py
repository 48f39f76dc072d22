"""``layerforge`` runs in a subprocess, as a user types them (for pipeline tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, wait: bool = True, timeout: float = 900) -> subprocess.CompletedProcess | subprocess.Popen:
    """``python -m layerforge.cli *args`` with this checkout first on the path and 2 threads.

    ``wait=False`` returns the running process (stdout/stderr discarded), for kill tests.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "layerforge.cli", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
