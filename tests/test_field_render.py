"""End to end: a composed field fitted to rasterized views of a two-object scene.

A red box and a blue sphere are rendered by our mesh rasterizer (fixed light, so the shading
is view-independent) into 20 training and 4 held-out views with per-object masks from the
visible face ids. Two small hash-grid object fields are composed by density sum (UDC-NeRF)
or by SDF minimum (ObjectSDF++/DP-Recon: VolSDF density, learnt beta, occlusion-aware object
opacity, eikonal term) and fitted with RGB MSE + per-object mask BCE on random rays;
held-out PSNR, per-object mask IoU and camera-z depth against the rasterizer's must clear
the bounds below, in under a minute each.

Measured (seeds 0-3, one thread on a shared 2-core machine, 2026-12-01, fitted through the
engine and optimise(); an all-black image scores 15.9 dB, the mean training image 19.0 dB):
- density sum: PSNR 34.1-36.0 dB, mask IoU box 0.980-0.982 / sphere 0.973-0.976, median depth
  error 2.3-2.8 cm, 17-18 s per fit.
- SDF min: PSNR 30.9-34.1 dB, IoU box 0.896-0.952 / sphere 0.921-0.965, depth error
  2.1-2.8 cm, mean eikonal residual 0.047-0.052, beta 0.1 -> 0.007-0.015 m, 22-25 s per fit.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from engine_toy import run_one_stage

from layerforge.models.fields import (
    ComposedDensityField,
    ComposedSDFField,
    DensityField,
    DensityFieldConfig,
    EncodingConfig,
    HashGridConfig,
    SamplerConfig,
    SDFField,
    SDFFieldConfig,
    render_field,
)
from layerforge.models.fields.losses import (
    EikonalLoss,
    ObjectMaskLoss,
    RGBLoss,
    eikonal_residuals,
)
from layerforge.models.fields.mlp_fields import VOLSDF_BETA_INIT
from layerforge.models.optimisation import ParamGroup
from layerforge.models.view_sampling import RayBatches
from layerforge.pipelines.optimise import OptimiseConfig, optimise
from layerforge.renderers.camera_set import CameraSet
from layerforge.renderers.cameras import Camera, orbit_cameras
from layerforge.renderers.mesh import rasterize, render_mesh

# Scene and views
RES = 48  # image side, pixels
N_TRAIN, N_TEST = 20, 4
FOV_DEG = 40.0
DISTANCE = 2.6  # metres from the origin
SCENE_BOX = ((-0.7, -0.6, -0.45), (0.7, 0.6, 0.45))  # metres, holds both objects
LIGHT_DIR = (0.4, -0.3, 1.0)  # fixed world light: Lambertian shading independent of the view
BOX_COLOUR, SPHERE_COLOUR = (0.85, 0.25, 0.2), (0.2, 0.35, 0.9)

# Fit (Instant-NGP's Adam lr 1e-2, betas (0.9, 0.99), eps 1e-15)
STEPS = 200
RAYS_PER_STEP = 512
LR = 1e-2
MASK_WEIGHT = 0.1  # per-object opacity BCE next to RGB MSE
TRAIN_SAMPLER = SamplerConfig(num_samples=24, perturb=True)  # ~6 cm intervals through the box
EVAL_SAMPLER = SamplerConfig(num_samples=64)

# SDF variant (DP-Recon / ObjectSDF++): eikonal weight 0.1 (DP-Recon) on random box points;
# each object starts as a sphere of this radius at the box centre (metres, ours).
EIKONAL_WEIGHT = 0.1
EIKONAL_POINTS = 1024
SDF_INIT_RADIUS = 0.3

# Bounds: the measured figures (module docstring) minus a margin for other machines and seeds.
BOUNDS = {"density": {"psnr": 30.0, "iou": 0.9}, "sdf": {"psnr": 26.0, "iou": 0.8}}
MAX_EIKONAL_RESIDUAL = 0.2
# ~ one training interval. Measured 2.4-2.8 cm, the learnt surface sitting about half an
# interval deep (the midpoint quadrature cannot place it finer); ray distance instead of
# camera z measured 4.8 cm here (objects near the image centre).
MAX_DEPTH_ERROR_M = 0.05
MAX_SECONDS = 60.0
# One thread, not two: the ops are small, and with another job on the 2 shared cores two
# OpenMP threads made this fit 2.7x slower than one (46 s vs 17 s wall; a dense-grid variant
# 53 s vs 5.6 s), so one thread keeps the time bound robust.
FIT_THREADS = 1


def _as_rgb(out) -> torch.Tensor:
    """render_mesh returns a dict today and a RenderOutput soon; take rgb from either."""
    return out["rgb"] if isinstance(out, dict) else out.rgb


def _scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Vertices [V, 3], faces [F, 3], vertex colours [V, 3], and the box's face count."""
    box = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    box.apply_translation((-0.3, -0.15, 0.0))
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    sphere.apply_translation((0.3, 0.2, 0.0))
    v = np.concatenate([box.vertices, sphere.vertices])
    f = np.concatenate([box.faces, sphere.faces + len(box.vertices)])
    col = np.concatenate([
        np.tile(BOX_COLOUR, (len(box.vertices), 1)),
        np.tile(SPHERE_COLOUR, (len(sphere.vertices), 1)),
    ])
    t = lambda a, dt: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)  # noqa: E731
    return t(v, torch.float32), t(f, torch.long), t(col, torch.float32), len(box.faces)


def _views() -> tuple[Camera, Camera]:
    az = torch.arange(N_TRAIN, dtype=torch.float32) * (360.0 / N_TRAIN)
    el = torch.where(torch.arange(N_TRAIN) % 2 == 0, 20.0, 45.0)
    train = orbit_cameras(el, az, DISTANCE, FOV_DEG, RES, RES)
    az_t = torch.tensor([40.0, 130.0, 220.0, 310.0]) + 0.5 * 360.0 / N_TRAIN
    test = orbit_cameras(torch.full((N_TEST,), 32.0), az_t, DISTANCE, FOV_DEG, RES, RES)
    return train, test


def _ground_truth(cams: Camera, v, f, col, n_box_faces) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """rgb [B, H, W, 3] from render_mesh; per-object visible masks [B, H, W, 2] from face ids;
    camera-z depth [B, H, W] of the visible surface (0 where empty)."""
    rgb = _as_rgb(render_mesh(v, f, cams, vertex_colors=col, light_dir=torch.tensor(LIGHT_DIR), background=0.0))
    frags = rasterize(v, f, cams)
    fid = frags.face_id
    masks = torch.stack([(fid >= 0) & (fid < n_box_faces), fid >= n_box_faces], -1).float()
    return rgb.detach(), masks, frags.depth


def _make_field(kind: str) -> ComposedDensityField | ComposedSDFField:
    """Two small hash-grid object fields, composed by density sum or by SDF minimum."""
    grid = HashGridConfig(
        num_levels=6, features_per_level=2, log2_hashmap_size=14, base_resolution=8, max_resolution=64
    )
    enc = EncodingConfig("hashgrid", grid)
    sizes = dict(encoding=enc, hidden=(32,), geo_features=15, color_hidden=(32,), view_dependent=False)
    if kind == "density":
        return ComposedDensityField([DensityField(SCENE_BOX, DensityFieldConfig(**sizes)) for _ in range(2)])
    cfg = SDFFieldConfig(**sizes, sphere_radius=SDF_INIT_RADIUS)
    return ComposedSDFField([SDFField(SCENE_BOX, cfg) for _ in range(2)], beta_init=VOLSDF_BETA_INIT)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10.0 * torch.log10(F.mse_loss(a, b)))


def _iou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    p, g = pred > 0.5, gt > 0.5
    return float((p & g).sum()) / max(float((p | g).sum()), 1.0)


def fit_two_object_scene(seed: int = 0, kind: str = "density", run_dir: Path | None = None) -> dict[str, float]:
    """Fit and evaluate a density-sum (``kind="density"``) or SDF-min (``"sdf"``) composition.

    The fit is one stage run by the engine through :func:`~layerforge.pipelines.optimise.optimise`
    (the substrate every lifting pipeline uses): a CameraSet of the training views, RayBatches,
    and RGB + object-mask (+ eikonal) loss terms, checkpointed in ``run_dir``.

    Returns held-out psnr (dB), iou_box, iou_sphere, depth_mae_m (median absolute camera-z
    error against the rasterizer, metres), fit_s / total_s / cpu_s (seconds), and for SDF
    fields beta (learnt VolSDF beta, metres) and eikonal (mean ||grad d| - 1| in the box).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    v, f, col, n_box = _scene()
    train, test = _views()
    rgb_tr, mask_tr, _ = _ground_truth(train, v, f, col, n_box)
    rgb_te, mask_te, depth_te = _ground_truth(test, v, f, col, n_box)
    ids = (mask_tr[..., 0] + 2 * mask_tr[..., 1]).long()  # instance ids: 0 empty, 1 box, 2 sphere
    views = CameraSet(train, rgb_tr, ids)

    field = _make_field(kind)
    terms = [RGBLoss(TRAIN_SAMPLER), ObjectMaskLoss(TRAIN_SAMPLER, weight=MASK_WEIGHT)]
    if kind == "sdf":
        terms.append(EikonalLoss(EIKONAL_POINTS, weight=EIKONAL_WEIGHT))

    def fit(ctx):
        groups = [ParamGroup("field", list(field.parameters()), LR, betas=(0.9, 0.99), eps=1e-15)]
        optimise(ctx, field, groups, terms, RayBatches(views, RAYS_PER_STEP, objects=2),
                 OptimiseConfig(steps=STEPS, checkpoint_every=STEPS))

    run_dir = run_dir or Path(tempfile.mkdtemp()) / "run"
    t_fit = time.perf_counter()
    run_one_stage(fit, run_dir, "fields", seed)
    fit_s = time.perf_counter() - t_fit
    field.eval()
    with torch.no_grad():
        out = render_field(field, test, EVAL_SAMPLER)
    oa = out.extras["object_alpha"]
    # camera-z depth against the rasterizer's, where both see a surface (interior pixels)
    both = (mask_te.sum(-1) > 0.5) & (out.alpha[..., 0] > 0.95)
    extra = {}
    if kind == "sdf":
        lo, hi = torch.tensor(SCENE_BOX[0]), torch.tensor(SCENE_BOX[1])
        pts = lo + (hi - lo) * torch.rand(4096, 3, generator=torch.Generator().manual_seed(seed))
        extra = {
            "beta": float(field.laplace.beta.detach()),
            "eikonal": float(eikonal_residuals(field, pts, create_graph=False).abs().mean()),
        }
    return {
        **extra,
        "psnr": _psnr(out.rgb.clamp(0, 1), rgb_te),
        "iou_box": _iou(oa[..., 0], mask_te[..., 0]),
        "iou_sphere": _iou(oa[..., 1], mask_te[..., 1]),
        "depth_mae_m": float((out.depth[..., 0] - depth_te)[both].abs().median()),
        "fit_s": fit_s,
        "total_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
    }


@pytest.mark.parametrize("kind", ["density", "sdf"])
def test_composed_field_fits_a_rasterized_two_object_scene(kind, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(FIT_THREADS)
    try:
        m = fit_two_object_scene(kind=kind, run_dir=tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    msg = ", ".join(f"{k}={v:.3f}" for k, v in m.items())
    b = BOUNDS[kind]
    assert m["psnr"] >= b["psnr"], msg
    assert m["iou_box"] >= b["iou"] and m["iou_sphere"] >= b["iou"], msg
    assert m["depth_mae_m"] <= MAX_DEPTH_ERROR_M, msg
    assert m["total_s"] < MAX_SECONDS, msg
    if kind == "sdf":
        assert m["beta"] < VOLSDF_BETA_INIT, msg  # the surface sharpened
        assert m["eikonal"] <= MAX_EIKONAL_RESIDUAL, msg


if __name__ == "__main__":  # measure: python tests/test_field_render.py [density|sdf] [seed]
    import sys

    torch.set_num_threads(FIT_THREADS)
    kind_arg = sys.argv[1] if len(sys.argv) > 1 else "density"
    print(fit_two_object_scene(int(sys.argv[2]) if len(sys.argv) > 2 else 0, kind_arg))
