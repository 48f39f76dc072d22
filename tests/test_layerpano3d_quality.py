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
    "gaussians.view_size=48", "gaussians.stride=3",
    "gaussians.densify.refine_start_iter=50", "gaussians.densify.refine_every=50",
    "gaussians.densify.refine_stop_iter=101", "gaussians.checkpoint_every=50", "export.preview_size=32",
    "export.walk_frames=3", "device=cpu", "quiet=true",
]
OFFSETS_M = [0.3, 0.5]  # the issue: centres displaced 0.3-0.5 m
YAWS = 8
VIEW = 48
# Measured (2 CPU cores, 75 s for both runs): disoccluded 20.7 dB layered vs 17.4 dB baseline (+3.3),
# overall 24.6 dB layered (25.3 baseline), visible 24.8 vs 25.9. Bounds leave room for run-to-run spread.
MIN_DISOCCLUDED_GAIN_DB = 2.0
MIN_OVERALL_PSNR_DB = 23.5
MAX_VISIBLE_LOSS_DB = 2.0


def sideways_cameras(offsets_m: list[float], yaws: int, size: int):
    """Views along ``yaws`` horizontal directions from centres moved sideways (left and right of the
    view direction) by each offset: the displacement that uncovers most behind near objects."""
    import math

    from layerforge.renderers.cameras import Camera
    from layerforge.renderers.panorama import pano_cameras

    cams = []
    for r in offsets_m:
        for side in (-1.0, 1.0):
            for i in range(yaws):
                yaw = math.radians(360.0 * i / yaws)
                centre = (-side * r * math.sin(yaw), side * r * math.cos(yaw), 0.0)
                cams.append(pano_cameras([math.degrees(yaw)], [0.0], [90.0], size, size, center=centre))
    return Camera.cat(cams)


def _render(run, cams):
    from layerforge.models.layerpano3d import gaussians as lg
    from layerforge.pipelines.layerpano3d import layer_models

    arrays = dict(np.load(run / "stages" / "gaussians" / "gaussians.npz"))
    models = layer_models(arrays, 3)
    frozen = lg.FrozenGaussians(models, 16)
    with torch.no_grad():
        out = lg.render_gaussian_layers(None, frozen, cams, sh_degree=3, backend="torch")
    return out.rgb.clamp(0, 1), len(models)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("layerpano3d_quality")
    # the baseline gets as many steps as the layered run in all (200 + 2 x 150), so the comparison is
    # about completion, not training time
    for name, extra in (("layered", ["gaussians.steps_first=200", "gaussians.steps_later=150"]),
                        ("baseline", ["layering.max_layers=0", "gaussians.steps_first=500"])):
        proc = run_cli("run", "layerpano3d", f"out={out}", f"run={name}", *QUALITY, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_layered_gaussians_beat_the_single_layer_baseline_where_the_view_is_disoccluded(runs):
    from layerforge.models.image_metrics import psnr
    from layerforge.models.layerpano3d import synthetic as syn

    scene = syn.room_from_truth(next((runs / ".cache" / "scenes").glob("layered_room-*")) / "truth.json")
    cams = sideways_cameras(OFFSETS_M, YAWS, VIEW)
    truth = syn.render_views(scene, cams, supersample=2)
    hidden = ~syn.visible_from(scene, truth["points"])
    assert int(hidden.sum()) > 1000  # the displaced centres see behind the near objects (1886 px measured)
    layered, n_layered = _render(runs / "layerpano3d" / "layered", cams)
    baseline, n_base = _render(runs / "layerpano3d" / "baseline", cams)
    assert n_layered == 3 and n_base == 1
    gain = psnr(layered, truth["rgb"], hidden) - psnr(baseline, truth["rgb"], hidden)
    overall = psnr(layered, truth["rgb"])
    assert gain >= MIN_DISOCCLUDED_GAIN_DB, gain
    assert overall >= MIN_OVERALL_PSNR_DB, overall
    # where the panorama centre sees the surface, layering costs little
    assert psnr(layered, truth["rgb"], ~hidden) >= psnr(baseline, truth["rgb"], ~hidden) - MAX_VISIBLE_LOSS_DB
