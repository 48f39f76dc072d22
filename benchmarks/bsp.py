"""BSP-Net quality and speed, measured in one run; prints markdown tables (benchmarks/RESULTS.md).

    python benchmarks/bsp.py [--shapes chair,bunny,cow,bone,airplane] [--quick] [--paper-init] [overrides ...]

Rows:
- fit mode (the `bsp` config, CPU sizes) on the bundled chair and on real scanned meshes
  none of us made (the Stanford bunny and others shipped inside the pymeshlab wheel):
  Chamfer distance (bbox diagonal 1), normal consistency, edge CD, #convexes, wall time.
  Target: CD <= 0.0015 with <= 128 convexes within 600 s on a 2-core CPU.
- extraction of 256 convexes from random planes (target < 1 s on CPU), beside the original
  algorithm (plane-by-plane polygon clipping, pure Python) on the same planes.
- paper-config auto-encoder training throughput (shapes/s): batch 24 on a GPU when CUDA is
  present (and the fit rows then run there too, device=auto), batch 2 on the CPU otherwise.
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

from layerforge.errors import LayerforgeError  # noqa: E402
from layerforge.pipelines import registry  # noqa: E402
from layerforge.pipelines.engine import Engine  # noqa: E402
from layerforge.pipelines.rundir import RunDir  # noqa: E402


def scanned_meshes() -> dict[str, Path]:
    """Real meshes that ship inside installed wheels (no downloads)."""
    import importlib.util

    # located, not imported: pymeshlab's bundled Embree would stop bpy (the .blend export) from loading
    spec = importlib.util.find_spec("pymeshlab")
    root = Path(spec.origin).parent / "tests" / "sample_meshes" if spec and spec.origin else Path("/nonexistent")
    found = {"chair": REPO / "layerforge" / "data" / "chair.obj"}
    for name, file in (("bunny", "bunny10k_textured.obj"), ("cow", "cow.obj"), ("bone", "bone.ply"), ("airplane", "airplane.obj")):
        if (root / file).exists():
            found[name] = root / file
    return found


def fit_row(name: str, path: Path, out: Path, config: str, overrides: list[str]) -> dict:
    cfg = registry.load_config(config, [f"input={path}", f"out={out}", f"run={name}", "quiet=true", *overrides])
    engine = Engine(registry.build(cfg), cfg, RunDir.open(out / cfg.pipeline.name / name, cfg.pipeline.name), path)
    t0 = time.perf_counter()
    try:
        engine.run()
    except LayerforgeError as err:  # e.g. nothing to export: the row still reports the fit
        print(f"{name}: {err}", file=sys.stderr)
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


# ---- reference: the original extraction algorithm, in plain Python, for timing only -------
def _clip_polygon(poly: list, plane: tuple, eps: float = 1e-5) -> list:
    """Keep the part of a convex polygon (list of xyz tuples) where a x + b y + c z + d <= 0."""
    a, b, c, d = plane
    dist = [a * x + b * y + c * z + d for x, y, z in poly]
    out = []
    for i, (p, dp) in enumerate(zip(poly, dist)):
        q, dq = poly[(i + 1) % len(poly)], dist[(i + 1) % len(poly)]
        if dp <= eps:
            out.append(p)
        if (dp < -eps and dq > eps) or (dp > eps and dq < -eps):
            t = dp / (dp - dq)
            out.append(tuple(pi + t * (qi - pi) for pi, qi in zip(p, q)))
    return out if len(out) >= 3 else []


def _plane_square(plane: tuple, half: float = 1.0) -> list:
    """A square on the plane spanning the box [-half, half]^3 along its dominant axis."""
    n = plane[:3]
    axis = max(range(3), key=lambda k: abs(n[k]))
    u, v = [k for k in range(3) if k != axis]
    corners = []
    for su, sv in ((-1, -1), (-1, 1), (1, 1), (1, -1)):
        pt = [0.0, 0.0, 0.0]
        pt[u], pt[v] = su * half, sv * half
        pt[axis] = -(n[u] * pt[u] + n[v] * pt[v] + plane[3]) / n[axis]
        corners.append(tuple(pt))
    return corners


def clipping_baseline(planes: np.ndarray, T: np.ndarray, bound: float, weld: float = 1e-4) -> list[np.ndarray]:
    """Vertices of each convex the way the authors' Python ``bspt`` builds them.

    Per convex: start from the faces of the box [-bound, bound]^3; for each of its planes, clip
    every face by the plane and clip a large square on the plane by every earlier plane;
    then merge vertices closer than ``weld`` (L1) by an all-pairs scan. Our implementation
    of that algorithm (not the authors' code), used only to time ours against it.
    """
    b = float(bound)
    box = [(1.0, 0, 0, -b), (-1.0, 0, 0, -b), (0, 1.0, 0, -b), (0, -1.0, 0, -b), (0, 0, 1.0, -b), (0, 0, -1.0, -b)]
    result = []
    for i in range(T.shape[1]):
        own = [tuple(map(float, row)) for row in planes[T[:, i] > 0.01]]
        faces = [(pl, _plane_square(pl, half=b)) for pl in box]
        for k, pl in enumerate(box):  # the box faces, clipped to each other
            poly = faces[k][1]
            for other in box:
                if other is not pl:
                    poly = _clip_polygon(poly, other)
            faces[k] = (pl, poly)
        for pl in own:
            faces = [(f_pl, clipped) for f_pl, poly in faces if (clipped := _clip_polygon(poly, pl))]
            poly = _plane_square(pl, half=4 * b)
            for f_pl, _ in faces:
                poly = _clip_polygon(poly, f_pl)
                if not poly:
                    break
            if poly:
                faces.append((pl, poly))
        welded: list = []
        for _, poly in faces:
            for p in poly:
                if not any(abs(p[0] - q[0]) + abs(p[1] - q[1]) + abs(p[2] - q[2]) < weld for q in welded):
                    welded.append(p)
        if len(faces) >= 4:
            result.append(np.array(welded))
    return result


def extraction_row(n_convexes: int = 256, planes_per_convex: int = 12, seed: int = 0, repeats: int = 5) -> dict:
    """Time exact polyhedra from random bounded convexes (planes tangent to a small sphere)."""
    from layerforge.models.bsp.extract import extract_convexes

    rng = np.random.default_rng(seed)
    p = n_convexes * planes_per_convex
    normals = rng.normal(size=(p, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    centres = rng.uniform(-0.3, 0.3, size=(n_convexes, 3)).repeat(planes_per_convex, 0)
    radius = rng.uniform(0.03, 0.12, size=(n_convexes, 1)).repeat(planes_per_convex, 0)
    # plane n.x + d = 0 with the convex's centre on the inside (n.c + d < 0)
    d = -(normals * centres).sum(1, keepdims=True) - radius
    planes = np.concatenate([normals, d], axis=1).astype(np.float32)
    T = np.zeros((p, n_convexes), np.float32)
    T[np.arange(p), np.arange(p) // planes_per_convex] = 1.0
    from layerforge.models.bsp.extract import BOUND, convex_inside_cells, select_convexes

    times, poly_times, ref_times = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        convexes = extract_convexes(planes, T)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        kept = select_convexes(convex_inside_cells(planes.astype(np.float64), T))
        poly_times.append(times[-1] - (time.perf_counter() - t0))  # ours without the 64^3 selection
    for _ in range(max(1, repeats // 2)):
        t0 = time.perf_counter()
        reference = clipping_baseline(planes, T[:, kept], bound=BOUND)
        ref_times.append(time.perf_counter() - t0)
    # the two algorithms must agree: same convexes, same bounding boxes
    assert len(reference) == len(convexes)
    err = max(np.abs(r.min(0) - c.vertices.min(0)).max() + np.abs(r.max(0) - c.vertices.max(0)).max() for r, c in zip(reference, convexes))
    return {
        "convexes": len(convexes),
        "median_s": float(np.median(times)),
        "polyhedra_s": float(np.median(poly_times)),
        "reference_s": float(np.median(ref_times)),
        "bbox_err": float(err),
    }

def throughput_row(device: str, batch: int, steps: int, phase: int = 0) -> dict:
    """Paper-config auto-encoder training speed: shapes per second through ``train_step``.

    Random 64^3 voxels and 4096 point-value pairs per shape (speed does not depend on the
    data); ``batch`` shapes per step (paper: 24); median over ``steps`` timed steps.
    """
    from layerforge.models.bsp.network import BSPConfig, BSPNet
    from layerforge.models.bsp.training import make_optimizer, train_step

    torch.manual_seed(0)
    model = BSPNet(BSPConfig()).to(device)  # paper sizes: p 4096, c 256, ef 32, z 256
    optim = make_optimizer(model)
    data = {
        "voxels": (torch.rand(batch, 1, 64, 64, 64, device=device) > 0.7).float(),
        "points": torch.rand(batch, 4096, 3, device=device) - 0.5,
        "values": (torch.rand(batch, 4096, device=device) > 0.5).float(),
    }
    times = []
    for i in range(steps + 1):  # the first step warms up (cuDNN autotune, allocator)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(model, optim, data, phase)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    return {"device": device, "batch": batch, "phase": phase, "step_s": step_s, "shapes_per_s": batch / step_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="chair,bunny,cow,bone,airplane")
    ap.add_argument("--config", default="bsp")
    ap.add_argument("--quick", action="store_true", help="short schedule (smoke test of the benchmark itself)")
    ap.add_argument("--paper-init", action="store_true", help="add a chair row fitted from the paper's random init")
    ap.add_argument("--no-extraction", action="store_true", help="skip the extraction timing table")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every fit, e.g. model.c=128")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    overrides = ["fit.schedule=[{phase: 0, resolution: 16, steps: 20}, {phase: 1, resolution: 16, steps: 20}]"] if args.quick else []
    overrides += args.overrides
    meshes = scanned_meshes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes.split(","):
            if name not in meshes:
                print(f"skip {name}: not available", file=sys.stderr)
                continue
            rows.append(fit_row(name, meshes[name], Path(tmp), args.config, overrides))
            print(json.dumps(rows[-1]), file=sys.stderr)
        if args.paper_init and "chair" in meshes:
            # the same schedule from the paper's init: random network, every weight trained at the paper's lr
            paper = ["fit.init=random", "fit.planes_only=false", "model.p=4096", "fit.lr=0.0001", "fit.lr_tw=0.0001"]
            rows.append(fit_row("chair_paper_init", meshes["chair"], Path(tmp), args.config, overrides + paper))
            print(json.dumps(rows[-1]), file=sys.stderr)
    throughput = [throughput_row("cuda", 24, 20)] if torch.cuda.is_available() else [throughput_row("cpu", 2, 2)]
    extraction = [] if args.no_extraction else [(k, extraction_row(planes_per_convex=k)) for k in (12, 26, 48)]
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln), platform.processor())
    print(f"# BSP-Net benchmark ({' '.join([args.config, *args.overrides])}{', quick' if args.quick else ''}) on {cpu}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    print("| shape | CD (x1e-3) | NC | ECD (x1e-3) | #convexes | #faces | fit s | total s | device | CD <= 1.5e-3 & <= 128 convexes & <= 600 s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if not r["convexes"]:
            print(f"| {r['shape']} | - | - | - | 0 | 0 | {r['fit_s']:.0f} | {r['total_s']:.0f} | {r['device']} | NO |")
            continue
        ecd = "-" if r["ecd"] is None else f"{r['ecd'] * 1e3:.3f}"
        ok = r["cd"] <= 0.0015 and r["convexes"] <= 128 and r["total_s"] <= 600
        print(
            f"| {r['shape']} | {r['cd'] * 1e3:.3f} | {r['nc']:.3f} | {ecd} | {r['convexes']} | {r['faces']} "
            f"| {r['fit_s']:.0f} | {r['total_s']:.0f} | {r['device']} | {'yes' if ok else 'NO'} |"
        )
    if extraction:
        print("\n| extraction of 256 convexes, median ms | ours: 64^3 selection + polyhedra (target < 1000) | ours: polyhedra only "
              "| original algorithm, pure Python (polygon clipping + all-pairs weld) | polyhedra speed-up | max bbox disagreement |")
        print("|---|---|---|---|---|---|")
        for k, ext in extraction:
            print(f"| {k} planes per convex | {ext['median_s'] * 1e3:.0f} | {ext['polyhedra_s'] * 1e3:.0f} | {ext['reference_s'] * 1e3:.0f} "
                  f"| {ext['reference_s'] / ext['polyhedra_s']:.1f}x | {ext['bbox_err']:.1e} |")
    print("\n| paper-config training (phase 0, 4096 points per shape) | batch | s/step | shapes/s |")
    print("|---|---|---|---|")
    for t in throughput:
        print(f"| {t['device']} | {t['batch']} | {t['step_s']:.3f} | {t['shapes_per_s']:.1f} |")


if __name__ == "__main__":
    main()
