"""The ``layerpano3d`` pipeline: LayerPano3D, a prompt or a 360 degree panorama to layered 3D Gaussians.

    panorama   -> generated from ``prompt=`` (seamless, the seam checked) or read from ``input=``
                  (equirectangular 2:1 PNG / JPG / EXR, or a folder with ``pano.*`` and optionally
                  ``pano_depth.npy`` / ``pano_ids.png``), linear float; ``depth=`` / ``instances=``
                  checked against its size
    depth      -> the given depth, or 20 icosahedral (or 6 cube) tangent views through a monocular
                  depth model, their scale and shift solved jointly in Python and blended, metric
                  from the camera height; without a model, a room prior (logged)
    layering   -> instances (given ids, a panoptic segmenter with "stuff" dropped, or depth
                  discontinuities), instance depth = mean above its 25th percentile, exact 1-D
                  k-means with k = min(3, #instances), layers near to far in metric depth
    completion -> nearest layer first: the dilated masks of the layers removed so far inpainted
                  (diffusion or OpenCV) and the depth behind them completed from the outer layers
                  (planes + harmonic), one completed panorama per layer, the last the background
    gaussians  -> far to near, one set of 3D Gaussians per layer, initialised where that layer
                  reveals content, trained on 24 views of its completed panorama with the earlier
                  sets frozen (0.8 L1 + 0.2 D-SSIM, SH 3, 3DGS rates and densification)
    export     -> one Inria 3DGS PLY per layer and the merged scene, a coloured mesh per layer
                  (GLB / USD), layer masks, a walk-through from displaced centres (PNG + GIF),
                  metrics.json, scene_frame.json

The math lives in :mod:`layerforge.models.layerpano3d` and :mod:`layerforge.renderers.panorama`;
this module only wires stages. Deliverables are in the panorama's frame: the camera centre at
the origin, +Z up, the image's centre column along +X.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from layerforge.errors import ConfigError, InputError
from layerforge.pipelines.context import StageContext
from layerforge.pipelines.layerpano3d_config import (
    CompletionSection,
    DepthSection,
    ExportSection,
    GaussiansSection,
    LayeringSection,
    PanoramaSection,
)
from layerforge.pipelines.stage import INPUT, Stage

log = logging.getLogger("layerforge")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".exr")
DEPTH_NAME = "pano_depth.npy"
IDS_NAME = "pano_ids.png"


# ---- panorama -------------------------------------------------------------------------------
def read_panorama_image(path: Path) -> np.ndarray:
    """[H, W, 3] float32 linear RGB in [0, 1] of an equirectangular image file.

    PNG / JPG are sRGB (decoded to linear); EXR is linear radiance, scaled so its 99.5th
    percentile is 1 when brighter, then clipped (our images live in [0, 1]).
    """
    from layerforge.assets.types import srgb_to_linear

    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path.name} is not a panorama image ({suffix or 'no suffix'})",
                         f"pass an equirectangular {', '.join(IMAGE_SUFFIXES)} file")
    if suffix == ".exr":
        os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None or img.ndim != 3 or img.shape[2] < 3:
            raise InputError(f"{path.name} cannot be read as an RGB OpenEXR image", "pass a 3-channel EXR, PNG or JPG")
        rgb = img[..., 2::-1].astype(np.float32)  # BGR(A) -> RGB
        rgb = np.nan_to_num(rgb, nan=0.0, posinf=0.0, neginf=0.0).clip(0.0, None)
        top = float(np.percentile(rgb, 99.5))
        if top > 1.0:
            rgb = rgb / top
        return np.clip(rgb, 0.0, 1.0).astype(np.float32)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{path.name} cannot be read as an image ({err})", "pass a PNG, JPG or EXR panorama") from err
    return srgb_to_linear(arr).astype(np.float32)


def _panorama_files(src: Path, depth: str | None, instances: str | None) -> tuple[Path, Path | None, Path | None]:
    """The panorama image, and the depth / instance files (given, or ``pano_depth.npy`` / ``pano_ids.png`` beside it)."""
    if src.is_dir():
        images = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name != IDS_NAME
                        and not p.name.startswith("."))
        if len(images) != 1:
            raise InputError(f"{src} holds {len(images)} panorama images ({', '.join(p.name for p in images) or 'none'})",
                             "pass input=<the panorama file> or a folder with exactly one .png/.jpg/.exr besides pano_ids.png")
        image = images[0]
    else:
        image = src

    def beside(value: str | None, default: str, key: str) -> Path | None:
        if value:
            p = Path(value).expanduser()
            if not p.is_file():
                raise InputError(f"{key}={value} does not exist", f"pass an existing file with {key}=PATH, or leave it unset")
            return p.resolve()
        p = image.parent / default
        if p.is_file():
            log.info("layerpano3d: using %s beside the panorama", p.name)
            return p
        return None

    return image, beside(depth, DEPTH_NAME, "depth"), beside(instances, IDS_NAME, "instances")


def _downsample(arr: np.ndarray, height: int, mode: str) -> np.ndarray:
    import cv2

    interp = cv2.INTER_AREA if mode == "area" else cv2.INTER_NEAREST
    return cv2.resize(arr, (2 * height, height), interpolation=interp)


def panorama(ctx: StageContext) -> None:
    from layerforge.assets.atomic import atomic_write_bytes, atomic_write_json
    from layerforge.assets.types import texture_to_png

    cfg: PanoramaSection = ctx.typed("panorama")
    prompt = ctx.cfg.get("prompt")
    src = ctx.optional_input(INPUT)
    info: dict = {}
    arrays: dict[str, np.ndarray] = {}
    if src is None:
        if not prompt:
            raise InputError("layerpano3d needs a panorama or a prompt", 'pass input=pano.png or prompt="a living room"')
        rgb, info = _generate(ctx, cfg, str(prompt))
    else:
        if prompt:
            log.warning("layerpano3d: input= is set, so prompt= is ignored")
        image, depth_path, ids_path = _panorama_files(src, ctx.cfg.get("depth"), ctx.cfg.get("instances"))
        rgb = read_panorama_image(image)
        h, w = rgb.shape[:2]
        if w != 2 * h:
            raise InputError(f"{image.name} is {w}x{h}, not an equirectangular 2:1 panorama",
                             "pass a 360 x 180 degree panorama whose width is twice its height")
        if depth_path is not None:
            arrays["depth"] = _read_depth(depth_path, (h, w))
        if ids_path is not None:
            arrays["ids"] = _read_ids(ids_path, (h, w))
        if h > cfg.max_height:
            log.info("layerpano3d: panorama %dx%d downsampled to %dx%d (panorama.max_height)", w, h, 2 * cfg.max_height,
                     cfg.max_height)
            rgb = _downsample(rgb, cfg.max_height, "area")
            if "depth" in arrays:
                arrays["depth"] = _downsample(arrays["depth"], cfg.max_height, "nearest")
            if "ids" in arrays:
                arrays["ids"] = _downsample(arrays["ids"].astype(np.int32), cfg.max_height, "nearest").astype(np.int64)
        info = {"source": str(image), "depth_given": "depth" in arrays, "instances_given": "ids" in arrays}
    arrays["rgb"] = rgb.astype(np.float32)
    ctx.save("panorama", arrays)
    info.update(height=int(rgb.shape[0]), width=int(rgb.shape[1]))
    atomic_write_json(ctx.folder / "panorama.json", info)
    atomic_write_bytes(ctx.preview_path("panorama.png"), texture_to_png(rgb, srgb=True))


def _read_depth(path: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        d = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"depth file {path.name} cannot be read ({err})", "pass a float .npy of radial metres") from err
    d = np.asarray(d, dtype=np.float64).squeeze()
    if d.shape != shape:
        raise InputError(f"depth {path.name} is {d.shape[::-1] if d.ndim == 2 else d.shape}, the panorama {shape[::-1]}",
                         "pass a depth .npy of the panorama's size (H x W, radial metres)")
    bad = ~np.isfinite(d)
    if bad.any():
        raise InputError(f"depth {path.name} has {int(bad.sum())} NaN/Inf values", "fill or mask them before passing depth=")
    if (d <= 0).any():
        raise InputError(f"depth {path.name} has {int((d <= 0).sum())} values <= 0", "pass positive radial distances in metres")
    return d.astype(np.float32)


def _read_ids(path: Path, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            ids = np.asarray(im)
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"instances {path.name} cannot be read ({err})", "pass a single-channel PNG of instance ids") from err
    if ids.ndim == 3:
        raise InputError(f"instances {path.name} has {ids.shape[2]} channels", "pass a single-channel (8/16-bit) PNG, 0 = stuff")
    if ids.shape != shape:
        raise InputError(f"instances {path.name} is {ids.shape[1]}x{ids.shape[0]}, the panorama {shape[1]}x{shape[0]}",
                         "pass an instance id PNG of the panorama's size")
    return ids.astype(np.int64)


def _generate(ctx: StageContext, cfg: PanoramaSection, prompt: str) -> tuple[np.ndarray, dict]:
    from layerforge.models.guidance import PanoramaGenerator, seam_error
    from layerforge.pipelines.registry import guidance_options

    options = {**guidance_options("panorama_layerpano3d", cfg.options), "pretrained_model_name_or_path": cfg.model, "lora_name_or_path": cfg.lora,
               "prompt": prompt, "height": cfg.height, "width": cfg.width, "num_inference_steps": cfg.steps,
               "guidance_scale": cfg.guidance_scale, "seed": ctx.seed}
    if not cfg.model:
        raise ConfigError("prompt= needs a text-to-image model, and panorama.model is not set",
                          "set panorama.model to a Stable Diffusion folder (e.g. stabilityai/stable-diffusion-2-1-base), "
                          "or pass input=pano.png")
    gen = PanoramaGenerator(options, key="panorama.model")
    rgb = gen().numpy()
    seam, interior = seam_error(torch.from_numpy(rgb))
    ratio = seam / max(interior, 1e-12)
    if ratio > cfg.max_seam_ratio:
        raise InputError(f"the generated panorama's seam step is {ratio:.2f}x its interior column step "
                         f"(above panorama.max_seam_ratio={cfg.max_seam_ratio})",
                         "keep panorama.options.seamless=true and a width that is a multiple of 64")
    return rgb, {"prompt": prompt, "seam_error": seam, "interior_column_step": interior, "seam_ratio": ratio}


# ---- depth ----------------------------------------------------------------------------------
def depth(ctx: StageContext) -> None:
    from layerforge.assets.atomic import atomic_write_bytes, atomic_write_json
    from layerforge.assets.types import texture_to_png
    from layerforge.models.layerpano3d import depth_alignment as da

    cfg: DepthSection = ctx.typed("depth_estimation")
    pano = ctx.load("panorama")
    rgb = torch.from_numpy(pano["rgb"])
    H, W = rgb.shape[:2]
    info: dict = {}
    if "depth" in pano:
        d = torch.from_numpy(pano["depth"]).float()
        info["source"] = "given"
    elif cfg.model:
        from layerforge.models.guidance import DepthEstimator

        estimator = DepthEstimator(cfg.model, key="depth_estimation.model")
        bar = ctx.progress(total=len(da.tangent_cameras(cfg.layout, cfg.view_size, cfg.fov_deg)), desc="depth views")
        d, alignment = da.estimate_panorama_depth(rgb, estimator, layout=cfg.layout, view_size=cfg.view_size,
                                                  fov_deg=cfg.fov_deg, prediction=cfg.prediction,
                                                  progress=lambda i, n: bar.update(1))
        bar.close()
        d, scale = da.scale_to_camera_height(d, cfg.camera_height_m)
        info.update(source="estimated", layout=cfg.layout, alignment_rms=float(alignment.rms),
                    overlap_samples=int(alignment.pairs), metric_scale=float(scale),
                    view_scale=alignment.scale.tolist(), view_shift=alignment.shift.tolist())
    else:
        log.info("layerpano3d: no depth given and no depth.model set, so depth is a room prior (floor %.2f m below, "
                 "walls %.2f m away); set depth_estimation.model for a monocular estimate", cfg.camera_height_m, cfg.wall_distance_m)
        d = da.room_prior_depth(H, W, camera_height_m=cfg.camera_height_m, ceiling_height_m=cfg.ceiling_height_m,
                                wall_distance_m=cfg.wall_distance_m)
        info["source"] = "room prior"
    d = d.float()
    if not bool(torch.isfinite(d).all()) or not bool((d > 0).all()):
        raise InputError("the panorama depth has non-finite or non-positive values", "check depth= or depth_estimation.model")
    ctx.save("depth", {"depth": d.numpy()})
    info.update(min_m=float(d.min()), median_m=float(d.median()), max_m=float(d.max()))
    atomic_write_json(ctx.folder / "depth.json", info)
    atomic_write_bytes(ctx.preview_path("depth.png"), texture_to_png(_depth_colours(d.numpy()), srgb=False))


def _depth_colours(d: np.ndarray) -> np.ndarray:
    """A grey inverse-depth image [H, W, 3] (near bright) for previews."""
    inv = 1.0 / np.maximum(d, 1e-6)
    lo, hi = np.percentile(inv, 1), np.percentile(inv, 99)
    g = np.clip((inv - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.repeat(g[..., None], 3, axis=2).astype(np.float32)


# ---- layering -------------------------------------------------------------------------------
def layering(ctx: StageContext) -> None:
    from layerforge.assets.atomic import atomic_write_bytes, atomic_write_json
    from layerforge.assets.types import texture_to_png
    from layerforge.models.layerpano3d import layering as lay

    cfg: LayeringSection = ctx.typed("layering")
    pano = ctx.load("panorama")
    d = torch.from_numpy(ctx.load("depth")["depth"])
    H, W = d.shape
    labels: list[str] = []
    if "ids" in pano:
        ids = torch.from_numpy(pano["ids"])
        source = "given"
    elif cfg.segmenter:
        from layerforge.models.guidance import Segmenter

        segments = Segmenter(cfg.segmenter, key="layering.segmenter")(torch.from_numpy(pano["rgb"]))
        ids, labels = lay.instances_from_segments(segments, (H, W), min_pixels=cfg.min_pixels)
        source = "segmenter"
    else:
        log.info("layerpano3d: no instances given and no layering.segmenter set, so instances come from depth "
                 "discontinuities (objects touching the floor stay in the background)")
        ids = lay.instances_from_depth(d, jump=cfg.jump, min_fraction=cfg.min_fraction)
        source = "depth discontinuities"
    if cfg.max_layers == 0:
        ids = torch.zeros_like(ids)
    assignment = lay.assign_layers(ids, d, max_layers=max(cfg.max_layers, 1), min_pixels=cfg.min_pixels,
                                   min_ratio=cfg.min_ratio, percentile=cfg.percentile)
    masks = assignment.masks.bool()
    ctx.save("layers", {"ids": ids.numpy().astype(np.int64), "masks": masks.numpy()})
    summary = {"source": source, "labels": labels, "layers": int(masks.shape[0]),
               "instances": [{"id": int(i), "depth_m": float(dep), "layer": int(assignment.layer_of[i])}
                             for i, dep in zip(assignment.instances, assignment.depths)],
               "centres_m": [float(c) for c in assignment.centres]}
    atomic_write_json(ctx.folder / "layers.json", summary)
    for k in range(masks.shape[0]):
        m = masks[k].numpy().astype(np.float32)
        atomic_write_bytes(ctx.folder / "masks" / f"layer_{k:02d}.png", texture_to_png(np.repeat(m[..., None], 3, 2), srgb=False))
    atomic_write_bytes(ctx.preview_path("layers.png"), texture_to_png(_layer_colours(pano["rgb"], masks.numpy()), srgb=True))


LAYER_TINTS = np.array([[1.0, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.4, 1.0], [1.0, 0.8, 0.1]], np.float32)


def _layer_colours(rgb: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = rgb.copy() * 0.5
    for k in range(masks.shape[0]):
        out[masks[k]] = 0.5 * rgb[masks[k]] + 0.5 * LAYER_TINTS[k % len(LAYER_TINTS)]
    return out


# ---- completion -----------------------------------------------------------------------------
def completion(ctx: StageContext) -> None:
    from layerforge.assets.atomic import atomic_write_bytes
    from layerforge.assets.types import texture_to_png
    from layerforge.models.layerpano3d import completion as comp

    cfg: CompletionSection = ctx.typed("completion")
    rgb = torch.from_numpy(ctx.load("panorama")["rgb"])
    d = torch.from_numpy(ctx.load("depth")["depth"])
    masks = torch.from_numpy(ctx.load("layers")["masks"]).bool()
    K = masks.shape[0]
    H, W = d.shape
    inpainter = _inpainter(cfg)
    radius = comp.scaled_radius(cfg.mask_dilation_px, W)
    # P^(0) is the panorama; P^(k+1) is the panorama with depth layers 0..k (the nearest k + 1) removed:
    # the union of their dilated masks filled from what is left around it. Filling from the panorama
    # each time (not from P^(k)) keeps an earlier fill's guesses out of the later rings, so the
    # background behind everything is completed from the background alone.
    rgbs, depths, holes = [rgb], [d], []
    removed = torch.zeros(H, W, dtype=torch.bool)
    union = torch.zeros(H, W, dtype=torch.bool)
    for k in ctx.progress(range(K), total=K, desc="completion"):
        removed |= masks[k]
        union |= comp.dilate_mask(masks[k], radius)
        behind = torch.where(removed, d, torch.zeros_like(d))
        filled_rgb = comp.inpaint_panorama(inpainter, rgb, union, prompt=cfg.prompt or None)
        filled_d = comp.complete_depth(d, union, behind=behind, ring_px=cfg.ring_px, max_planes=cfg.max_planes,
                                       seed=ctx.seed + k)
        rgbs.append(filled_rgb.float())
        depths.append(filled_d.float())
        holes.append(union.clone())
        atomic_write_bytes(ctx.preview_path(f"behind_layer_{k:02d}.png"), texture_to_png(filled_rgb.numpy(), srgb=True))
    ctx.save("completed", {"rgb": torch.stack(rgbs).numpy(), "depth": torch.stack(depths).numpy(),
                           "holes": (torch.stack(holes) if holes else torch.zeros(0, H, W, dtype=torch.bool)).numpy()})


def _inpainter(cfg: CompletionSection):
    from layerforge.models.guidance import Inpainter
    from layerforge.pipelines.registry import guidance_options

    options = {**guidance_options("inpaint_sd2", cfg.options), "pretrained_model_name_or_path": cfg.inpaint_model, "strength": cfg.strength,
               "num_inference_steps": cfg.steps, "prefill": cfg.prefill, "mask_dilation_px": 0}
    return Inpainter(options, key="completion.inpaint_model")


def training_panoramas(completed: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rgb, depth, reveal mask) per Gaussian layer, far to near.

    Gaussian layer 0 is the background (every depth layer removed, every pixel revealed); layer
    t >= 1 is the panorama with depth layers ``< K - t`` removed, revealing depth layer ``K - t``
    and what it hides inside the hole its removal left (the union of the dilated masks of depth
    layers ``0..K - t``: everywhere it differs from the panorama behind it).
    """
    rgb, dep, holes = completed["rgb"], completed["depth"], completed["holes"]
    K = len(holes)
    out = [(rgb[K], dep[K], np.ones(dep.shape[1:], dtype=bool))]
    for t in range(1, K + 1):
        k = K - t
        out.append((rgb[k], dep[k], holes[k].astype(bool)))
    return out


# ---- gaussians ------------------------------------------------------------------------------
def _layer_file(ctx: StageContext, t: int) -> Path:
    return ctx.folder / "layers" / f"layer_{t:02d}.pt"


def gaussians(ctx: StageContext) -> None:
    from layerforge.assets.atomic import atomic_path

    cfg: GaussiansSection = ctx.typed("gaussians")
    layers = training_panoramas(ctx.load("completed"))

    def train(t: int) -> None:
        state = _train_layer(ctx, cfg, t, layers[t], [_load_layer(ctx, cfg, s) for s in range(t)])
        with atomic_path(_layer_file(ctx, t)) as tmp:
            torch.save(state, tmp)

    done = ctx.each(list(range(len(layers))), train, key=lambda t: f"layer_{t:02d}", desc="gaussian layers")
    if len(done) != len(layers):
        raise InputError(f"{len(layers) - len(done)} of {len(layers)} Gaussian layers failed", "see the errors above")
    arrays = {}
    for t in range(len(layers)):
        for name, value in torch.load(_layer_file(ctx, t), weights_only=True).items():
            arrays[f"layer_{t:02d}/{name}"] = value.numpy()
    ctx.save("gaussians", arrays)


def _load_layer(ctx: StageContext, cfg: GaussiansSection, t: int):
    from layerforge.models.layerpano3d.gaussians import model_from_state

    return model_from_state(torch.load(_layer_file(ctx, t), weights_only=True), cfg.sh_degree)


def _train_layer(ctx: StageContext, cfg: GaussiansSection, t: int, layer, earlier) -> dict:
    from gsplat.strategy import DefaultStrategy

    from layerforge.models.gaussians import GsplatPolicy
    from layerforge.models.layerpano3d import gaussians as lg
    from layerforge.models.schedules import ExponentialDecay
    from layerforge.models.view_sampling import DatasetViews
    from layerforge.pipelines.optimise import OptimiseConfig, optimise

    rgb, dep, reveal = (torch.from_numpy(np.asarray(a)) for a in layer)
    model = lg.init_layer_gaussians(rgb, dep, reveal, stride=cfg.stride, sh_degree=cfg.sh_degree).to(ctx.device)
    frozen = lg.FrozenGaussians(earlier, (cfg.sh_degree + 1) ** 2).to(ctx.device)
    views = lg.training_views(rgb, lg.training_cameras(cfg.view_size))
    lr = {k: (ExponentialDecay(*v) if isinstance(v, (list, tuple)) and len(v) == 3 and k == "means" else v)
          for k, v in cfg.lr.items()}
    steps = cfg.steps_first if t == 0 else cfg.steps_later
    densify = {"refine_start_iter": 500, "refine_every": 100, "grow_grad2d": 2e-4, "refine_stop_iter": 15000,
               "reset_every": 10000, "prune_opa": 0.01, "grow_scale3d": 0.01, **cfg.densify, "verbose": False}
    policy = GsplatPolicy(DefaultStrategy(**densify), scene_scale=1.0, first_iteration=1)
    term = lg.PhotometricLoss(frozen, lambda_dssim=cfg.lambda_dssim, max_sh_degree=cfg.sh_degree, sh_every=cfg.sh_every,
                              background=cfg.background, backend=cfg.backend)
    log.info("layerpano3d: Gaussian layer %d: %d initial Gaussians, %d frozen, %d steps", t, len(model), len(frozen), steps)

    def preview(step: int) -> None:
        _training_preview(ctx, model, frozen, views, cfg, t, step)

    optimise(ctx, model, model.param_groups(lr), [term], DatasetViews(views, 1, device=ctx.device),
             OptimiseConfig(steps=steps, checkpoint_every=min(cfg.checkpoint_every, steps)), policy=policy,
             preview=preview, subfolder=f"layer_{t:02d}", desc=f"gaussians layer {t}")
    return lg.layer_state(model.cpu())


def _training_preview(ctx: StageContext, model, frozen, views, cfg: GaussiansSection, t: int, step: int) -> None:
    from layerforge.assets.atomic import atomic_write_bytes
    from layerforge.assets.types import texture_to_png
    from layerforge.models.layerpano3d.gaussians import render_gaussian_layers

    idx = torch.arange(0, len(views), max(1, len(views) // 4))[:4]
    with torch.no_grad():
        out = render_gaussian_layers(model, frozen, views.cameras[idx], sh_degree=cfg.sh_degree, background=cfg.background,
                            backend=cfg.backend)
    top = torch.cat(list(views.images[idx]), 1)
    bottom = torch.cat(list(out.rgb.cpu().clamp(0, 1)), 1)
    atomic_write_bytes(ctx.preview_path(f"gaussians_layer_{t:02d}_{step:06d}.png"),
                       texture_to_png(torch.cat([top, bottom], 0).numpy(), srgb=True))


# ---- export ---------------------------------------------------------------------------------
def layer_models(arrays: dict, sh_degree: int) -> list:
    """The trained :class:`GaussianModel` per Gaussian layer (far to near) from the ``gaussians`` artifact."""
    from layerforge.models.layerpano3d.gaussians import model_from_state

    names = sorted({k.split("/")[0] for k in arrays})
    return [model_from_state({k.split("/")[1]: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()
                              if k.startswith(n + "/")}, sh_degree) for n in names]


def _cloud(model):
    from layerforge.assets.types import GaussianCloud

    p = {k: v.detach().cpu().numpy() for k, v in model.params.items()}
    return GaussianCloud(p["means"], p["quats"], p["scales"], p["opacities"], np.concatenate([p["sh0"], p["shN"]], 1))


def export(ctx: StageContext) -> None:
    from layerforge.assets.atomic import atomic_write_bytes, atomic_write_json
    from layerforge.assets.export import export_asset
    from layerforge.assets.frame import SCENE_FRAME_FILE, SceneFrame
    from layerforge.assets.splat_ply import merge_gaussian_parts, write_splat_ply
    from layerforge.assets.types import LayeredAsset, Part, texture_to_png
    from layerforge.renderers.panorama import equirect_rgbd_to_mesh

    cfg: ExportSection = ctx.typed("export")
    gcfg: GaussiansSection = ctx.typed("gaussians")
    completed = ctx.load("completed")
    layer_masks = ctx.load("layers")["masks"].astype(bool)
    models = layer_models(ctx.load("gaussians"), gcfg.sh_degree)
    K = len(models) - 1
    staged = ctx.folder / "staged"
    parts = []
    for t, model in enumerate(models):
        name = _layer_name(t)
        parts.append(Part(name, _cloud(model), layer=name))
        write_splat_ply(staged / "layers" / f"{name}.ply", parts[-1].geometry)
    write_splat_ply(staged / "scene.ply", merge_gaussian_parts(parts))

    meshes = []
    for t, (rgb, dep, _reveal) in enumerate(training_panoramas(completed)):
        keep = np.ones(dep.shape, bool) if t == 0 else layer_masks[K - t]
        mesh = equirect_rgbd_to_mesh(torch.from_numpy(rgb), torch.from_numpy(dep), mask=torch.from_numpy(keep),
                                     stride=cfg.mesh_stride, max_stretch=cfg.max_stretch)
        if len(mesh.faces):
            meshes.append(Part(_layer_name(t), mesh, layer=_layer_name(t)))
    export_asset(LayeredAsset("layers", meshes, metadata={"method": "LayerPano3D", "frame": "panorama"}),
                 staged / "meshes", "layers", formats=cfg.formats)
    for k in range(layer_masks.shape[0]):
        m = layer_masks[k].astype(np.float32)
        atomic_write_bytes(staged / "masks" / f"depth_layer_{k:02d}.png", texture_to_png(np.repeat(m[..., None], 3, 2), srgb=False))
    SceneFrame().save(staged / SCENE_FRAME_FILE)
    metrics = _walkthrough(ctx, models, gcfg, cfg, staged)
    metrics.update(gaussians={_layer_name(t): len(m) for t, m in enumerate(models)},
                   layers=K, mesh_faces={p.name: len(p.geometry.faces) for p in meshes})
    metrics["training_psnr"] = _training_psnr(models, completed, gcfg)
    atomic_write_json(staged / "metrics.json", metrics)
    ctx.publish(staged)


def _layer_name(t: int) -> str:
    """``layer_00_background`` for the background, ``layer_<t>`` (far to near) for the rest."""
    return "layer_00_background" if t == 0 else f"layer_{t:02d}"


def _training_psnr(models, completed, gcfg: GaussiansSection) -> dict[str, float]:
    """PSNR of each cumulative layer stack on its own 24 training views (linear RGB)."""
    from layerforge.models.image_metrics import psnr
    from layerforge.models.layerpano3d import gaussians as lg

    out = {}
    size = min(gcfg.view_size, 128)
    for t, (rgb, _dep, _rev) in enumerate(training_panoramas(completed)):
        views = lg.training_views(torch.from_numpy(rgb), lg.training_cameras(size))
        frozen = lg.FrozenGaussians(models[: t + 1], (gcfg.sh_degree + 1) ** 2)
        with torch.no_grad():
            r = lg.render_gaussian_layers(None, frozen, views.cameras, sh_degree=gcfg.sh_degree, background=gcfg.background,
                                 backend=gcfg.backend)
        out[_layer_name(t)] = round(psnr(r.rgb.clamp(0, 1), views.images), 3)
    return out


def walkthrough_cameras(offsets_m: list[float], frames: int, size: int, fov_deg: float = 90.0):
    """Cameras on horizontal circles of radius ``offsets_m`` round the origin, each looking outwards
    along its own yaw (a walk round the room), ``frames`` per circle."""
    from layerforge.renderers.cameras import Camera
    from layerforge.renderers.panorama import pano_cameras

    cams = []
    for r in offsets_m:
        for i in range(frames):
            yaw = 360.0 * i / frames
            c = (r * math.cos(math.radians(yaw)), r * math.sin(math.radians(yaw)), 0.0)
            cams.append(pano_cameras([yaw], [0.0], [fov_deg], size, size, center=c))
    return Camera.cat(cams)


def _walkthrough(ctx: StageContext, models, gcfg: GaussiansSection, cfg: ExportSection, staged: Path) -> dict:
    from layerforge.assets.atomic import atomic_write_bytes
    from layerforge.assets.types import frames_to_gif, linear_to_srgb, texture_to_png
    from layerforge.models.layerpano3d import gaussians as lg

    cams = walkthrough_cameras(cfg.walk_offsets_m, cfg.walk_frames, cfg.preview_size)
    frozen = lg.FrozenGaussians(models, (gcfg.sh_degree + 1) ** 2)
    frames = []
    with torch.no_grad():
        for i in ctx.progress(range(len(cams)), total=len(cams), desc="walk-through"):
            out = lg.render_gaussian_layers(None, frozen, cams[[i]], sh_degree=gcfg.sh_degree, background=gcfg.background,
                                   backend=gcfg.backend)
            frames.append(out.rgb[0].clamp(0, 1).cpu())
    strip = torch.cat(frames[:: max(1, len(frames) // 6)][:6], 1).numpy()
    atomic_write_bytes(staged / "previews" / "walkthrough.png", texture_to_png(strip, srgb=True))
    gif = (np.clip(linear_to_srgb(torch.stack(frames).numpy()), 0, 1) * 255).round().astype(np.uint8)
    atomic_write_bytes(staged / "previews" / "walkthrough.gif", frames_to_gif(gif, 120))
    atomic_write_bytes(ctx.preview_path("walkthrough.png"), texture_to_png(strip, srgb=True))
    return {"walkthrough": {"offsets_m": list(cfg.walk_offsets_m), "frames": len(frames)}}


STAGES = {
    "panorama": Stage("panorama", panorama, needs=(INPUT,), optional_inputs=(INPUT,), makes=("panorama",),
                      config_keys=("panorama", "prompt", "depth", "instances"),
                      schemas={"panorama": PanoramaSection},
                      description="generate (seamless) or read the equirectangular panorama, linear"),
    "depth": Stage("depth", depth, needs=("panorama",), makes=("depth",), config_keys=("depth_estimation",),
                   schemas={"depth_estimation": DepthSection},
                   description="given, or tangent views through a depth model aligned in Python, or a room prior"),
    "layering": Stage("layering", layering, needs=("panorama", "depth"), makes=("layers",), config_keys=("layering",),
                      schemas={"layering": LayeringSection},
                      description="instances, their depths, k-means into at most 3 layers near to far"),
    "completion": Stage("completion", completion, needs=("panorama", "depth", "layers"), makes=("completed",),
                        config_keys=("completion",), schemas={"completion": CompletionSection},
                        description="RGB and depth completed behind each layer, nearest first"),
    "gaussians": Stage("gaussians", gaussians, needs=("completed",), makes=("gaussians",), config_keys=("gaussians",),
                       schemas={"gaussians": GaussiansSection},
                       description="one set of 3D Gaussians per layer, far to near, earlier layers frozen"),
    "export": Stage("export", export, needs=("completed", "layers", "gaussians"), makes=(), config_keys=("export",),
                    schemas={"export": ExportSection, "gaussians": GaussiansSection},
                    description="3DGS PLY per layer and merged, meshes per layer, walk-through, metrics"),
}
