"""The ``bsp`` pipeline: BSP-Net convex decomposition.

    prepare  -> mesh(es) normalised to bbox diagonal 1, inside/outside by winding number,
                64^3 voxels and IM-NET point samples (cached per mesh and config)
    fit      -> one learnable code per shape, network optimised on those shapes, or
    train    -> the auto-encoder over a folder of meshes, or
    infer    -> a trained checkpoint applied to new meshes
    extract  -> exact convex polyhedra per shape
    evaluate -> CD / NC / ECD / counts against the input (metrics.json)
    export   -> GLB, OBJ, USD, .blend (one part per convex) + preview.png, in the input's units

The math lives in :mod:`layerforge.models.bsp`; this module only wires stages.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from layerforge.assets.atomic import atomic_path, atomic_write_bytes, atomic_write_json
from layerforge.errors import InputError
from layerforge.pipelines.engine import INPUT, Stage, StageContext
from layerforge.pipelines.rundir import sha256_json, sha256_path

MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".stl", ".off")


def _mesh_files(src: Path) -> list[Path]:
    if src.is_file():
        if src.suffix.lower() not in MESH_SUFFIXES:
            raise InputError(f"{src} is not a mesh file", f"pass one of {', '.join(MESH_SUFFIXES)}")
        return [src]
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in MESH_SUFFIXES)
    if not files:
        raise InputError(f"{src} holds no mesh files", f"put {', '.join(MESH_SUFFIXES)} files in it")
    return files


def _load_shapes(folder: Path) -> list[dict[str, np.ndarray]]:
    return [dict(np.load(p)) for p in sorted(folder.glob("*.npz"))]


# ---- prepare --------------------------------------------------------------------------
def prepare(ctx: StageContext) -> None:
    from layerforge.assets.mesh_io import read_mesh
    from layerforge.models.bsp.data import prepare_shape

    cfg = ctx.cfg.prepare
    files = _mesh_files(ctx.input(INPUT))
    out = ctx.output("shapes")
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(str(ctx.cfg.out)) / ".cache" / "bsp_prepare"
    cfg_hash = sha256_json({k: v for k, v in dict(cfg).items()})[:16]
    names: set[str] = set()
    for index, path in enumerate(ctx.progress(files, desc="voxelise")):
        name = path.stem if path.stem not in names else f"{path.stem}_{index}"
        names.add(name)
        cached = cache / f"{sha256_path(path)[:32]}_{cfg_hash}.npz"
        if not cached.exists():
            mesh = read_mesh(path)
            data = prepare_shape(
                mesh.vertices,
                mesh.faces,
                voxel_resolution=int(cfg.voxel_resolution),
                point_counts={int(k): int(v) for k, v in cfg.point_counts.items()},
                winding_threshold=float(cfg.winding_threshold),
                surface_samples=int(cfg.surface_samples),
                seed=ctx.seed,
                source=str(path),
            )
            with atomic_path(cached) as tmp:
                np.savez_compressed(tmp, **data)
        target = out / f"{name}.npz"
        shutil.copyfile(cached, target)
    ctx.record(shapes=len(files))


# ---- fit / train / infer --------------------------------------------------------------
def _save_model(ctx: StageContext, model: torch.nn.Module, extra: dict) -> None:
    with atomic_path(ctx.output("model", ".pt")) as tmp:
        torch.save({"state_dict": model.state_dict(), "model_cfg": dict(ctx.cfg.model), **extra}, tmp)


def _optimise(ctx: StageContext, model: torch.nn.Module, shapes: list[dict], section: str, encoder: bool) -> None:
    from layerforge.models.bsp.training import make_optimizer, sample_batch, train_step

    cfg = ctx.cfg[section]
    optim = make_optimizer(model, lr=float(cfg.lr), beta1=float(cfg.beta1))
    gen = torch.Generator().manual_seed(ctx.seed)
    batch_shapes = int(cfg.get("shapes_per_batch", len(shapes)))
    for i, entry in enumerate(cfg.schedule):
        phase, res, steps = int(entry.phase), int(entry.resolution), int(entry.steps)
        loop = ctx.loop(
            total=steps,
            state={"model": model, "optim": optim, "gen": gen},
            every=int(cfg.checkpoint_every),
            subfolder=f"{i}_phase{phase}_{res}",
        )
        for _ in loop:
            batch = sample_batch(shapes, res, int(cfg.points_per_step), batch_shapes, gen, ctx.device, encoder)
            loop.log(**train_step(model, optim, batch, phase))
        ctx.record(**{f"{i}_phase{phase}_{res}_{k}": v for k, v in loop.last_scalars.items()})
    ctx.record(final_phase=int(cfg.schedule[-1].phase))


def fit(ctx: StageContext) -> None:
    from layerforge.models.bsp.network import BSPNet

    shapes = _load_shapes(ctx.input("shapes"))
    model = BSPNet(**ctx.cfg.model, num_codes=len(shapes)).to(ctx.device)
    _optimise(ctx, model, shapes, "fit", encoder=False)
    _save_model(ctx, model, {"mode": "fit", "phase": int(ctx.cfg.fit.schedule[-1].phase)})


def train(ctx: StageContext) -> None:
    from layerforge.models.bsp.network import BSPNet

    shapes = _load_shapes(ctx.input("shapes"))
    model = BSPNet(**ctx.cfg.model).to(ctx.device)
    _optimise(ctx, model, shapes, "train", encoder=True)
    _save_model(ctx, model, {"mode": "train", "phase": int(ctx.cfg.train.schedule[-1].phase)})


def infer(ctx: StageContext) -> None:
    from layerforge.models.bsp.network import BSPNet

    ckpt_path = ctx.cfg.infer.checkpoint
    if not ckpt_path or not Path(str(ckpt_path)).is_file():
        raise InputError(
            f"infer mode needs a trained model, got infer.checkpoint={ckpt_path}",
            "pass infer.checkpoint=outputs/bsp/<train-run>/stages/train/model.pt",
        )
    ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)
    if ckpt.get("mode") != "train":
        raise InputError(f"{ckpt_path} is a {ckpt.get('mode')}-mode model without an encoder", "use a train-mode model.pt")
    model = BSPNet(**ckpt["model_cfg"])
    model.load_state_dict(ckpt["state_dict"])
    with atomic_path(ctx.output("model", ".pt")) as tmp:
        torch.save({**ckpt, "mode": "infer"}, tmp)
    ctx.record(checkpoint=str(ckpt_path))


# ---- extract ----------------------------------------------------------------------------
def extract(ctx: StageContext) -> None:
    from layerforge.models.bsp.extract import extract_shape_convexes
    from layerforge.models.bsp.network import BSPNet

    cfg = ctx.cfg.extract
    ckpt = torch.load(ctx.input("model"), map_location="cpu", weights_only=False)
    model = BSPNet(**ckpt["model_cfg"], num_codes=len(ckpt["state_dict"].get("codes.weight", [])) or None)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    files = sorted(ctx.input("shapes").glob("*.npz"))
    out = ctx.output("convexes")
    out.mkdir(parents=True, exist_ok=True)
    counts = []
    for index, path in enumerate(ctx.progress(files, desc="convexes")):
        shape = dict(np.load(path))
        with torch.no_grad():
            code = model.code_for(index if ckpt["mode"] == "fit" else None, torch.from_numpy(shape["voxels"]))
            planes = model.planes(code)[0].cpu().numpy()
        convexes = extract_shape_convexes(
            model,
            code,
            planes,
            grid_resolution=int(cfg.grid_resolution),
            active_threshold=float(cfg.active_threshold),
            plane_threshold=float(cfg.plane_threshold),
            drop_inner=bool(cfg.drop_inner),
        )
        arrays = {}
        for i, (v, f) in enumerate(convexes):
            arrays[f"v{i}"], arrays[f"f{i}"] = v.astype(np.float32), f.astype(np.int64)
        with atomic_path(out / path.name) as tmp:
            np.savez_compressed(tmp, count=np.array(len(convexes)), **arrays)
        counts.append(len(convexes))
    ctx.record(convexes=counts if len(counts) > 1 else counts[0])


def _convexes(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    data = np.load(path)
    return [(data[f"v{i}"], data[f"f{i}"]) for i in range(int(data["count"]))]


# ---- evaluate ---------------------------------------------------------------------------
def evaluate(ctx: StageContext) -> None:
    from layerforge.models.metrics import bsp_metrics

    out = ctx.output("metrics", ".json")
    results = {}
    for path in sorted(ctx.input("convexes").glob("*.npz")):
        shape = dict(np.load(ctx.input("shapes") / path.name))
        parts = _convexes(path)
        results[path.stem] = bsp_metrics(parts, shape["surface_points"], shape["surface_normals"], int(ctx.cfg.evaluate.samples), ctx.seed)
    atomic_write_json(out, results)
    if len(results) == 1:
        ctx.record(**next(iter(results.values())))
    else:
        ctx.record(**{f"mean_{k}": float(np.mean([r[k] for r in results.values()])) for k in ("cd", "nc", "ecd", "convexes")})


# ---- export -----------------------------------------------------------------------------
def _palette(n: int) -> np.ndarray:
    """[n, 3] distinct, saturated linear colours (golden-ratio hues)."""
    import colorsys

    return np.array([colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95) for i in range(n)], np.float32) ** 2.2


def export(ctx: StageContext) -> None:
    from layerforge.assets.export import export_asset
    from layerforge.assets.mesh_io import read_mesh
    from layerforge.assets.types import LayeredAsset, Material, Mesh, Part, texture_to_png
    from layerforge.renderers.preview import render_asset_views, side_by_side

    cfg = ctx.cfg.export
    staged = ctx.folder / "staged"
    metrics = json.loads(ctx.input("metrics").read_text())
    originals = {p.stem: p for p in _mesh_files(ctx.input(INPUT))}
    previews = []
    for path in sorted(ctx.input("convexes").glob("*.npz")):
        shape = np.load(ctx.input("shapes") / path.name)
        centre, scale = shape["centre"].astype(np.float64), float(shape["scale"])
        parts = []
        colors = _palette(int(np.load(path)["count"]))
        for i, (v, f) in enumerate(_convexes(path)):
            world = (v.astype(np.float64) / scale + centre).astype(np.float32)  # back to the input's units
            mat = Material(f"convex_{i:03d}", base_color=colors[i], roughness=0.6)
            parts.append(Part(f"convex_{i:03d}", Mesh(world, f, material=mat), metadata={"convex": i}))
        asset = LayeredAsset(path.stem, parts, metadata={"method": "BSP-Net", **metrics.get(path.stem, {})})
        export_asset(asset, staged, path.stem, formats=tuple(cfg.formats))
        if path.stem in originals:
            original = read_mesh(originals[path.stem])
            original.material = Material("input", base_color=[0.7, 0.7, 0.72])
            ref = LayeredAsset("input", [Part("input", original)])
            lo, hi = original.bounds()
            frame = dict(center=(lo + hi) / 2, radius=float(np.linalg.norm(hi - lo) / 2), size=int(cfg.preview_size))
            previews.append(side_by_side(render_asset_views(ref, **frame), render_asset_views(asset, **frame)))
    atomic_write_json(staged / "metrics.json", metrics)
    if previews:
        image = texture_to_png(side_by_side(*previews), srgb=True)
        atomic_write_bytes(staged / "preview.png", image)
        atomic_write_bytes(ctx.preview_path("preview.png"), image)
    ctx.publish(staged)


STAGES = {
    "prepare": Stage("prepare", prepare, needs=(INPUT,), makes=("shapes",), description="voxelise and sample the input mesh(es)"),
    "fit": Stage("fit", fit, needs=("shapes",), makes=("model",), config_keys=("model", "fit"), description="optimise BSP-Net on the shape(s)"),
    "train": Stage("train", train, needs=("shapes",), makes=("model",), config_keys=("model", "train"), description="train the auto-encoder"),
    "infer": Stage("infer", infer, needs=("shapes",), makes=("model",), config_keys=("infer",), description="apply a trained model"),
    "extract": Stage("extract", extract, needs=("model", "shapes"), makes=("convexes",), description="convex polyhedra from planes"),
    "evaluate": Stage("evaluate", evaluate, needs=("convexes", "shapes"), makes=("metrics",), description="CD, NC, ECD, counts"),
    "export": Stage("export", export, needs=(INPUT, "convexes", "shapes", "metrics"), config_keys=("export",), description="GLB/OBJ/USD/.blend + preview"),
}
