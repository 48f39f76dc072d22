"""The ``dp_recon`` pipeline: DP-Recon, sparse posed views to one complete, UV-textured mesh per object.

    prepare    -> views read (nerfstudio folder, instance masks, optional depth / normal priors,
                  prompts.json), the scene normalised into the unit sphere (a SceneFrame kept for
                  export), per-object boxes; normal priors from depth where no normal files exist
    recon      -> one SDF per object + background, scene SDF = min, VolSDF density; the nine
                  MonoSDF / ObjectSDF++ terms; at ``visibility.start`` the visibility grid is
                  filled from the input views; from ``prior.start`` the visibility-weighted
                  geometry SDS on each object (when a prior model is set)
    mesh       -> marching cubes per object and background; the background filtered by TSDF
                  fusion of its depth seen from anchor views at the input cameras (open3d)
    background -> a panorama of the background from the scene centre, pixels the inputs never
                  saw (visibility < 0.2) inpainted, the candidate chosen by a deterministic score
    texture    -> xatlas UVs per mesh, a texture field fitted to the input views, the
                  background panorama and (with a model) RGB SDS where visibility < 0.3, baked
                  into UV maps through our mesh rasterizer
    evaluate   -> textured meshes re-rendered at the held-out (else input) views: PSNR, SSIM,
                  per-object mask IoU
    export     -> one UV-textured mesh per object and the background (GLB, OBJ+MTL+PNG, USD,
                  .blend), the layered scene, metrics.json, previews (input | ours | per object |
                  visibility | SDS weight)

The math lives in :mod:`layerforge.models.dp_recon`; this module only wires stages.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from layerforge.errors import InputError
from layerforge.pipelines.context import StageContext
from layerforge.pipelines.dp_recon_config import (
    MeshConfig,
    ModelConfig,
    PrepareConfig,
    ReconConfig,
)
from layerforge.pipelines.stage import INPUT, Stage

log = logging.getLogger("layerforge")
PROMPTS_FILE = "prompts.json"
# marching cubes runs on an object's box grown by this many voxels a side, so an SDF confined
# to the box (model.confine_objects) closes into a surface at the box faces
EXTRACT_MARGIN_VOXELS = 2


# ---- prepare ----------------------------------------------------------------------------
def _prompts(root, ids: list[int], names: dict[int, str], default: str) -> list[str]:
    path = root / PROMPTS_FILE
    given: dict[str, str] = {}
    if path.is_file():
        try:
            given = {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError) as err:
            raise InputError(f"{path}: not a JSON object of id -> prompt ({err})",
                             'write {"1": "a wooden chair", ...}') from None
    return [given.get(str(k), given.get(names[k], default.format(name=names[k]))) for k in ids]


def _evenly(views, count: int | None):
    if count is None or len(views) <= count:
        return views
    return views[np.linspace(0, len(views) - 1, count).round().astype(int).tolist()]


def prepare(ctx: StageContext) -> None:
    from layerforge.assets.nerfstudio_dataset import read_posed_views
    from layerforge.models.scene_prep import (
        normalising_frame,
        object_bounds,
        views_in_frame,
    )

    cfg: PrepareConfig = ctx.typed("prepare")
    data = read_posed_views(ctx.input(INPUT), require_masks=True, min_train=cfg.min_train_views)
    if not data.instances:
        raise InputError(f"{data.path}: the masks name no object (every pixel is 0)", "give instance ids 1..K")
    ids = sorted(data.instances)
    if ids != list(range(1, len(ids) + 1)):
        raise InputError(f"{data.path}: instance ids must be 1..K without gaps, got {ids}", "renumber the masks")
    train = _evenly(data.train, cfg.max_train_views)
    test = data.test if len(data.test) else train
    train = _with_priors(ctx, train, cfg)
    frame = normalising_frame(train, radius=cfg.scene_radius)
    bounds = object_bounds(train, ids, frame, radius=cfg.scene_radius)
    root = data.path if data.path.is_dir() else data.path.parent
    ctx.save("views", views_in_frame(train, frame))
    ctx.save("test_views", views_in_frame(test, frame))
    ctx.save("frame", frame)
    ctx.save("objects", {"names": np.array([data.instances[k] for k in ids]),
                         "prompts": np.array(_prompts(root, ids, data.instances, cfg.default_prompt)),
                         "lo": np.stack([bounds[k][0] for k in ids]), "hi": np.stack([bounds[k][1] for k in ids])})
    ctx.record(train_views=len(train), test_views=len(data.test), objects=len(ids), scene_scale_m=frame.scale,
               depth_prior=train.depths is not None, normal_prior=getattr(train, "normals", None) is not None)


def _with_priors(ctx: StageContext, views, cfg: PrepareConfig):
    """The views with depth (estimated when a model is set and none is given) and normal priors."""
    from dataclasses import replace

    if views.depths is None and cfg.depth_model:
        from layerforge.models.guidance.estimators import DepthEstimator

        est = DepthEstimator(cfg.depth_model, key="prepare.depth_model")
        views = replace(views, depths=torch.stack([est(img) for img in views.images])[..., None].float())
    if getattr(views, "normals", None) is None and views.depths is not None and cfg.normals_from_depth:
        from layerforge.renderers.depth_normals import normals_from_depth

        views = replace(views, normals=normals_from_depth(views.depths, views.cameras.K).float())
    return views


# ---- recon ------------------------------------------------------------------------------
def _boxes(objects: dict[str, np.ndarray]) -> list[tuple[list[float], list[float]]]:
    return list(zip(objects["lo"].tolist(), objects["hi"].tolist()))


def _field(ctx: StageContext, objects: dict[str, np.ndarray]):
    from layerforge.models.dp_recon import build_scene_field

    m: ModelConfig = ctx.typed("model")
    return build_scene_field(_boxes(objects), m.scene_config()).to(ctx.device)


def _grid(cfg: ReconConfig):
    from layerforge.models.dp_recon import VisibilityGrid

    return VisibilityGrid(cfg.visibility.resolution)


def _recon_weights(cfg: ReconConfig, sampler) -> dict:
    weights = {"object_violation": [cfg.object_violation_start, 0.0, 0.5, cfg.object_violation_start]}
    weights.update(cfg.weights)
    if not sampler.has_depth:
        log.warning("recon: the views have no depth prior: the depth loss is off (give depth_file_path or prepare.depth_model)")
        weights["depth"] = 0.0
    if not sampler.has_normal:
        log.warning("recon: the views have no normal prior: the normal losses are off (give normal_file_path or depth)")
        weights["normal_l1"] = weights["normal_cos"] = 0.0
    return weights


def _prior_term(ctx: StageContext, cfg: ReconConfig, objects, grid, sampler_cfg):
    from layerforge.models.dp_recon import (
        GeometrySDSLoss,
        ObjectViewRange,
        object_view_sampler,
    )
    from layerforge.models.guidance import SDSGuidance

    p = cfg.prior
    shift = (lambda s: [p.start + s[0], s[1], s[2], p.start + s[3]])
    guidance = SDSGuidance({"pretrained_model_name_or_path": p.model, "latent_mode": "direct", "weighting": "fantasia3d",
                            "guidance_scale": p.guidance_scale, "min_step_percent": shift(p.min_step_percent),
                            "max_step_percent": shift(p.max_step_percent), "dtype": p.dtype,
                            "device": "cuda" if ctx.device.type == "cuda" else "cpu",
                            "view_dependent_prompting": True})
    views, ks = [], []
    for k, (lo, hi) in enumerate(_boxes(objects), start=1):
        lo_a, hi_a = np.asarray(lo), np.asarray(hi)
        obj = ObjectViewRange(tuple(((lo_a + hi_a) / 2).tolist()), float(np.linalg.norm(hi_a - lo_a) / 2))
        views.append(object_view_sampler(obj, p.views_per_object, p.resolution, elevation_deg=p.elevation_deg,
                                         fov_deg=p.fov_deg, device=ctx.device))
        ks.append(k)
    return GeometrySDSLoss(guidance, grid, views, ks, [str(s) for s in objects["prompts"]], sampler_cfg,
                           objects_per_step=p.objects_per_step, weight=[p.start, 0.0, p.weight, p.start])


def recon(ctx: StageContext) -> None:
    from layerforge.models.dp_recon import DPReconRays, fit_visibility_grid, paper_terms
    from layerforge.models.optimisation import ParamGroup
    from layerforge.pipelines.optimise import OptimiseConfig, Optimiser

    cfg: ReconConfig = ctx.typed("recon")
    m: ModelConfig = ctx.typed("model")
    views = ctx.load("views")
    objects = ctx.load("objects")
    field = _field(ctx, objects)
    rays = DPReconRays(views, cfg.rays_per_step, device=ctx.device)
    sampler_cfg = m.sampler(perturb=True)
    terms = paper_terms(sampler_cfg, cfg.eikonal_points, _recon_weights(cfg, rays))
    decay = (lambda lr0: (lambda step: lr0 * cfg.lr_decay_to ** min(1.0, step / cfg.steps)))
    grids = [p for n, p in field.named_parameters() if "encoding" in n]
    rest = [p for n, p in field.named_parameters() if "encoding" not in n]
    opt = Optimiser(field, [ParamGroup("grid", grids, decay(cfg.lr * cfg.grid_lr_factor)),
                            ParamGroup("mlp", rest, decay(cfg.lr))], ctx.seed)
    start = min(cfg.visibility.start, cfg.steps)
    figures: dict[str, float] = {}
    if start > 0:
        figures = opt.run(ctx, terms, rays, OptimiseConfig(steps=start, checkpoint_every=cfg.checkpoint_every),
                          subfolder="geometry", desc="geometry")
    grid = _grid(cfg).to(ctx.device)
    grid_file = ctx.folder / "visibility_fit.pt"
    if grid_file.exists():  # filled before a kill in the prior phase
        grid.load_state_dict(torch.load(grid_file, map_location=ctx.device))
    else:
        bar = ctx.progress(total=len(views) * (cfg.visibility.passes if cfg.visibility.method == "learned" else 1),
                           desc="visibility")
        fit_visibility_grid(grid, field, views.cameras.to(ctx.device), m.sampler(perturb=False),
                            method=cfg.visibility.method, passes=cfg.visibility.passes,
                            progress=lambda done, total: bar.update(done - bar.n))
        bar.close()
        if cfg.visibility.smooth:
            grid.smooth()
        from layerforge.assets.atomic import atomic_path

        with atomic_path(grid_file) as tmp:
            torch.save(grid.state_dict(), tmp)
    if cfg.steps > start:
        if cfg.prior.model and cfg.prior.weight > 0:
            terms = [*terms, _prior_term(ctx, cfg, objects, grid, sampler_cfg)]
        else:
            log.info("recon: no geometry prior (recon.prior.model is null): reconstruction only")
        figures = opt.run(ctx, terms, rays, OptimiseConfig(steps=cfg.steps - start, checkpoint_every=cfg.checkpoint_every,
                                                           start_step=start), subfolder="prior", desc="prior")
    ctx.save("model", field)
    ctx.save("visibility", grid)
    ctx.record(**{f"final_{k}": v for k, v in figures.items()}, beta=float(field.laplace.beta))


def _trained(ctx: StageContext):
    objects = ctx.load("objects")
    field = _field(ctx, objects)
    ctx.load("model", field)
    cfg: ReconConfig = ctx.typed("recon")
    grid = _grid(cfg).to(ctx.device)
    ctx.load("visibility", grid)
    return field.eval(), grid, objects


# ---- mesh -------------------------------------------------------------------------------
def mesh(ctx: StageContext) -> None:
    from layerforge.assets.types import LayeredAsset, Mesh, Part
    from layerforge.errors import OutputError
    from layerforge.models.dp_recon import tsdf_filter
    from layerforge.models.fields.extract import extract_level_set
    from layerforge.pipelines.artifacts import load_artifact, save_artifact

    cfg: MeshConfig = ctx.typed("mesh")
    field, _, objects = _trained(ctx)
    views = ctx.load("views")
    names = ["background", *[str(n) for n in objects["names"]]]
    boxes = [(np.full(3, -1.0), np.full(3, 1.0))] + [(np.asarray(lo), np.asarray(hi)) for lo, hi in _boxes(objects)]
    folder = ctx.output("meshes_parts")
    folder.mkdir(parents=True, exist_ok=True)

    def work(k: int) -> None:
        lo, hi = boxes[k]
        res = cfg.background_resolution if k == 0 else cfg.resolution
        if k > 0:
            grow = EXTRACT_MARGIN_VOXELS * (hi - lo) / res
            lo, hi = lo - grow, hi + grow
        sdf = (lambda p, f=field.objects[k]: f(p).sdf)
        try:
            part = extract_level_set(sdf, lo, hi, resolution=res, level=0.0, inside="below", device=ctx.device)
        except OutputError as err:
            raise OutputError(f"{names[k]} has no surface ({err.problem})", "train longer or check its masks") from None
        if k == 0:
            centres = views.cameras.center.reshape(-1, 3).double().numpy()
            part = tsdf_filter(part, centres, voxel=cfg.tsdf_voxel, trunc=cfg.tsdf_trunc_voxels * cfg.tsdf_voxel,
                               image_size=cfg.tsdf_image_size, fov_deg=cfg.tsdf_fov_deg, seed=ctx.seed)
        save_artifact({"vertices": part.vertices, "faces": part.faces}, folder / f"{k:03d}")

    done = ctx.each(list(range(len(names))), work, key=lambda k: names[k], desc="marching cubes")
    parts = []
    for k in done:
        arrays = load_artifact(folder / f"{k:03d}.npz", "arrays")
        parts.append(Part(names[k], Mesh(arrays["vertices"], arrays["faces"]), layer="background" if k == 0 else "objects",
                          metadata={"instance": k}))
    ctx.save("meshes", LayeredAsset("scene", parts, metadata={"method": "DP-Recon", "frame": "optimisation"}))
    ctx.record(meshes=len(parts), faces={p.name: len(p.mesh.faces) for p in parts})


_CONFIGS = {"model": ModelConfig, "recon": ReconConfig}
STAGES = {
    "prepare": Stage("prepare", prepare, needs=(INPUT,), makes=("views", "test_views", "frame", "objects"),
                     schemas={"prepare": PrepareConfig}, description="read views and priors, normalise, object boxes"),
    "recon": Stage("recon", recon, needs=("views", "objects"), makes=("model", "visibility"),
                   config_keys=("model", "recon"), schemas=_CONFIGS,
                   description="SDF per object + background, visibility grid, geometry SDS"),
    "mesh": Stage("mesh", mesh, needs=("model", "visibility", "objects", "views"), makes=("meshes",),
                  config_keys=("model", "recon", "mesh"), schemas={**_CONFIGS, "mesh": MeshConfig},
                  description="marching cubes per object, TSDF-filtered background"),
}
