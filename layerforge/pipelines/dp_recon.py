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
    BackgroundConfig,
    MeshConfig,
    ModelConfig,
    PrepareConfig,
    ReconConfig,
    TextureConfig,
)
from layerforge.pipelines.schema import ExportConfig
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
        instance_ids,
        normalising_frame,
        object_bounds,
        views_in_frame,
    )

    cfg: PrepareConfig = ctx.typed("prepare")
    data = read_posed_views(ctx.input(INPUT), require_masks=True, min_train=cfg.min_train_views)
    ids = instance_ids(data)
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
               depth_prior=train.depths is not None, normal_prior=train.normals is not None)


def _with_priors(ctx: StageContext, views, cfg: PrepareConfig):
    """The views with depth (estimated when a model is set and none is given) and normal priors."""
    from dataclasses import replace

    if views.depths is None and cfg.depth_model:
        from layerforge.models.guidance.estimators import DepthEstimator

        est = DepthEstimator(cfg.depth_model, key="prepare.depth_model")
        views = replace(views, depths=torch.stack([est(img) for img in views.images])[..., None].float())
    if views.normals is None and views.depths is not None and cfg.normals_from_depth:
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
                            "latent_size": p.latent_size,
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
    ctx.record(**{f"final_{k}": v for k, v in figures.items()}, beta=float(field.laplace.beta.detach()))


def _visibility(ctx: StageContext):
    """The visibility grid recon filled (its resolution from the recon section)."""
    grid = _grid(ctx.typed("recon")).to(ctx.device)
    ctx.load("visibility", grid)
    return grid


def _trained(ctx: StageContext):
    objects = ctx.load("objects")
    field = _field(ctx, objects)
    ctx.load("model", field)
    return field.eval(), _visibility(ctx), objects


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
    folder = ctx.folder / "parts"
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
                               image_size=cfg.tsdf_image_size, fov_deg=cfg.tsdf_fov_deg, seed=ctx.seed,
                               azimuth_bin_deg=cfg.tsdf_azimuth_bin_deg, elevation_bin_deg=cfg.tsdf_elevation_bin_deg)
        save_artifact({"vertices": part.vertices, "faces": part.faces}, folder / f"{k:03d}")

    done = ctx.each(list(range(len(names))), work, key=lambda k: names[k], desc="marching cubes")
    parts = []
    for k in done:
        arrays = load_artifact(folder / f"{k:03d}.npz", "arrays")
        parts.append(Part(names[k], Mesh(arrays["vertices"], arrays["faces"]), layer="background" if k == 0 else "objects",
                          metadata={"instance": k}))
    ctx.save("meshes", LayeredAsset("scene", parts, metadata={"method": "DP-Recon", "frame": "optimisation"}))
    ctx.record(meshes=len(parts), faces={p.name: len(p.geometry.faces) for p in parts})



# ---- background -------------------------------------------------------------------------
PANORAMA_CENTRE = (0.0, 0.0, 0.0)  # the scene centre of the optimisation frame (prepare's normalisation)


def background(ctx: StageContext) -> None:
    from layerforge.assets.atomic import atomic_write_bytes
    from layerforge.assets.types import texture_to_png
    from layerforge.models.dp_recon import (
        choose_panorama,
        panorama_candidates,
        render_background_panorama,
        unseen_mask,
    )
    from layerforge.models.guidance.inpaint import Inpainter

    cfg: BackgroundConfig = ctx.typed("background")
    m: ModelConfig = ctx.typed("model")
    field, grid, _ = _trained(ctx)
    pano = render_background_panorama(field, grid, torch.tensor(PANORAMA_CENTRE, device=ctx.device), cfg.height,
                                      cfg.width, m.sampler(perturb=False), chunk_rays=cfg.chunk_rays)
    rgb = pano["rgb"].clamp(0, 1).cpu()
    mask = unseen_mask(pano["visibility"].cpu(), cfg.unseen_threshold)
    inpainter = Inpainter({"pretrained_model_name_or_path": cfg.inpaint_model, "prompt": cfg.prompt},
                          key="background.inpaint_model")
    candidates = panorama_candidates(rgb, mask, inpainter, cfg.candidates, ctx.seed, cfg.prompt)
    chosen, scores = choose_panorama(candidates, mask)
    ctx.save("panorama", {"rgb": candidates[chosen].numpy(), "rendered": rgb.numpy(), "unseen": mask.numpy(),
                          "visibility": pano["visibility"].cpu().numpy(), "centre": np.asarray(PANORAMA_CENTRE),
                          "scores": np.array([s["total"] for s in scores])})
    atomic_write_bytes(ctx.preview_path("panorama.png"), texture_to_png(candidates[chosen].numpy(), srgb=True))
    atomic_write_bytes(ctx.preview_path("panorama_unseen.png"),
                       texture_to_png(np.repeat(mask.numpy()[..., None].astype(np.float32), 3, -1), srgb=False))
    ctx.record(unseen_fraction=float(mask.float().mean()), chosen=chosen, candidates=len(candidates),
               inpainter=inpainter.backend, scores=[round(s["total"], 6) for s in scores])


# ---- texture ----------------------------------------------------------------------------
def _scene_parts(ctx: StageContext, grid):
    """The meshes (optimisation frame) as a TexturedScene with per-vertex visibility."""
    from layerforge.models.dp_recon import TexturedScene

    asset = ctx.load("meshes")
    verts = [torch.from_numpy(p.geometry.vertices).float().to(ctx.device) for p in asset.parts]
    with torch.no_grad():
        vis = [grid.query(v).clamp(0.0, 1.0) for v in verts]
    faces = [torch.from_numpy(p.geometry.faces).long().to(ctx.device) for p in asset.parts]
    return asset, TexturedScene(verts, faces, vis)


def _texture_field(ctx: StageContext, asset):
    from layerforge.models.dp_recon import TextureField, TextureFieldConfig
    from layerforge.models.fields.hashgrid import HashGridConfig

    cfg: TextureConfig = ctx.typed("texture")
    pts = np.concatenate([p.geometry.vertices for p in asset.parts])
    pad = 0.02 * float((pts.max(0) - pts.min(0)).max())
    aabb = torch.tensor(np.stack([pts.min(0) - pad, pts.max(0) + pad]), dtype=torch.float32)
    return TextureField(aabb, TextureFieldConfig(hashgrid=HashGridConfig(**cfg.hashgrid),
                                                 hidden=tuple(cfg.hidden))).to(ctx.device)


def texture(ctx: StageContext) -> None:
    from layerforge.assets.types import LayeredAsset, Part
    from layerforge.models.dp_recon import (
        PanoramaLoss,
        TextureBatches,
        TextureRGBLoss,
        TextureSDSLoss,
        object_orbit_views,
        textured_mesh,
    )
    from layerforge.models.optimisation import ParamGroup
    from layerforge.pipelines.artifacts import load_artifact, save_artifact
    from layerforge.pipelines.optimise import OptimiseConfig, optimise

    cfg: TextureConfig = ctx.typed("texture")
    grid, objects = _visibility(ctx), ctx.load("objects")
    views = ctx.load("views")
    pano = ctx.load("panorama")
    asset, scene = _scene_parts(ctx, grid)
    field = _texture_field(ctx, asset)
    w = dict(cfg.weights)
    terms = [TextureRGBLoss(scene, weight=w.get("rgb")), PanoramaLoss(scene, weight=w.get("panorama"))]
    sds_views = {}
    if cfg.sds_model:
        from layerforge.models.dp_recon import TEXTURE_GUIDANCE
        from layerforge.models.guidance import SDSGuidance

        guidance = SDSGuidance({**TEXTURE_GUIDANCE, "pretrained_model_name_or_path": cfg.sds_model,
                                "latent_size": cfg.sds_latent_size,
                                "device": "cuda" if ctx.device.type == "cuda" else "cpu"})
        names = [p.name for p in asset.parts]
        prompts = {i: str(objects["prompts"][int(p.metadata.get("instance", i)) - 1]) for i, p in enumerate(asset.parts)
                   if p.name != "background"}
        sds_views = {i: object_orbit_views(np.stack(asset.parts[i].geometry.bounds()), n=1, size=cfg.sds_resolution,
                                           device=ctx.device) for i in prompts}
        terms.append(TextureSDSLoss(guidance, scene, prompts, weight=w.get("sds")))
        log.info("texture: RGB SDS on %s", ", ".join(names[i] for i in prompts))
    batches = TextureBatches(views, cfg.views_per_step, panorama=torch.from_numpy(pano["rgb"]),
                             pano_center=tuple(pano["centre"].tolist()), pano_views=cfg.pano_views,
                             pano_size=cfg.pano_size, sds_views=sds_views, device=ctx.device)
    groups = [ParamGroup("encoding", list(field.encoding.parameters()), cfg.lr),
              ParamGroup("mlp", list(field.mlp.parameters()), cfg.lr)]
    figures = optimise(ctx, field, groups, terms, batches,
                       OptimiseConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every))
    field.eval()
    folder = ctx.folder / "parts"
    folder.mkdir(parents=True, exist_ok=True)

    def bake(i: int) -> None:
        part = asset.parts[i]
        mesh = textured_mesh(field, part.geometry, cfg.texture_size, cfg.pad_px, name=part.name)
        save_artifact(LayeredAsset(part.name, [Part(part.name, mesh, layer=part.layer, metadata=dict(part.metadata))]),
                      folder / f"{i:03d}")

    done = ctx.each(list(range(len(asset.parts))), bake, key=lambda i: asset.parts[i].name, desc="bake")
    parts = [load_artifact(folder / f"{i:03d}.glb", "asset").parts[0] for i in done]
    ctx.save("textured", LayeredAsset("scene", parts, metadata={"method": "DP-Recon", "frame": "optimisation"}))
    ctx.record(**{f"final_{k}": v for k, v in figures.items()}, textured=len(parts))


# ---- evaluate ---------------------------------------------------------------------------
def _render_textured(asset, cameras):
    from layerforge.renderers.mesh import render_textured_parts

    parts = asset.parts
    return render_textured_parts([torch.from_numpy(p.geometry.vertices) for p in parts],
                                 [torch.from_numpy(p.geometry.faces) for p in parts],
                                 [torch.from_numpy(p.geometry.uvs) for p in parts],
                                 [torch.from_numpy(p.geometry.material.base_color_texture[..., :3]) for p in parts],
                                 cameras)


def evaluate(ctx: StageContext) -> None:
    from layerforge.assets.atomic import atomic_write_json
    from layerforge.assets.types import linear_to_srgb
    from layerforge.models.image_metrics import mask_iou, psnr, ssim

    asset = ctx.load("textured")
    test = ctx.load("test_views")
    out = _render_textured(asset, test.cameras)
    pred, gt = linear_to_srgb(out.rgb.clamp(0, 1)), linear_to_srgb(test.images)  # the papers score sRGB images
    part_instance = torch.tensor([int(p.metadata.get("instance", 0)) for p in asset.parts])
    pid = out.extras["part_id"]
    seg = torch.where(pid >= 0, part_instance[pid.clamp_min(0)], torch.zeros_like(pid))
    ids = test.masks
    metrics = {"psnr": psnr(pred, gt, ids >= 0), "ssim": ssim(pred, gt), "views": len(test)}
    for p in asset.parts:
        k = int(p.metadata.get("instance", 0))
        if k > 0:
            metrics[f"psnr_{p.name}"] = psnr(pred, gt, ids == k)
            metrics[f"iou_{p.name}"] = mask_iou(seg == k, ids == k)
    atomic_write_json(ctx.output("metrics", ".json"), metrics)
    ctx.save("test_renders", {"rgb": out.rgb.clamp(0, 1).numpy(), "segmentation": seg.numpy()})
    ctx.record(**metrics)


# ---- export -----------------------------------------------------------------------------
OBJECT_PALETTE = ((0.9, 0.1, 0.1), (0.1, 0.7, 0.1), (0.1, 0.2, 0.9), (0.9, 0.7, 0.0), (0.7, 0.1, 0.8),
                  (0.0, 0.7, 0.7), (0.9, 0.4, 0.0), (0.4, 0.4, 0.4))


def export(ctx: StageContext) -> None:
    from layerforge.assets.atomic import atomic_write_json
    from layerforge.assets.export import export_asset
    from layerforge.assets.frame import SCENE_FRAME_FILE, SceneFrame
    from layerforge.assets.types import LayeredAsset, Part

    cfg: ExportConfig = ctx.typed("export")
    asset = ctx.load("textured")
    frame = ctx.load("frame")
    world = LayeredAsset("scene", [Part(p.name, p.geometry.transformed(frame.to_world @ p.transform), layer=p.layer,
                                        metadata={**p.metadata, "usd_visibility_variants": p.name != "background"})
                                   for p in asset.parts], metadata={"method": "DP-Recon"})
    staged = ctx.folder / "staged"
    export_asset(world, staged, "scene", formats=tuple(cfg.formats))
    for part in world.parts:  # one textured mesh per object too, as DCC users import them one by one
        export_asset(LayeredAsset(part.name, [part]), staged / "objects", part.name,
                     formats=tuple(f for f in cfg.formats if f in ("glb", "obj")))
    atomic_write_json(staged / "metrics.json", json.loads(ctx.input("metrics").read_text()))
    _comparison_previews(ctx, cfg.preview_size, asset)
    SceneFrame().save(staged / SCENE_FRAME_FILE)  # deliverables are in the user's world: identity
    ctx.publish(staged)


def _comparison_previews(ctx: StageContext, height: int, asset) -> None:
    """previews/compare_<view>.png per held-out view: input | ours | per object | visibility | SDS weight."""
    from layerforge.assets.atomic import atomic_write_bytes
    from layerforge.assets.types import texture_to_png
    from layerforge.models.guidance.sds import (
        SDS_NONE_VIS_REGION_MAX,
        visibility_weight_map,
    )
    from layerforge.renderers.mesh import interpolate, rasterize

    test = ctx.load("test_views")
    renders = ctx.load("test_renders")
    grid = _visibility(ctx)
    seg = renders["segmentation"]
    palette = np.array([(0.5, 0.5, 0.5), *OBJECT_PALETTE], np.float32)
    objects = palette[np.where(seg >= 0, seg % len(palette), 0)] * (seg[..., None] > 0)
    verts = torch.cat([torch.from_numpy(p.geometry.vertices) for p in asset.parts])
    offsets = np.cumsum([0] + [len(p.geometry.vertices) for p in asset.parts[:-1]])
    faces = torch.cat([torch.from_numpy(p.geometry.faces) + int(o) for p, o in zip(asset.parts, offsets)])
    with torch.no_grad():
        vis_v = grid.to("cpu").query(verts.float()).clamp(0, 1)[:, None]
        frags = rasterize(verts.float(), faces, test.cameras.to(dtype=torch.float32))
        vis = interpolate(vis_v, frags, faces)[..., 0].numpy()
    weight = visibility_weight_map(torch.from_numpy(vis)).numpy() / SDS_NONE_VIS_REGION_MAX  # 1 = the largest weight
    grey = (lambda a: np.repeat(np.clip(a, 0, 1)[..., None], 3, -1))
    scale = max(1, round(height / test.cameras.height))
    for i, name in enumerate(test.names):
        strip = np.concatenate([test.images[i].numpy(), renders["rgb"][i], objects[i], grey(vis[i]), grey(weight[i])], 1)
        strip = strip.repeat(scale, 0).repeat(scale, 1)  # nearest: the pixels the metrics saw
        atomic_write_bytes(ctx.preview_path(f"compare_{name}.png"), texture_to_png(strip, srgb=True))


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
    "background": Stage("background", background, needs=("model", "visibility", "objects"), makes=("panorama",),
                        config_keys=("model", "recon", "background"), schemas={**_CONFIGS, "background": BackgroundConfig},
                        description="background panorama, unseen pixels inpainted, deterministic choice"),
    "texture": Stage("texture", texture, needs=("visibility", "objects", "views", "meshes", "panorama"),
                     makes=("textured",), config_keys=("recon", "texture"),
                     schemas={"recon": ReconConfig, "texture": TextureConfig},
                     description="xatlas UVs, texture field fit (views, panorama, SDS), UV bake"),
    "evaluate": Stage("evaluate", evaluate, needs=("textured", "test_views"), makes=("metrics", "test_renders"),
                      config_keys=(),
                      description="textured meshes re-rendered: PSNR, SSIM, mask IoU"),
    "export": Stage("export", export, needs=("textured", "frame", "metrics", "test_views", "test_renders", "visibility"),
                    config_keys=("recon", "export"), schemas={"recon": ReconConfig, "export": ExportConfig},
                    description="GLB / OBJ+MTL+PNG / USD / .blend per object and scene, metrics, previews"),
}
