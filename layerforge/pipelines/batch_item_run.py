"""One item of a batch, as a worker runs it: an ordinary run, its outcome as a small record.

:func:`run_item` never raises for a problem of its item: whatever happens (a bad config, a
corrupt mesh, NaN, MemoryError, a bug, Ctrl-C) becomes a record with a one-line ``error``,
so one item never stops the rest. It is a top-level function of a light module so that every
executor (a forked process, a Ray task, a submitit job) pickles it by reference.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import time
import traceback
from pathlib import Path
from typing import Any

ItemSpec = dict[str, Any]
"""What a worker needs: ``pipeline``, ``item``, ``overrides`` (list of key=value, with input=
and run=), ``out`` (absolute), ``threads`` (torch threads, or None), ``mem_gb`` (the local
executor's heap cap, or None), ``busy_wait_s``."""

ItemResult = dict[str, Any]
"""What comes back: ``item``, ``status`` (done | failed | interrupted), ``error`` (one line or
None), ``wall_s``, ``peak_rss_mb``, ``metrics`` (numbers the stages recorded), ``exports``
(deliverable count), ``host``, ``pid``."""

_PR_SET_PDEATHSIG = 1


def failure(spec: ItemSpec, error: str, status: str = "failed", **extra: Any) -> ItemResult:
    """The record of an item that produced no result of its own (killed, timed out, lost)."""
    return {"item": spec["item"], "status": status, "error": error, "wall_s": None, "peak_rss_mb": None,
            "metrics": {}, "exports": 0, **extra}


def _reset_peak_rss() -> None:
    """Start this process's peak-RSS counter afresh (Linux), so a reused worker reports this item's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def _figures(manifest: dict[str, Any]) -> dict[str, float | int | bool]:
    """The numbers the stages recorded, later stages winning (bsp: the evaluation's cd, nc, convexes)."""
    figures: dict[str, float | int | bool] = {}
    stages = manifest.get("stages", {})
    for name in [n for n in manifest.get("stage_order", []) if n in stages]:
        for key, value in (stages[name].get("metrics") or {}).items():
            if isinstance(value, (int, float, bool)):
                figures[key] = value
    return figures


def _wait_for_lock(root: Path, budget_s: float) -> None:
    """An item folder still locked by a live process (a job the killed batch left running on a
    cluster) is waited for, then re-run: its finished stages are skipped."""
    from layerforge.pipelines.rundir import RunLock

    deadline = time.monotonic() + budget_s
    lock = RunLock(root)
    while lock.holder() is not None and time.monotonic() < deadline:
        time.sleep(1.0)


def _memory_cap(spec: ItemSpec) -> str:
    return f"over mem_gb_per_item={spec['mem_gb']:g}: " if spec.get("mem_gb") else ""


def run_item(spec: ItemSpec) -> ItemResult:
    """Run one item in this process; return its record (never raises for the item's own problems)."""
    from layerforge.errors import LayerforgeError, RunBusyError
    from layerforge.pipelines.launch import execute_run, prepare_run
    from layerforge.pipelines.rundir import load_manifest

    t0 = time.perf_counter()
    _reset_peak_rss()
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    record: ItemResult = {"item": spec["item"], "status": "failed", "error": None, "metrics": {}, "exports": 0,
                          "host": socket.gethostname(), "pid": os.getpid()}
    root: Path | None = None
    try:
        prepared = prepare_run(spec["pipeline"], list(spec["overrides"]))
        root = prepared.root
        try:
            run_dir = execute_run(prepared, console=False)
        except RunBusyError:
            _wait_for_lock(root, float(spec.get("busy_wait_s") or 0))
            run_dir = execute_run(prepared, console=False)
        record.update(status="done", exports=len(run_dir.exports))
    except KeyboardInterrupt:
        record.update(status="interrupted", error="interrupted (its checkpoint is kept: re-run the batch to resume)")
    except LayerforgeError as err:
        record["error"] = str(err)
    except MemoryError:
        record["error"] = f"ran out of memory ({_memory_cap(spec)}MemoryError); give each item more memory or lower the sizes"
    except Exception as err:  # a bug or an environment problem: its traceback is in the item's log
        where = f"; the traceback is in {root / 'log.txt'}" if root is not None else ""
        if any(m in str(err).lower() for m in ("out of memory", "can't allocate memory")):
            record["error"] = f"ran out of memory ({_memory_cap(spec)}{type(err).__name__}){where}"
        else:
            first = (str(err).strip().splitlines() or [""])[0]
            record["error"] = f"{type(err).__name__}: {first}{where}"
        if root is None:
            record["traceback"] = traceback.format_exc(limit=8)
    if root is not None and (root / "manifest.json").exists():
        try:
            manifest = load_manifest(root)
            record["metrics"] = _figures(manifest)
            record["exports"] = len(manifest.get("exports", {}))
        except LayerforgeError:
            pass
    record["wall_s"] = round(time.perf_counter() - t0, 3)
    record["peak_rss_mb"] = _peak_rss_mb()
    return record


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when the process that started it dies (a SIGKILLed batch)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def local_worker(spec: ItemSpec, conn: Any) -> None:
    """Entry of a local executor's process: SIGTERM stops the item like Ctrl-C (recorded, resumable)."""
    _die_with_parent()

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    if spec.get("mem_gb"):
        # a cap on the item's heap: over it, allocations fail (MemoryError, recorded) instead of the
        # kernel's OOM killer picking a process of the machine
        limit = int(float(spec["mem_gb"]) * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    try:
        result = run_item(spec)
    except KeyboardInterrupt:  # arrived outside run_item's own handler
        result = failure(spec, "interrupted", status="interrupted")
    conn.send(result)
    conn.close()
