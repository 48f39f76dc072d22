"""The ``decomp_nerf`` pipeline: UDC-NeRF, posed photos with instance masks to per-object fields.

    prepare  -> views read (nerfstudio folder, instance-id masks), the scene normalised into
                the unit sphere (a SceneFrame kept for export), per-object boxes, pseudo-
                background images (objects inpainted away, masks dilated 23 px)
    train    -> UDC-NeRF (coarse scene network; fine scene + background + shared foreground
                heads with K object codes; Gumbel one-hot composition) with the paper's seven
                loss terms, 0.7/0.3 background/object rays, poly-2 learning-rate decay
    evaluate -> held-out views: PSNR, SSIM, mIoU, per-object PSNR, background PSNR in object masks
    edit     -> remove / move / rotate / duplicate objects, rendered from the test cameras and
                as a turntable (PNG frames + GIF)
    extract  -> one mesh per object (and the background) by marching cubes of its density
    export   -> GLB, OBJ, USD (a shown/hidden variant per object), .blend, metrics.json, in the
                user's world frame and units; previews/compare_<view>.png (ground truth | ours |
                per-object alpha | edited)

The math lives in :mod:`layerforge.models.udc_nerf`, :mod:`layerforge.models.scene_prep`,
:mod:`layerforge.models.fields.extract`; this module only wires stages.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import torch

from layerforge.errors import InputError
from layerforge.pipelines.context import StageContext
from layerforge.pipelines.decomp_nerf_config import (
    EditConfig,
    EvaluateConfig,
    ExtractConfig,
    ModelConfig,
    PrepareConfig,
    TrainConfig,
)
from layerforge.pipelines.schema import ExportConfig
from layerforge.pipelines.stage import INPUT, Stage

log = logging.getLogger("layerforge")
TURNTABLE_FRAME_MS = 80  # 12.5 frames per second
# marching cubes runs on the object's box grown by this many voxels a side, so a density
# confined to the box (model.confine_to_boxes) still closes into a surface at the box faces
EXTRACT_MARGIN_VOXELS = 2
# linear RGB of object k's alpha in the comparison previews (saturated, distinct hues; ours)
OBJECT_PALETTE = ((0.9, 0.1, 0.1), (0.1, 0.7, 0.1), (0.1, 0.2, 0.9), (0.9, 0.7, 0.0), (0.7, 0.1, 0.8),
                  (0.0, 0.7, 0.7), (0.9, 0.4, 0.0), (0.4, 0.4, 0.4))


# ---- prepare ----------------------------------------------------------------------------
def prepare(ctx: StageContext) -> None:
    from layerforge.assets.nerfstudio_dataset import read_posed_views
    from layerforge.models.guidance.inpaint import Inpainter
    from layerforge.models.scene_prep import instance_ids, prepare_scene

    cfg: PrepareConfig = ctx.typed("prepare")
    data = read_posed_views(ctx.input(INPUT), require_masks=True, min_train=cfg.min_train_views)
    ids = instance_ids(data)
    if len(data.test) == 0:
        raise InputError(f"{data.path}: no held-out view to evaluate on", 'mark a few frames "split": "test"')
    inpainter = Inpainter({"pretrained_model_name_or_path": cfg.inpaint_model})
    erode, dilate = cfg.kernels(data.train.cameras.width)
    scene = prepare_scene(data.train, data.test, ids, inpainter, erode, dilate)
    train, test, bounds = scene.train, scene.test, scene.bounds
    ctx.save("views", train)
    ctx.save("test_views", test)
    ctx.save("frame", scene.frame)
    ctx.save("pseudo_background", {"train": scene.pseudo_train.numpy(), "test": scene.pseudo_test.numpy()})
    ctx.save("objects", {"names": np.array([data.instances[k] for k in ids]),
                         "lo": np.stack([bounds[k][0] for k in ids]), "hi": np.stack([bounds[k][1] for k in ids])})
    ctx.record(train_views=len(train), test_views=len(test), objects=len(ids),
               inpainter=inpainter.backend, scene_scale_m=scene.frame.scale, erode_px=erode, dilate_px=dilate)


def _model(ctx: StageContext, objects: dict[str, np.ndarray]):
    from layerforge.models.udc_nerf import UDCNeRF

    m: ModelConfig = ctx.typed("model")
    boxes = tuple(zip(objects["lo"].tolist(), objects["hi"].tolist()))
    return UDCNeRF(m.udc_config(len(objects["names"]), boxes)).to(ctx.device)


# ---- train ------------------------------------------------------------------------------
def train(ctx: StageContext) -> None:
    from layerforge.models.optimisation import ParamGroup
    from layerforge.models.udc_nerf import BalancedRayBatches, PolyDecay, paper_terms
    from layerforge.pipelines.optimise import OptimiseConfig, optimise

    cfg: TrainConfig = ctx.typed("train")
    views = ctx.load("views")
    objects = ctx.load("objects")
    pseudo = torch.from_numpy(ctx.load("pseudo_background")["train"])
    model = _model(ctx, objects)
    sampler = BalancedRayBatches(views, pseudo, cfg.rays_per_step, fg_fraction=cfg.fg_fraction,
                                 objects=len(objects["names"]), device=ctx.device)
    lr = PolyDecay(cfg.lr, cfg.steps, cfg.lr_exponent)
    group = ParamGroup("model", list(model.parameters()), lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps)
    figures = optimise(ctx, model, [group], paper_terms(dict(cfg.weights)),
                       sampler, OptimiseConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every))
    ctx.save("model", model)
    ctx.record(**{f"final_{k}": v for k, v in figures.items()})


def _trained(ctx: StageContext):
    objects = ctx.load("objects")
    model = _model(ctx, objects)
    ctx.load("model", model)
    return model.eval(), objects


# ---- evaluate ---------------------------------------------------------------------------
def evaluate(ctx: StageContext) -> None:
    from layerforge.assets.atomic import atomic_write_json
    from layerforge.assets.types import linear_to_srgb
    from layerforge.models.image_metrics import mask_iou, mean_iou, psnr, ssim
    from layerforge.models.udc_nerf import render_views

    cfg: EvaluateConfig = ctx.typed("evaluate")
    model, objects = _trained(ctx)
    test = ctx.load("test_views")
    out = render_views(model, test, chunk_rays=cfg.chunk_rays)
    pred, gt = linear_to_srgb(out.rgb.clamp(0, 1).cpu()), linear_to_srgb(test.images)  # papers score sRGB images
    ids = test.masks
    seg = out.extras["segmentation"].argmax(-1).cpu()
    pseudo = torch.from_numpy(ctx.load("pseudo_background")["test"])
    bg_pred = linear_to_srgb(out.extras["components_rgb"][..., 0, :].clamp(0, 1).cpu())
    metrics = {
        "psnr": psnr(pred, gt, ids >= 0),
        "ssim": ssim(pred, gt),
        "miou": mean_iou(seg, ids),
        "background_psnr_in_object_masks": psnr(bg_pred, linear_to_srgb(pseudo), ids >= 1),
    }
    for k, name in enumerate(objects["names"], start=1):
        metrics[f"psnr_{name}"] = psnr(pred, gt, ids == k)
        metrics[f"iou_{name}"] = mask_iou(seg == k, ids == k)
    atomic_write_json(ctx.output("metrics", ".json"), metrics)
    ctx.save("test_renders", {"rgb": out.rgb.clamp(0, 1).cpu().numpy(),
                              "component_alpha": out.extras["component_alpha"].clamp(0, 1).cpu().numpy()})
    ctx.record(**metrics)


# ---- edit -------------------------------------------------------------------------------
def _edits(cfg: EditConfig, frame) -> list:
    """Config edits (world metres) as model edits (optimisation-frame units)."""
    from layerforge.models.udc_nerf import Edit

    out = []
    for e in cfg.edits:
        if "remove" in e:
            out.append(Edit.remove(int(e["remove"])))
        elif "move" in e:
            out.append(Edit.move(int(e["move"]), [float(v) / frame.scale for v in e.get("by", [0, 0, 0])]))
        elif "rotate" in e:
            out.append(Edit.rotate(int(e["rotate"]), float(e.get("deg", 0.0))))
        else:
            out.append(Edit.duplicate(int(e["duplicate"]), [float(v) / frame.scale for v in e.get("to", [0, 0, 0])]))
    return out


def edit(ctx: StageContext) -> None:
    from layerforge.assets.atomic import atomic_write_bytes
    from layerforge.assets.types import frames_to_gif, texture_to_png
    from layerforge.models.udc_nerf import render_views
    from layerforge.renderers.cameras import orbit_cameras

    cfg: EditConfig = ctx.typed("edit")
    model, objects = _trained(ctx)
    frame = ctx.load("frame")
    views = ctx.load("views")
    edits = _edits(cfg, frame)
    out = ctx.output("renders")
    out.mkdir(parents=True, exist_ok=True)
    test = ctx.load("test_views")
    edited = render_views(model, test, chunk_rays=cfg.chunk_rays, edits=edits)
    np.save(out / "test_edited.npy", edited.rgb.cpu().numpy())
    # opacity of everything but the background after the edits: 1 - prod_k (1 - alpha_k), k >= 1
    objects_alpha = 1.0 - (1.0 - edited.extras["component_alpha"][..., 1:].clamp(0, 1)).prod(-1)
    np.save(out / "test_edited_objects_alpha.npy", objects_alpha.cpu().numpy())
    for i, img in enumerate(edited.rgb.clamp(0, 1).cpu().numpy()):
        atomic_write_bytes(ctx.preview_path(f"edited_{test.names[i]}.png"), texture_to_png(img, srgb=True))
    # turntable round the scene centre at the training views' mean elevation and distance
    centres = torch.linalg.inv(views.cameras.world_to_camera.double())[:, :3, 3]
    dist = float(centres.norm(dim=-1).mean())
    elev = float(torch.rad2deg(torch.asin((centres[:, 2] / centres.norm(dim=-1)).clamp(-1, 1))).mean())
    n = cfg.turntable_frames
    fov = math.degrees(2 * math.atan(views.cameras.height / (2 * float(views.cameras.K[0, 1, 1]))))
    cams = orbit_cameras(torch.full((n,), elev), torch.arange(n) * (360.0 / n), dist, fov, views.cameras.width,
                         views.cameras.height)
    frames = render_views(model, cams, chunk_rays=cfg.chunk_rays, edits=edits).rgb.clamp(0, 1).cpu().numpy()
    for i, img in enumerate(frames):
        atomic_write_bytes(ctx.preview_path(f"turntable_{i:03d}.png"), texture_to_png(img, srgb=True))
    atomic_write_bytes(ctx.preview_path("turntable.gif"), frames_to_gif(frames, TURNTABLE_FRAME_MS))
    ctx.record(edits=len(edits), turntable_frames=n)


# ---- extract ----------------------------------------------------------------------------
def extract(ctx: StageContext) -> None:
    from layerforge.assets.types import LayeredAsset, Material, Part
    from layerforge.errors import OutputError
    from layerforge.models.fields.extract import extract_level_set
    from layerforge.models.udc_nerf.extract import component_color, component_density

    cfg: ExtractConfig = ctx.typed("extract")
    model, objects = _trained(ctx)
    frame = ctx.load("frame")
    parts = []
    failed = []
    names = list(objects["names"])
    boxes = [(np.full(3, -1.0), np.full(3, 1.0))] + list(zip(objects["lo"], objects["hi"]))
    for k, name in enumerate(["background", *names]):
        lo, hi = boxes[k]
        if k > 0:
            grow = EXTRACT_MARGIN_VOXELS * (hi - lo) / cfg.resolution
            lo, hi = lo - grow, hi + grow
        try:
            mesh = extract_level_set(component_density(model, k), lo, hi, resolution=cfg.resolution,
                                     level=cfg.density_threshold, color=component_color(model, k), device=ctx.device)
        except OutputError as err:
            log.warning("extract: %s has no surface (%s)", name, err.problem)
            failed.append(name)
            continue
        mesh.vertices = frame.apply(mesh.vertices).astype(np.float32)  # optimisation frame -> the user's world
        mesh.material = Material(name, base_color=[1.0, 1.0, 1.0, 1.0], roughness=0.8)
        parts.append(Part(name, mesh, layer="background" if k == 0 else "objects",
                          metadata={"instance": k, "usd_visibility_variants": k > 0}))
    if not parts:
        raise OutputError("no object has a surface above extract.density_threshold", "lower it or train longer")
    ctx.save("meshes", LayeredAsset("scene", parts, metadata={"method": "UDC-NeRF"}))
    ctx.record(meshes=len(parts), empty=failed)


# ---- export -----------------------------------------------------------------------------
def export(ctx: StageContext) -> None:
    from layerforge.assets.atomic import atomic_write_json
    from layerforge.assets.export import export_asset
    from layerforge.assets.frame import SCENE_FRAME_FILE, SceneFrame
    from layerforge.assets.types import LayeredAsset

    cfg: ExportConfig = ctx.typed("export")
    asset = ctx.load("meshes")
    staged = ctx.folder / "staged"
    export_asset(asset, staged, "scene", formats=tuple(cfg.formats))
    for part in asset.parts:  # one OBJ per object too, as DCC users import them one by one
        if "obj" in cfg.formats and part.name != "background":
            export_asset(LayeredAsset(part.name, [part]), staged / "objects", part.name, formats=("obj",))
    metrics = json.loads(ctx.input("metrics").read_text())
    atomic_write_json(staged / "metrics.json", metrics)
    _comparison_previews(ctx, cfg.preview_size)
    SceneFrame().save(staged / SCENE_FRAME_FILE)  # deliverables are in the user's world: identity
    ctx.publish(staged)


def _comparison_previews(ctx: StageContext, height: int) -> None:
    """previews/compare_<view>.png per held-out view: ground truth | ours | per-object alpha | edited."""
    from layerforge.assets.atomic import atomic_write_bytes
    from layerforge.assets.types import texture_to_png

    test = ctx.load("test_views")
    renders = ctx.load("test_renders")
    edited = np.load(ctx.input("renders") / "test_edited.npy")
    alpha = renders["component_alpha"][..., 1:]  # [B, H, W, K]
    palette = np.array([OBJECT_PALETTE[k % len(OBJECT_PALETTE)] for k in range(alpha.shape[-1])], np.float32)
    objects = np.clip((alpha[..., None] * palette).sum(-2), 0, 1)  # each object in its colour, by its alpha
    scale = max(1, round(height / test.cameras.height))
    for i, name in enumerate(test.names):
        strip = np.concatenate([test.images[i].numpy(), renders["rgb"][i], objects[i], np.clip(edited[i], 0, 1)], 1)
        strip = strip.repeat(scale, 0).repeat(scale, 1)  # nearest: the pixels the metrics saw
        atomic_write_bytes(ctx.preview_path(f"compare_{name}.png"), texture_to_png(strip, srgb=True))


_CONFIGS = {"model": ModelConfig}
STAGES = {
    "prepare": Stage("prepare", prepare, needs=(INPUT,), makes=("views", "test_views", "frame", "pseudo_background", "objects"),
                     schemas={"prepare": PrepareConfig}, description="read views, normalise, inpaint backgrounds"),
    "train": Stage("train", train, needs=("views", "objects", "pseudo_background"), makes=("model",),
                   config_keys=("model", "train"), schemas={**_CONFIGS, "train": TrainConfig},
                   description="fit UDC-NeRF (scene + per-object components)"),
    "evaluate": Stage("evaluate", evaluate, needs=("model", "objects", "test_views", "pseudo_background"),
                      makes=("metrics", "test_renders"), config_keys=("model", "evaluate"), schemas={**_CONFIGS, "evaluate": EvaluateConfig},
                      description="PSNR, SSIM, mIoU on held-out views"),
    "edit": Stage("edit", edit, needs=("model", "objects", "frame", "views", "test_views"), makes=("renders",),
                  config_keys=("model", "edit"), schemas={**_CONFIGS, "edit": EditConfig},
                  description="remove / move / rotate / duplicate objects, turntable"),
    "extract": Stage("extract", extract, needs=("model", "objects", "frame"), makes=("meshes",),
                     config_keys=("model", "extract"), schemas={**_CONFIGS, "extract": ExtractConfig},
                     description="one mesh per object by marching cubes"),
    "export": Stage("export", export, needs=("meshes", "metrics", "test_views", "test_renders", "renders"),
                    config_keys=("export",),
                    schemas={"export": ExportConfig}, description="GLB/OBJ/USD/.blend + metrics"),
}
