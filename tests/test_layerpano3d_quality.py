"""layerpano3d novel views from displaced centres against the analytic room's ground truth.

Two ordinary runs on builtin:layered_room: the layered method, and the single-layer baseline
(``layering.max_layers=0``: one set of Gaussians from the panorama itself, nothing completed).
Views from centres 0.3-0.5 m off the panorama centre are rendered from each run's Gaussians and
compared with the room ray-cast from those centres. Disoccluded pixels are those whose true
surface the panorama centre cannot see (``synthetic.visible_from``): only completion behind the
layers can get them right. Figures measured on 2 CPU cores are in the closing note of the issue.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_runs import run_cli

QUALITY = [
    "gaussians.view_size=48", "gaussians.steps_first=150", "gaussians.steps_later=100", "gaussians.stride=3",
    "gaussians.densify.refine_start_iter=50", "gaussians.densify.refine_every=50",
    "gaussians.densify.refine_stop_iter=101", "gaussians.checkpoint_every=50", "export.preview_size=32",
    "export.walk_frames=3", "device=cpu", "quiet=true",
]
OFFSETS_M = [0.3, 0.4, 0.5]  # the issue: centres displaced 0.3-0.5 m
YAWS = 8
VIEW = 48
# bounds from the measured figures (see the module docstring), with margin for run-to-run spread
MIN_DISOCCLUDED_GAIN_DB = 1.5
MIN_OVERALL_PSNR_DB = 21.0


def _render(run, cams):
    from layerforge.models.layerpano3d import gaussians as lg
    from layerforge.pipelines.layerpano3d import layer_models

    arrays = dict(np.load(run / "stages" / "gaussians" / "gaussians.npz"))
    models = layer_models(arrays, 3)
    frozen = lg.FrozenGaussians(models, 16)
    with torch.no_grad():
        out = lg.render_layers(None, frozen, cams, sh_degree=3, backend="torch")
    return out.rgb.clamp(0, 1), len(models)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("layerpano3d_quality")
    for name, extra in (("layered", []), ("baseline", ["layering.max_layers=0"])):
        proc = run_cli("run", "layerpano3d", f"out={out}", f"run={name}", *QUALITY, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_layered_gaussians_beat_the_single_layer_baseline_where_the_view_is_disoccluded(runs):
    from layerforge.models.image_metrics import psnr
    from layerforge.models.layerpano3d import synthetic as syn
    from layerforge.pipelines.layerpano3d import walkthrough_cameras

    scene = syn.room_from_truth(next((runs / ".cache" / "scenes").glob("layered_room-*")) / "truth.json")
    cams = walkthrough_cameras(OFFSETS_M, YAWS, VIEW)
    truth = syn.render_views(scene, cams, supersample=2)
    hidden = ~syn.visible_from(scene, truth["points"])
    assert int(hidden.sum()) > 200  # the displaced centres see behind the near objects
    layered, n_layered = _render(runs / "layerpano3d" / "layered", cams)
    baseline, n_base = _render(runs / "layerpano3d" / "baseline", cams)
    assert n_layered == 3 and n_base == 1
    gain = psnr(layered, truth["rgb"], hidden) - psnr(baseline, truth["rgb"], hidden)
    overall = psnr(layered, truth["rgb"])
    assert gain >= MIN_DISOCCLUDED_GAIN_DB, gain
    assert overall >= MIN_OVERALL_PSNR_DB, overall
    # where the panorama centre sees the surface, layering costs nothing measurable
    assert psnr(layered, truth["rgb"], ~hidden) >= psnr(baseline, truth["rgb"], ~hidden) - 0.5
