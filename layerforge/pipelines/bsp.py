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

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from layerforge.assets.atomic import atomic_write_bytes, atomic_write_json
from layerforge.assets.frame import SCENE_FRAME_FILE, SceneFrame
from layerforge.assets.mesh_io import MESH_SUFFIXES
from layerforge.errors import ConfigError, InputError, OutputError
from layerforge.models.bsp.data import PreparedShape, frame_of, prepare_shape
from layerforge.models.bsp.extract import extract_convexes, load_convexes, load_extraction_stats, save_convexes
from layerforge.models.bsp.network import BSPConfig, BSPNet, load_model, save_model
from layerforge.pipelines.bsp_config import (
    EvaluateConfig,
    ExportConfig,
    ExtractConfig,
    FitConfig,
    InferConfig,
    ModelConfig,
    PrepareConfig,
    TrainConfig,
)
from layerforge.pipelines.context import StageContext
from layerforge.pipelines.rundir import sha256_json
from layerforge.pipelines.stage import INPUT, Stage

log = logging.getLogger("layerforge")



def _mesh_files(src: Path) -> list[Path]:
    if src.is_file():
        if src.suffix.lower() not in MESH_SUFFIXES:
            raise InputError(f"{src} is not a mesh file", f"pass one of {', '.join(MESH_SUFFIXES)}")
        return [src]
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in MESH_SUFFIXES)
    if not files:
        raise InputError(f"{src} holds no mesh files", f"put {', '.join(MESH_SUFFIXES)} files in it")
    # one object exported several ways (a run's export/: chair.glb, chair.obj, chair.usda) is read once
    rank = {suffix: i for i, suffix in enumerate(MESH_SUFFIX_PREFERENCE)}
    chosen: dict[tuple[Path, str], Path] = {}
    for p in files:
        key = (p.parent, p.stem)
        if key not in chosen or rank.get(p.suffix.lower(), len(rank)) < rank.get(chosen[key].suffix.lower(), len(rank)):
            chosen[key] = p
    for p in files:
        if chosen[(p.parent, p.stem)] != p:
            log.info("input: %s is another format of %s; reading that one", p.name, chosen[(p.parent, p.stem)].name)
    return sorted(chosen.values())


def batch_items(folder: Path) -> list[Path]:
    """The items of ``layerforge batch bsp inputs=<folder>``: every mesh in it (sub-folders too),
    one per object when an object is there in several formats (a run's export/)."""
    return _mesh_files(folder)


MESH_SUFFIX_PREFERENCE = (".glb", ".gltf", ".usdc", ".usd", ".usda", ".usdz", ".obj", ".ply", ".stl", ".off")
"""Which file of one object's several formats a folder input reads (most complete format first)."""


def _shape_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npz"))


def _shape_names(files: list[Path]) -> dict[Path, str]:
    """A unique shape name per input file: its stem, numbered when two files share one."""
    names: dict[Path, str] = {}
    for index, path in enumerate(files):
        names[path] = path.stem if path.stem not in names.values() else f"{path.stem}_{index}"
    return names


# ---- prepare --------------------------------------------------------------------------
def prepare(ctx: StageContext) -> None:
    from layerforge.assets.mesh_io import read_mesh, up_axis_rule

    cfg: PrepareConfig = ctx.typed("prepare")
    files = _mesh_files(ctx.input(INPUT))
    up_axis = str(ctx.cfg.input_up_axis)
    for suffix in sorted({p.suffix.lower() for p in files}):  # the axis rule, once per format
        log.info("input axes: %s", up_axis_rule(next(p for p in files if p.suffix.lower() == suffix), up_axis))
    out = ctx.output("shapes")
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(str(ctx.cfg.out)) / ".cache" / "bsp_prepare"
    key = sha256_json({"counts": cfg.point_counts, "seed": ctx.seed})[:16]
    names = _shape_names(files)

    def voxelise(path: Path) -> None:
        mesh = read_mesh(path, up_axis=up_axis)
        # keyed by the geometry as read (not the file's bytes), so a change of axis rule never reuses a stale shape
        geometry = hashlib.sha256(mesh.vertices.astype(np.float32).tobytes() + mesh.faces.astype(np.int64).tobytes())
        cached = cache / f"{geometry.hexdigest()[:32]}_{key}.npz"
        if not cached.exists():
            prepare_shape(mesh.vertices, mesh.faces, seed=ctx.seed, counts=cfg.point_counts).save(cached)
        shutil.copyfile(cached, out / f"{names[path]}.npz")

    done = ctx.each(files, voxelise, key=lambda p: p.name, desc="voxelise")
    ctx.record(shapes=len(done), bad_shapes=len(files) - len(done))


# ---- fit / train / infer --------------------------------------------------------------
def _model_config(ctx: StageContext, n_shapes: int) -> BSPConfig:
    m: ModelConfig = ctx.typed("model")
    p = m.p
    if p is None:
        fit: FitConfig | None = ctx.typed_cfg.get("fit")
        if fit is None or fit.init != "kdop":
            raise ConfigError("model.p is unset", "set model.p (the paper uses 4096) or use mode=fit with fit.init=kdop")
        p = 2 * fit.kdop_directions * m.c
    return BSPConfig(ef_dim=m.ef_dim, p=p, c=m.c, z_dim=m.z_dim, dec_dims=tuple(m.dec_dims), n_shapes=n_shapes)


def _optimise(ctx: StageContext, model: torch.nn.Module, shapes: list, cfg: FitConfig | TrainConfig, tag: str) -> None:
    """Run the config's phase/resolution schedule on ``model`` (one checkpointed optimise() call per entry)."""
    from layerforge.models.bsp.training import PhaseLoss, PointBatches, param_groups, stack_prepared
    from layerforge.pipelines.optimise import OptimiseConfig, Optimiser

    # one Optimiser across the schedule: Adam's moments and the batch generator carry over between phases
    optimiser = Optimiser(model, param_groups(model, cfg.lr, cfg.lr_tw, cfg.beta1), seed=ctx.seed)
    per_batch = getattr(cfg, "shapes_per_batch", len(shapes))
    for i, entry in enumerate(cfg.schedule):
        data = {k: v.to(ctx.device) for k, v in stack_prepared(shapes, entry.resolution).items()}
        sampler = PointBatches(data, cfg.points_per_step, per_batch, with_voxels=model.encoder is not None)
        name = f"{tag}{i}_phase{entry.phase}_{entry.resolution}"
        figures = optimiser.run(ctx, [PhaseLoss(entry.phase)], sampler,
                                OptimiseConfig(steps=entry.steps, checkpoint_every=cfg.checkpoint_every),
                                subfolder=name, desc=f"{tag}phase {entry.phase} @{entry.resolution}")
        ctx.record(**{f"{name}_{k}": v for k, v in figures.items()})


def fit(ctx: StageContext) -> None:
    from layerforge.models.bsp.init import initialise_from_planes, kdop_planes, train_planes_only

    cfg: FitConfig = ctx.typed("fit")
    out = ctx.output("model")
    out.mkdir(parents=True, exist_ok=True)
    files = _shape_files(ctx.input("shapes"))

    def fit_one(path: Path) -> None:  # fit mode: one network per shape, each with its own single code
        shape = PreparedShape.load(path)
        model = BSPNet(_model_config(ctx, n_shapes=1)).to(ctx.device)
        if cfg.init == "kdop":
            res = shape.voxels.shape[0]
            planes, T = kdop_planes(shape.voxels, model.cfg.c, cfg.kdop_directions, plane_scale=res * cfg.kdop_h1_per_voxel,
                                    seed=ctx.seed)
            initialise_from_planes(model, planes, T)
        if cfg.planes_only:
            train_planes_only(model)
        _optimise(ctx, model, [shape], cfg, tag=f"{path.stem}/" if len(files) > 1 else "")
        save_model(out / f"{path.stem}.pt", model, mode="fit", phase=cfg.schedule[-1].phase)

    done = ctx.each(files, fit_one, key=lambda p: p.stem, desc="shapes")
    ctx.record(shapes=len(done))


def train(ctx: StageContext) -> None:

    shapes = [PreparedShape.load(p) for p in _shape_files(ctx.input("shapes"))]
    out = ctx.output("model")
    out.mkdir(parents=True, exist_ok=True)
    cfg: TrainConfig = ctx.typed("train")
    model = BSPNet(_model_config(ctx, n_shapes=0)).to(ctx.device)
    _optimise(ctx, model, shapes, cfg, tag="")
    save_model(out / "model.pt", model, mode="train", phase=cfg.schedule[-1].phase)


def infer(ctx: StageContext) -> None:
    ckpt_path = ctx.typed("infer").checkpoint
    if not ckpt_path or not Path(str(ckpt_path)).is_file():
        raise InputError(
            f"infer mode needs a trained model, got infer.checkpoint={ckpt_path}",
            "pass infer.checkpoint=outputs/bsp/<train-run>/stages/train/model/model.pt",
        )
    _, ckpt = load_model(Path(str(ckpt_path)))
    if ckpt["mode"] != "train":
        raise InputError(f"{ckpt_path} is a {ckpt['mode']}-mode model without an encoder", "use a train-mode model.pt")
    out = ctx.output("model")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(str(ckpt_path), out / "model.pt")
    ctx.record(checkpoint=str(ckpt_path))


# ---- extract ----------------------------------------------------------------------------
def extract(ctx: StageContext) -> None:
    from layerforge.models.bsp.training import shape_planes

    cfg: ExtractConfig = ctx.typed("extract")
    models = ctx.input("model")
    out = ctx.output("convexes")
    out.mkdir(parents=True, exist_ok=True)
    shared = load_model(models / "model.pt")[0] if (models / "model.pt").exists() else None

    def extract_one(path: Path) -> None:
        shape = PreparedShape.load(path)
        if shared is not None:
            planes, T = shape_planes(shared, voxels=torch.from_numpy(shape.voxels[None, None]).float())
        else:
            planes, T = shape_planes(load_model(models / f"{path.stem}.pt")[0], shape_idx=0)
        parts = extract_convexes(planes, T, res=cfg.grid_resolution, drop_inside=cfg.drop_inner, name=path.stem)
        save_convexes(out / path.name, parts)

    shapes = [p for p in _shape_files(ctx.input("shapes")) if (models / "model.pt").exists() or (models / f"{p.stem}.pt").exists()]
    done = ctx.each(shapes, extract_one, key=lambda p: p.stem, desc="convexes")
    stats = [load_extraction_stats(out / p.name) for p in done]  # saved per shape: also those done before a resume
    ctx.record(convexes=sum(s.extracted for s in stats), qhull_failed=sum(s.qhull_failed for s in stats),
               no_interior=sum(s.no_interior for s in stats))


# ---- evaluate ---------------------------------------------------------------------------
def evaluate(ctx: StageContext) -> None:
    from layerforge.models.bsp.evaluation import evaluate_decomposition

    cfg: EvaluateConfig = ctx.typed("evaluate")
    results = {}
    for path in ctx.progress(_shape_files(ctx.input("convexes")), desc="metrics"):
        shape = PreparedShape.load(ctx.input("shapes") / path.name)
        results[path.stem] = evaluate_decomposition(
            load_convexes(path), shape.mesh_vertices, shape.mesh_faces, cfg.samples, cfg.edge_samples, seed=ctx.seed
        )
    atomic_write_json(ctx.output("metrics", ".json"), results)
    if len(results) == 1:
        ctx.record(**next(iter(results.values())))
        return
    means = {}
    for k in ("cd", "nc", "ecd", "convexes"):
        values = [r[k] for r in results.values() if np.isfinite(r[k])]
        if values:
            means[f"mean_{k}"] = float(np.mean(values))
    ctx.record(**means, empty_shapes=sum(r["convexes"] == 0 for r in results.values()))


# ---- export -----------------------------------------------------------------------------
def _palette(n: int) -> np.ndarray:
    """[n, 3] distinct, saturated linear colours (golden-ratio hues)."""
    import colorsys

    return np.array([colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95) for i in range(n)], np.float32) ** 2.2


def part_name(shape: str, index: int, count: int, naming: str) -> str:
    """Name of convex ``index`` of ``count`` for shape ``shape`` under a game engine's collision convention.

    ``ue``: ``UCX_<shape>_NN`` (Unreal's FBX/glTF importer makes each a convex collision hull
    of the mesh ``<shape>``); ``godot``: ``<shape>_NN-convcolonly`` (Godot's scene importer
    makes a convex collision shape and no visible mesh); ``none``: ``convex_NNN``.
    """
    digits = max(2, len(str(count - 1)))
    if naming == "ue":
        return f"UCX_{shape}_{index:0{digits}d}"
    if naming == "godot":
        return f"{shape}_{index:0{digits}d}-convcolonly"
    return f"convex_{index:03d}"


def export(ctx: StageContext) -> None:
    from layerforge.assets.export import export_asset
    from layerforge.assets.mesh_io import read_mesh
    from layerforge.assets.types import LayeredAsset, Material, Mesh, Part, texture_to_png
    from layerforge.renderers.preview import render_asset_views, side_by_side

    cfg: ExportConfig = ctx.typed("export")
    staged = ctx.folder / "staged"
    metrics = json.loads(ctx.input("metrics").read_text())
    if not any(m.get("convexes") for m in metrics.values()):
        raise OutputError(
            "the model produced no convex for any shape, so there is nothing to export",
            "train longer or with a higher lr (train.schedule, train.lr), or use mode=fit",
        )
    originals = {name: p for p, name in _shape_names(_mesh_files(ctx.input(INPUT))).items()}
    previews = []
    for path in _shape_files(ctx.input("convexes")):
        shape = PreparedShape.load(ctx.input("shapes") / path.name)
        frame = frame_of(shape.centre, shape.scale)  # BSP-Net's normalised frame -> the input's coordinates
        parts = []
        convexes = load_convexes(path)
        if not convexes:
            log.warning("bsp: no convex survived extraction for %s; it is left out of the export", path.stem)
            continue
        colors = _palette(len(convexes))
        for i, part in enumerate(convexes):
            world = frame.apply(part.vertices).astype(np.float32)  # back to the input's units
            f = part.faces
            name = part_name(path.stem, i, len(convexes), cfg.collision_naming)
            mat = Material(f"convex_{i:03d}", base_color=colors[i], roughness=0.6)
            parts.append(Part(name, Mesh(world, f, material=mat), layer="convexes", metadata={"convex": i}))
        asset = LayeredAsset(path.stem, parts, metadata={"method": "BSP-Net", **metrics.get(path.stem, {})})
        export_asset(asset, staged, path.stem, formats=tuple(cfg.formats))
        if path.stem in originals:
            original = read_mesh(originals[path.stem], up_axis=str(ctx.cfg.input_up_axis))
            original.material = Material("input", base_color=[0.7, 0.7, 0.72])
            ref = LayeredAsset("input", [Part("input", original)])
            lo, hi = original.bounds()
            frame = dict(center=(lo + hi) / 2, radius=float(np.linalg.norm(hi - lo) / 2), size=int(cfg.preview_size))
            previews.append(side_by_side(render_asset_views(ref, **frame), render_asset_views(asset, **frame)))
    atomic_write_json(staged / "metrics.json", metrics)
    SceneFrame().save(staged / SCENE_FRAME_FILE)  # deliverables are in the input's own coordinates: identity
    if previews:
        image = texture_to_png(side_by_side(*previews), srgb=True)
        atomic_write_bytes(staged / "preview.png", image)
        atomic_write_bytes(ctx.preview_path("preview.png"), image)
    ctx.publish(staged)


STAGES = {
    "prepare": Stage("prepare", prepare, needs=(INPUT,), makes=("shapes",), config_keys=("prepare", "input_up_axis"),
                     schemas={"prepare": PrepareConfig}, description="voxelise and sample the input mesh(es)"),
    "fit": Stage("fit", fit, needs=("shapes",), makes=("model",), config_keys=("model", "fit"),
                 schemas={"model": ModelConfig, "fit": FitConfig}, description="optimise BSP-Net on the shape(s)"),
    "train": Stage("train", train, needs=("shapes",), makes=("model",), config_keys=("model", "train"),
                   schemas={"model": ModelConfig, "train": TrainConfig}, description="train the auto-encoder"),
    "infer": Stage("infer", infer, needs=("shapes",), makes=("model",), config_keys=("infer",),
                   schemas={"infer": InferConfig}, description="apply a trained model"),
    "extract": Stage("extract", extract, needs=("model", "shapes"), makes=("convexes",),
                     schemas={"extract": ExtractConfig}, description="convex polyhedra from planes"),
    "evaluate": Stage("evaluate", evaluate, needs=("convexes", "shapes"), makes=("metrics",),
                      schemas={"evaluate": EvaluateConfig}, description="CD, NC, ECD, counts"),
    "export": Stage("export", export, needs=(INPUT, "convexes", "shapes", "metrics"), config_keys=("export", "input_up_axis"),
                    schemas={"export": ExportConfig}, description="GLB/OBJ/USD/.blend + preview"),
}
