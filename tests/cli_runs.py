"""``layerforge`` runs in a subprocess, as a user types them (for pipeline tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


def kill_when(proc: subprocess.Popen, path: Path, timeout: float = 600) -> None:
    """SIGKILL ``proc`` as soon as ``path`` exists (a checkpoint, an item marker)."""
    deadline = time.time() + timeout
    while time.time() < deadline and not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {path} appeared")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
