"""GALA's pose-guided SDS: the tiny random SD + ControlNet through the pipeline, and an oracle prior.

The oracle's noise prediction is exact for one known clean latent: the (normals, coverage)
render of a known target body (the canonical body scaled 1.2x about its centre) at a fixed
canonical view. SDS under it must move the DMTet human layer toward that target (its
silhouette IoU with the target's rises, the latent error falls), which a wrong sign, a detached
render or a broken ControlNet path would not do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cli_runs import run_cli

S = 16  # latent size of the tiny models


@pytest.mark.slow
def test_tiny_controlnet_runs_the_pose_guided_sds_in_the_pipeline(tmp_path, tiny_models):
    """Geometry (normal + mask latent) and texture (RGB through the VAE) SDS, both ControlNet-guided."""
    proc = run_cli("run", "gala", f"out={tmp_path}", "run=sds", "pipeline.stages=[normalise,segment,canonicalise,geometry,texture]",
                   "geometry.grid_resolution=24", "geometry.steps=86", "geometry.init_steps=80", "geometry.resolution=48",
                   "segment.resolution=48", "segment.vote_resolution=96", f"geometry.prior_model={tiny_models.sd}",
                   f"geometry.controlnet={tiny_models.controlnet}", f"+geometry.prior.latent_size={S // 2}",
                   "geometry.sds_resolution=32", "texture.steps=3", "texture.resolution=32", "texture.texture_size=32",
                   "device=cpu", "quiet=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(ln) for ln in (tmp_path / "gala" / "sds" / "stages" / "geometry" / "metrics.jsonl")
            .read_text().splitlines()]
    sds = [r["sds"] for r in rows if "sds" in r]
    assert len(sds) == 6 and all(np.isfinite(v) and v > 0 for v in sds)  # on from the end of the initialisation
    assert all(np.isfinite(r["total"]) for r in rows)
    rows = [json.loads(ln) for ln in (tmp_path / "gala" / "sds" / "stages" / "texture" / "metrics.jsonl")
            .read_text().splitlines()]
    tex = [r["texture_sds"] for r in rows]
    assert len(tex) == 3 and all(np.isfinite(v) and v > 0 for v in tex)


def _fixed_batch(space, cams, keypoints):
    from layerforge.models.gala.views import ViewBatch

    return {"seed": 0, "canonical": ViewBatch(cams, torch.zeros(1), torch.zeros(1), ["body"]), "keypoints": keypoints}


@pytest.mark.slow
def test_sds_under_an_oracle_moves_the_human_layer_toward_a_known_target(tiny_models, oracle_cls, body_model,
                                                                            scan_truth):
    from layerforge.models.dmtet import DMTetConfig
    from layerforge.models.gala.canonical import CanonicalSpace, pose_body
    from layerforge.models.gala.losses import (
        InitSDFLoss,
        PoseGuidedSDS,
        init_sdf_samples,
    )
    from layerforge.models.gala.model import GalaLayers
    from layerforge.models.guidance import ControlNetSDSGuidance
    from layerforge.renderers.cameras import orbit_cameras
    from layerforge.renderers.layers import render_layers

    torch.manual_seed(0)
    space = CanonicalSpace(body_model)
    target_pose = pose_body(body_model, torch.from_numpy(scan_truth["betas"]), torch.from_numpy(scan_truth["pose"]))
    lo, hi = space.body.vertices.min(0).values - 0.1, space.body.vertices.max(0).values + 0.1
    layers = GalaLayers(torch.stack([lo, hi]), DMTetConfig(grid_resolution=32, hash_log2_size=12), space, target_pose)
    pts, sdf = init_sdf_samples(space.body.vertices, body_model.faces, torch.stack([lo, hi]), torch.Generator().manual_seed(0))
    init = InitSDFLoss(pts, sdf, 4096)
    opt = torch.optim.Adam(layers.parameters(), lr=0.01)
    for s in range(100):
        loss = init(layers, {"seed": s}, s, {"log": {}})
        opt.zero_grad()
        loss.backward()
        opt.step()

    cams = orbit_cameras(5.0, -90.0, 2.6, 40.0, 64, 64, target=(lo + hi) / 2)
    centre = (lo + hi) / 2
    big = (space.body.vertices - centre) * 1.2 + centre
    with torch.no_grad():
        t_img = render_layers([big], [body_model.faces], cams)
        t_sil = t_img.alpha[0, ..., 0] > 0.5
    target = torch.nn.functional.interpolate(torch.cat([t_img.normals, t_img.alpha], -1).permute(0, 3, 1, 2), (S, S),
                                             mode="bilinear", align_corners=False) * 2 - 1
    guidance = ControlNetSDSGuidance({
        "pretrained_model_name_or_path": str(tiny_models.sd), "controlnet_name_or_path": str(tiny_models.controlnet),
        "device": "cpu", "latent_size": S, "latent_mode": "direct", "guidance_scale": 7.5, "weighting": "dreamfusion",
    })
    guidance.unet = oracle_cls(target, guidance.alphas_cumprod)
    term = PoseGuidedSDS(guidance, {"human": "a person", "object": "a person wearing a jacket"})
    kp = space.body.keypoints[list(body_model.openpose18)]
    batch = _fixed_batch(space, cams, kp)

    def measure() -> tuple[float, float]:
        with torch.no_grad():
            m = layers.meshes()
            img = render_layers([m.canonical["human"]], [m.faces["human"]], cams)
            lat = torch.nn.functional.interpolate(torch.cat([img.normals, img.alpha], -1).permute(0, 3, 1, 2), (S, S),
                                                  mode="bilinear", align_corners=False) * 2 - 1
            sil = img.alpha[0, ..., 0] > 0.5
        return float((lat - target).pow(2).mean()), float((sil & t_sil).sum() / (sil | t_sil).sum())

    err0, iou0 = measure()
    opt = torch.optim.Adam(layers.human.parameters(), lr=3e-3)
    for s in range(0, 80, 2):  # even steps: the human layer alone
        info = {"log": {}}
        loss = term(layers, batch, s, info)
        opt.zero_grad()
        loss.backward()
        opt.step()
    err1, iou1 = measure()
    print(f"oracle SDS: latent MSE {err0:.4f} -> {err1:.4f}, silhouette IoU with the target {iou0:.3f} -> {iou1:.3f}")
    assert err1 < 0.5 * err0  # measured 0.157 -> 0.052
    assert iou1 > iou0 + 0.05  # measured 0.50 -> 0.73
