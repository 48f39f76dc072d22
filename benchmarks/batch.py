"""``layerforge batch``: per-item overhead of each executor with a trivial pipeline (items/s).

The pipeline is ``mesh_report`` (read a 12-triangle cube, measure it, write report.json): the
item's own work is milliseconds, so what is timed is what a batch adds per item. Every row
runs the same N items (one list.txt naming the cube N times) in a fresh output folder, as a
user types it (``python -m layerforge.cli batch ...`` in a subprocess), side by side in one run:

- in-process: ``run_item`` called N times in a loop in this process (no executor, no batch
  files): the floor, what an ordinary run costs once the interpreter has imported everything;
- local: one forked process per item (``max_parallel`` at once);
- ray: a local Ray started by the command (its start-up is in the wall time and printed
  apart), Ray tasks of one CPU;
- slurm (local): submitit's local executor, one job (a fresh interpreter) per item: what each
  SLURM job pays on top of the cluster's own scheduling latency.

Columns: wall seconds of the command, start-up (command start to the first item's start, read
from batch.json), items/s over the whole command and over the items only (after start-up),
the mean of the items' own wall (``wall_s`` in batch.json: the run inside the worker), and the
per-item overhead = (items-only wall x parallel / N) - mean item wall.

    python benchmarks/batch.py            # N=24, max_parallel=2 (about 3 minutes on 2 cores)
    python benchmarks/batch.py --items 8  # quicker
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _cube(folder: Path, n: int) -> Path:
    import trimesh

    trimesh.creation.box(extents=(1.0, 0.5, 0.25)).export(folder / "cube.obj")
    listing = folder / "items.txt"
    listing.write_text("cube.obj\n" * n)
    return listing


def _in_process(listing: Path, out: Path) -> dict[str, float]:
    from layerforge.pipelines.batch_item_run import run_item
    from layerforge.pipelines.batch_items import collect_items, folder_items

    items = collect_items(str(listing), out, folder_items("layerforge.pipelines.mesh_report"))
    run_item({"pipeline": "mesh_report", "item": "warm", "overrides": [f"input={items[0].input}", "run=warm/warm",
                                                                       f"out={out}", "quiet=true"]})  # imports
    t0 = time.perf_counter()
    walls = []
    for item in items:
        rec = run_item({"pipeline": "mesh_report", "item": item.name,
                        "overrides": [f"input={item.input}", f"run=inproc/{item.name}", f"out={out}", "quiet=true"]})
        assert rec["status"] == "done", rec
        walls.append(rec["wall_s"])
    wall = time.perf_counter() - t0
    return {"wall": wall, "startup": 0.0, "items_wall": wall, "item_mean": sum(walls) / len(walls), "parallel": 1}


def _command(listing: Path, out: Path, executor: list[str], parallel: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "layerforge.cli", "batch", "mesh_report", f"inputs={listing}", f"out={out}",
           "batch=b", f"max_parallel={parallel}", *executor, "--quiet"]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(executor)} failed:\n{proc.stderr[-2000:]}")
    state = json.loads((out / "mesh_report" / "b" / "batch.json").read_text())
    items = list(state["items"].values())
    starts = [dt.datetime.strptime(e["started"], "%Y-%m-%dT%H:%M:%S%z").timestamp() for e in items]
    startup = max(0.0, min(starts) - t0)
    return {"wall": wall, "startup": startup, "items_wall": wall - startup,
            "item_mean": sum(e["wall_s"] for e in items) / len(items), "parallel": parallel}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=24)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], help="rows to leave out: local ray slurm")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        listing = _cube(tmp_path, args.items)
        rows.append(("in-process loop", _in_process(listing, tmp_path / "inproc")))
        for name, executor in (("local (fork per item)", ["executor=local"]), ("ray (local cluster)", ["executor=ray"]),
                               ("slurm (submitit local)", ["executor=slurm", "slurm.cluster=local"])):
            if name.split()[0] in args.skip:
                continue
            rows.append((name, _command(listing, tmp_path / name.split()[0], executor, args.parallel)))
    n = args.items
    print(f"# layerforge batch, {n} mesh_report items, max_parallel={args.parallel}, {os.cpu_count()} CPU cores")
    print(f"| executor | wall s | start-up s | items/s (all) | items/s (after start-up) | item's own s | overhead s/item |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        overhead = r["items_wall"] * r["parallel"] / n - r["item_mean"]
        print(f"| {name} | {r['wall']:.1f} | {r['startup']:.1f} | {n / r['wall']:.2f} | {n / r['items_wall']:.2f} "
              f"| {r['item_mean']:.3f} | {overhead:.3f} |")


if __name__ == "__main__":
    main()
