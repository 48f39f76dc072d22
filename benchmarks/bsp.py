"""BSP-Net quality and speed, measured in one run; prints a table (and --markdown for RESULTS.md).

    python benchmarks/bsp.py [--shapes chair,bunny,cow,bone] [--quick] [--markdown]

Rows:
- fit mode (the `bsp` config, CPU sizes) on the bundled chair and on real scanned meshes
  none of us made (the Stanford bunny and others shipped inside the pymeshlab wheel):
  Chamfer distance (bbox diagonal 1), normal consistency, edge CD, #convexes, wall time.
  Target: CD <= 0.0015 with <= 128 convexes within 600 s on a 2-core CPU.
- extraction of 256 convexes from random planes (target < 1 s on CPU).
- on a GPU: paper-config training throughput (shapes/s) and the fit wall time there.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from layerforge.pipelines import registry  # noqa: E402
from layerforge.pipelines.engine import Engine  # noqa: E402
from layerforge.pipelines.rundir import RunDir  # noqa: E402


def scanned_meshes() -> dict[str, Path]:
    """Real meshes that ship inside installed wheels (no downloads)."""
    import pymeshlab

    root = Path(pymeshlab.__file__).parent / "tests" / "sample_meshes"
    found = {"chair": REPO / "layerforge" / "data" / "chair.obj"}
    for name, file in (("bunny", "bunny10k_textured.obj"), ("cow", "cow.obj"), ("bone", "bone.ply"), ("airplane", "airplane.obj")):
        if (root / file).exists():
            found[name] = root / file
    return found


def fit_row(name: str, path: Path, out: Path, config: str, overrides: list[str]) -> dict:
    cfg = registry.load_config(config, [f"input={path}", f"out={out}", f"run={name}", "quiet=true", *overrides])
    engine = Engine(registry.build(cfg), cfg, RunDir.open(out / cfg.pipeline.name / name, cfg.pipeline.name), path)
    t0 = time.perf_counter()
    engine.run()
    wall = time.perf_counter() - t0
    stages = engine.run_dir.stages
    m = stages["evaluate"]["metrics"]
    return {
        "shape": name,
        "cd": m["cd"],
        "nc": m["nc"],
        "ecd": m["ecd"],
        "convexes": m["convexes"],
        "faces": m["faces"],
        "fit_s": stages[str(cfg.mode)]["wall_s"],
        "total_s": wall,
        "device": str(engine.run_dir.manifest["device"]),
    }


def extraction_row(n_convexes: int = 256, planes_per_convex: int = 12, seed: int = 0) -> dict:
    """Time exact polyhedra from random bounded convexes (planes tangent to a small sphere)."""
    from layerforge.models.bsp.extract import convexes_from_planes

    rng = np.random.default_rng(seed)
    p = n_convexes * planes_per_convex
    normals = rng.normal(size=(p, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    centres = rng.uniform(-0.3, 0.3, size=(n_convexes, 3)).repeat(planes_per_convex, 0)
    radius = rng.uniform(0.03, 0.12, size=(n_convexes, 1)).repeat(planes_per_convex, 0)
    # plane n.x + d = 0 with the convex's centre on the inside (n.c + d < 0)
    d = -(normals * centres).sum(1, keepdims=True) - radius
    planes = np.concatenate([normals, d], axis=1).astype(np.float32)
    membership = np.zeros((p, n_convexes), bool)
    membership[np.arange(p), np.arange(p) // planes_per_convex] = True
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        convexes = convexes_from_planes(planes, membership)
        times.append(time.perf_counter() - t0)
    return {"convexes": len(convexes), "median_s": float(np.median(times))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="chair,bunny,cow,bone")
    ap.add_argument("--config", default="bsp")
    ap.add_argument("--quick", action="store_true", help="short schedule (smoke test of the benchmark itself)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    overrides = ["fit.schedule=[{phase: 0, resolution: 16, steps: 20}, {phase: 1, resolution: 16, steps: 20}]"] if args.quick else []
    meshes = scanned_meshes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes.split(","):
            if name not in meshes:
                print(f"skip {name}: not available", file=sys.stderr)
                continue
            rows.append(fit_row(name, meshes[name], Path(tmp), args.config, overrides))
            print(json.dumps(rows[-1]), file=sys.stderr)
    ext = extraction_row()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln), platform.processor())
    print(f"# BSP-Net benchmark ({args.config}{', quick' if args.quick else ''}) on {cpu}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    print("| shape | CD (x1e-3) | NC | ECD (x1e-3) | #convexes | #faces | fit s | total s | device | CD <= 1.5e-3 & <= 128 convexes & <= 600 s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ok = r["cd"] <= 0.0015 and r["convexes"] <= 128 and r["total_s"] <= 600
        print(
            f"| {r['shape']} | {r['cd'] * 1e3:.3f} | {r['nc']:.3f} | {r['ecd'] * 1e3:.3f} | {r['convexes']} | {r['faces']} "
            f"| {r['fit_s']:.0f} | {r['total_s']:.0f} | {r['device']} | {'yes' if ok else 'NO'} |"
        )
    print(f"\nextraction of {ext['convexes']} convexes: {ext['median_s'] * 1e3:.1f} ms (median of 5; target < 1000 ms)")


if __name__ == "__main__":
    main()
