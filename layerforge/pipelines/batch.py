"""``layerforge batch``: one ordinary run per item, on a process pool, Ray or SLURM.

    <out>/<pipeline>/<batch>/
        batch.json      the batch: options, overrides, and per item its input, status, attempts,
                        wall time, peak memory, figures and error line; written atomically each
                        time an item ends
        batch.csv       the same, one row per item (for a spreadsheet)
        <item>/         an ordinary run folder (manifest, stages, export, log.txt)

Re-running the same command (same ``batch=``) skips the items that finished with the same
input and overrides, and runs the rest; an item that was interrupted resumes from its
checkpoint, since it is an ordinary run. One failing item never stops the others; the
command exits with code 1 when any failed, naming how many.
"""

from __future__ import annotations

import csv
import io
import logging
import shlex
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from layerforge.assets.atomic import atomic_write_json, atomic_write_text
from layerforge.errors import InputError
from layerforge.pipelines.batch_config import BatchConfig, load_batch_config, split_overrides
from layerforge.pipelines.batch_executors import POLL_S, Executor, check_executor, make_executor
from layerforge.pipelines.batch_item_run import ItemResult, ItemSpec
from layerforge.pipelines.batch_items import BATCH_FILE, BatchItem, collect_items, folder_items
from layerforge.pipelines.rundir import MANIFEST, RunLock, now_iso, sha256_json, stamp

log = logging.getLogger("layerforge")

CSV_FILE = "batch.csv"
CSV_COLUMNS = ("item", "status", "attempts", "wall_s", "peak_rss_mb")
DONE, FAILED, RUNNING, PENDING, INTERRUPTED = "done", "failed", "running", "pending", "interrupted"
SUMMARY_ROWS = 40
"""Up to this many items the summary lists every item; beyond, only the failed ones."""


def item_key(pipeline: str, overrides: list[str], item: BatchItem) -> str:
    """What decides an item's result short of the engine's own hashes: its input (path and stamp)
    and its overrides. An unchanged key with a finished run folder is skipped without a process."""
    path = Path(item.input)
    return sha256_json({"pipeline": pipeline, "overrides": [*overrides, *item.overrides], "input": item.input,
                        "stamp": stamp(path) if path.exists() else None})


def _finished(root: Path) -> bool:
    """The item's run folder says every stage of its pipeline is done."""
    import json

    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    stages = manifest.get("stages", {})
    order = manifest.get("stage_order") or list(stages)
    return bool(order) and all((stages.get(s) or {}).get("status") == DONE for s in order)


class BatchState:
    """batch.json and batch.csv of one batch folder, rewritten atomically on every change."""

    def __init__(self, root: Path, header: dict[str, Any]) -> None:
        self.root = root
        previous: dict[str, Any] = {}
        if (root / BATCH_FILE).exists():
            import json

            try:
                previous = json.loads((root / BATCH_FILE).read_text())
            except ValueError as err:
                raise InputError(f"{root / BATCH_FILE} is corrupt ({err})", "move it away to start the batch afresh") from None
        self.data: dict[str, Any] = {**header, "created": previous.get("created", now_iso()), "items": {}}
        self.previous: dict[str, dict[str, Any]] = previous.get("items", {})

    def item(self, name: str) -> dict[str, Any]:
        return self.data["items"][name]

    def summary(self) -> dict[str, int]:
        return count_items(self.data)

    def save(self) -> None:
        self.data["updated"] = now_iso()
        self.data["summary"] = self.summary()
        atomic_write_json(self.root / BATCH_FILE, self.data)
        atomic_write_text(self.root / CSV_FILE, self.csv())

    def csv(self) -> str:
        items = self.data["items"]
        metric_keys = _metric_keys(self.data, items.values())
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([*CSV_COLUMNS, *metric_keys, "error", "input"])
        for name, e in items.items():
            metrics = e.get("metrics") or {}
            writer.writerow([name, e["status"], e.get("attempts", 0), _cell(e.get("wall_s")), _cell(e.get("peak_rss_mb")),
                             *(_cell(metrics.get(k)) for k in metric_keys), e.get("error") or "", e["input"]])
        return buf.getvalue()


def count_items(data: dict[str, Any]) -> dict[str, int]:
    """Items per status of a batch (and how many were skipped as finished before)."""
    counts = {"items": len(data["items"]), DONE: 0, FAILED: 0, INTERRUPTED: 0, RUNNING: 0, PENDING: 0}
    for entry in data["items"].values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    counts["skipped"] = sum(1 for e in data["items"].values() if e.get("skipped"))
    return counts


def _metric_keys(data: dict[str, Any], entries: Any) -> list[str]:
    """The pipeline's ``key_metrics`` (``pipeline.key_metrics`` in its config), else every figure recorded."""
    found = {k for e in entries for k in (e.get("metrics") or {})}
    declared = data.get("key_metrics") or []
    return [k for k in declared if k in found] if declared else sorted(found)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def run_batch(pipeline_name: str, args: list[str], quiet: bool = False) -> int:
    """``layerforge batch <pipeline> [key=value ...]``; returns the exit code (0 all done, 1 some failed, 130 stopped).

    Raises:
        LayerforgeError: a bad batch option or pipeline override, or inputs= that name nothing
            (one line; checked before any item runs).
    """
    from layerforge.pipelines import registry
    from layerforge.pipelines.schema import validate_config

    batch_args, overrides = split_overrides(args)
    cfg: BatchConfig = load_batch_config(batch_args)
    overrides = [*overrides, "quiet=true"]
    pipeline_cfg = registry.load_config(pipeline_name, overrides)
    validate_config(registry.build(pipeline_cfg), pipeline_cfg)  # a bad global override fails before any item
    out = Path(str(pipeline_cfg.out)).expanduser().resolve()
    items = collect_items(str(cfg.inputs), out, folder_items(str(pipeline_cfg.pipeline.module)))
    check_executor(cfg)
    batch_name = cfg.batch or time.strftime("%Y%m%d-%H%M%S")
    root = out / pipeline_name / batch_name
    root.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["layerforge", "batch", pipeline_name, *[a for a in args if not a.startswith("batch=")],
                          f"batch={batch_name}"])
    lock = RunLock(root)
    lock.acquire()  # one driver per batch: a second command fails with the holder's pid
    try:
        header = {"pipeline": pipeline_name, "batch": batch_name, "executor": cfg.executor, "command": command,
                  "inputs": cfg.inputs, "overrides": overrides[:-1],
                  "key_metrics": list(pipeline_cfg.pipeline.get("key_metrics") or [])}
        executor = make_executor(cfg, root, f"layerforge-{pipeline_name}-{batch_name}", [str(pipeline_cfg.pipeline.module)])
        try:
            return _drive(BatchState(root, header), executor, cfg, overrides, items, out, quiet)
        finally:
            executor.close()
    finally:
        lock.release()


def _drive(state: BatchState, executor: Executor, cfg: BatchConfig, overrides: list[str], items: list[BatchItem], out: Path,
           quiet: bool) -> int:
    from tqdm import tqdm

    root, pipeline, command = state.root, state.data["pipeline"], state.data["command"]
    specs: dict[str, ItemSpec] = {}
    pending: deque[str] = deque()
    for item in items:
        key = item_key(pipeline, overrides, item)
        before = state.previous.get(item.name, {})
        entry = {"input": item.input, "overrides": list(item.overrides), "status": PENDING,
                 "attempts": before.get("attempts", 0) if before.get("key") == key else 0, "key": key,
                 "run_dir": str(root / item.name), "error": None}
        if before.get("key") == key and before.get("status") == DONE and _finished(root / item.name):
            entry.update({k: before.get(k) for k in ("status", "wall_s", "peak_rss_mb", "metrics", "exports", "ended",
                                                                 "host", "pid", "job_id") if k in before},
                         skipped=True)
        else:
            pending.append(item.name)
        state.data["items"][item.name] = entry
        specs[item.name] = {
            "pipeline": pipeline, "item": item.name, "out": str(out),
            "overrides": [*overrides, *item.overrides, f"input={item.input}", f"run={root.name}/{item.name}", f"out={out}"],
            "threads": cfg.cpus_per_item, "busy_wait_s": cfg.timeout_s or 3600.0,
            "mem_gb": cfg.mem_gb_per_item if cfg.executor == "local" else None,  # ray / slurm enforce their own
        }
    state.save()
    skipped = len(items) - len(pending)
    if skipped:
        print(f"{skipped} of {len(items)} items finished before: skipped", file=sys.stderr)
    bar = tqdm(total=len(items), initial=skipped, desc=f"{pipeline} batch", unit="item", disable=quiet, file=sys.stderr)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous_handler = signal.signal(signal.SIGTERM, interrupt)
    tries = dict.fromkeys(specs, 0)  # attempts in this invocation (retries=); the entry counts them all
    try:
        while pending or _in_flight(state):
            take = min(len(pending), max(0, executor.capacity()))
            if take:
                batch = [pending.popleft() for _ in range(take)]
                for name in batch:
                    tries[name] += 1
                    state.item(name).update(status=RUNNING, started=now_iso(), error=None,
                                            attempts=state.item(name)["attempts"] + 1)
                state.save()
                executor.submit([specs[n] for n in batch])
            for spec, result in executor.poll(POLL_S):
                name = spec["item"]
                entry = state.item(name)
                if result["status"] == FAILED and tries[name] <= cfg.retries:
                    log.warning("item %s failed (attempt %d): %s; retrying", name, entry["attempts"], result["error"])
                    entry.update(status=PENDING, error=result["error"])
                    pending.append(name)
                else:
                    _record(entry, result)
                    bar.update(1)
                    if result["status"] != DONE:
                        bar.write(f"item {name} {result['status']}: {result['error']}", file=sys.stderr)
                bar.set_postfix(failed=state.summary()[FAILED])
                state.save()
    except KeyboardInterrupt:
        for spec, result in executor.stop_all():
            _record(state.item(spec["item"]), {**result, "status": INTERRUPTED})
        for name, entry in state.data["items"].items():
            if entry["status"] in (RUNNING, PENDING):
                entry["status"] = INTERRUPTED
        state.save()
        bar.close()
        print(f"interrupted; resume with: {command}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    bar.close()
    state.save()
    print(format_summary(state.data), file=sys.stderr)
    counts = state.summary()
    unfinished = counts["items"] - counts[DONE]
    if unfinished:
        what = f"{counts[FAILED]} of {counts['items']} items failed" + (
            f", {counts[INTERRUPTED]} were interrupted" if counts[INTERRUPTED] else "")
        print(f"error: {what} (errors in {root / CSV_FILE}); fix them and re-run the same command to retry"
              f" only those: {command}", file=sys.stderr)
        return 1
    print(f"done: {root}")
    return 0


def _in_flight(state: BatchState) -> bool:
    return any(e["status"] == RUNNING for e in state.data["items"].values())


def _record(entry: dict[str, Any], result: ItemResult) -> None:
    entry.update(status=result["status"], error=result.get("error"), wall_s=result.get("wall_s"),
                 peak_rss_mb=result.get("peak_rss_mb"), metrics=result.get("metrics") or {},
                 exports=result.get("exports", 0), ended=now_iso(), skipped=False)
    for key in ("host", "pid", "job_id"):
        if result.get(key) is not None:
            entry[key] = result[key]


def format_summary(data: dict[str, Any]) -> str:
    """The table printed at the end: counts, then every item (or only the failed ones of a large batch)."""
    counts = count_items(data)
    items = data["items"]
    lines = [f"{data['pipeline']} batch '{data['batch']}': {counts[DONE]} done"
             f" ({counts['skipped']} finished before), {counts[FAILED]} failed, {counts['items']} items"]
    shown = items if len(items) <= SUMMARY_ROWS else {k: v for k, v in items.items() if v["status"] != DONE}
    if shown:
        metric_keys = _metric_keys(data, shown.values())[:4]
        width = max(4, *(len(n) for n in shown))
        lines.append(f"{'item':<{width}}  {'status':<11} {'tries':>5} {'wall s':>8} {'peak MB':>8}  "
                     + "  ".join(f"{k:>10}" for k in metric_keys))
        for name, e in shown.items():
            metrics = e.get("metrics") or {}
            wall = e.get("wall_s")
            peak = e.get("peak_rss_mb")
            lines.append(f"{name:<{width}}  {e['status']:<11} {e.get('attempts', 0):>5} "
                         f"{'' if wall is None else f'{wall:.1f}':>8} {'' if peak is None else f'{peak:.0f}':>8}  "
                         + "  ".join(f"{_cell(metrics.get(k)):>10}" for k in metric_keys))
            if e.get("error"):
                lines.append(f"{'':<{width}}  error: {e['error']}")
    return "\n".join(lines)


def inspect_batch(root: Path) -> str:
    """``layerforge inspect <batch folder>``: the summary table, items still marked running shown
    as interrupted when nobody holds the batch, and the command that resumes it."""
    import json

    data = json.loads((root / BATCH_FILE).read_text())
    live = RunLock(root).holder() is not None
    for entry in data.get("items", {}).values():
        if entry["status"] in (RUNNING, PENDING) and not live:
            entry["status"] = INTERRUPTED
    text = format_summary(data)
    if any(e["status"] != DONE for e in data.get("items", {}).values()) and data.get("command"):
        text += f"\n{'running now' if live else 'resume with'}: {data['command']}"
    return text
