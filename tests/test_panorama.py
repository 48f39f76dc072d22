"""Equirectangular panorama: ray convention, perspective resampling round trip, RGB-D lift."""

from __future__ import annotations

import math

import pytest
import torch

from layerforge.renderers.cameras import generate_rays
from layerforge.renderers.panorama import (
    directions_to_equirect,
    equirect_directions,
    equirect_rays,
    equirect_rgbd_to_points,
    equirect_to_perspective,
    pano_cameras,
    perspective_to_equirect,
)


def test_spherical_rays_are_unit_follow_the_convention_and_map_back():
    H, W = 32, 64
    d = equirect_directions(H, W, dtype=torch.float64)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(H, W, dtype=torch.float64))
    # +Z up at the top row, -Z at the bottom; centre column looks along +X, a quarter
    # width to the left of it along +Y (longitude grows to the left), the edges along -X
    assert torch.all(d[0, :, 2] > 0.99) and torch.all(d[-1, :, 2] < -0.99)
    mid = d[H // 2 - 1 : H // 2 + 1, W // 2 - 1 : W // 2 + 1].mean((0, 1))
    torch.testing.assert_close(mid / mid.norm(), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    left = d[H // 2 - 1 : H // 2 + 1, W // 4 - 1 : W // 4 + 1].mean((0, 1))
    torch.testing.assert_close(left / left.norm(), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    assert d[H // 2, 0, 0] < -0.99 and d[H // 2, -1, 0] < -0.99
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
    torch.testing.assert_close(directions_to_equirect(d * 3.0, H, W), torch.stack([u, v], -1))
    o, d2 = equirect_rays(H, W, center=(1.0, 2.0, 3.0))
    assert torch.all(o == torch.tensor([1.0, 2.0, 3.0])) and d2.shape == (H, W, 3)


def test_pano_camera_yaw_pitch_convention():
    cam = pano_cameras([0.0, 90.0, 0.0], [0.0, 0.0, 90.0], 60.0, 9, 9, dtype=torch.float64)
    _, dirs = generate_rays(cam)
    centre = dirs[:, 4, 4]
    torch.testing.assert_close(centre, torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], dtype=torch.float64), atol=1e-12, rtol=0)
    # upright: image top row looks up (+Z) for a level view
    assert dirs[0, 0, 4, 2] > 0 and dirs[0, -1, 4, 2] < 0


def _checker(H: int, W: int, cells: int = 8) -> torch.Tensor:
    v, u = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    c = ((v // (H // cells) + u // (W // (2 * cells))) % 2).float()
    return torch.stack([c, 1 - c, 0.5 * torch.ones_like(c)], -1)


def test_equirect_perspective_equirect_round_trip_keeps_a_checkerboard():
    H, W = 64, 128
    pano = _checker(H, W)
    cams = pano_cameras([0.0, 90.0, 180.0, 270.0], [0.0, 20.0, -20.0, 0.0], 100.0, 96, 96)
    views = equirect_to_perspective(pano, cams)
    assert views.shape == (4, 96, 96, 3)
    back, mask = perspective_to_equirect(views, cams, H, W)
    cover = mask.sum(0)
    blended = (back * mask).sum(0) / cover.clamp_min(1)
    covered = cover[..., 0] > 0
    assert covered.float().mean() > 0.5
    err = (blended - pano).abs()[covered]
    assert err.mean() < 0.06
    # away from checker edges (bilinear blur), the round trip is near exact
    ch = torch.nn.functional.pad(pano[None, None, ..., 0], (1, 1, 0, 0), mode="circular")  # seam wraps
    ch = torch.nn.functional.pad(ch, (0, 0, 1, 1), mode="replicate")
    inner = torch.nn.functional.avg_pool2d(ch, 3, 1)[0, 0]
    flat = ((inner == 0) | (inner == 1)) & covered
    assert (blended - pano).abs()[flat].max() < 0.05
    # pixels the views do not cover are masked out, not invented
    assert torch.all(back[mask[..., 0] == 0] == 0)


def test_resampling_wraps_across_the_seam():
    H, W = 32, 64
    g = torch.Generator().manual_seed(0)
    pano = torch.rand(H, W, 3, generator=g)
    # looking at lon 180 (the seam) equals looking at lon 0 of the panorama rolled by half a turn
    seam = equirect_to_perspective(pano, pano_cameras(180.0, 0.0, 70.0, 24, 24))
    rolled = equirect_to_perspective(torch.roll(pano, W // 2, dims=1), pano_cameras(0.0, 0.0, 70.0, 24, 24))
    torch.testing.assert_close(seam, rolled, atol=1e-5, rtol=0)
    # a nearest lookup of a pixel-centre ray returns that pixel exactly
    near = equirect_to_perspective(pano, pano_cameras(0.0, 0.0, 60.0, 16, 16), mode="nearest")
    _, dirs = generate_rays(pano_cameras(0.0, 0.0, 60.0, 16, 16))
    uv = directions_to_equirect(dirs, H, W).floor().long()
    torch.testing.assert_close(near[0], pano[uv[0, ..., 1].clamp(0, H - 1), uv[0, ..., 0] % W])


def test_rgbd_lift_of_constant_depth_lies_on_a_sphere():
    H, W = 16, 32
    rgb = _checker(H, W, 4)
    center = torch.tensor([0.5, -1.0, 2.0])
    pts, cols = equirect_rgbd_to_points(rgb, torch.full((H, W, 1), 2.5), center=center)
    assert pts.shape == (H * W, 3) and cols.shape == (H * W, 3)
    torch.testing.assert_close((pts - center).norm(dim=-1), torch.full((H * W,), 2.5))
    torch.testing.assert_close(cols, rgb.reshape(-1, 3))
    assert pts[:, 2].max() > center[2] + 2.4  # top row is up
    depth = torch.full((H, W), 1.0)
    depth[0, 0] = float("nan")
    depth[1, 1] = 0.0
    mask = torch.ones(H, W, dtype=torch.bool)
    mask[2] = False
    pts2, _ = equirect_rgbd_to_points(rgb, depth, mask=mask)
    assert pts2.shape[0] == H * W - 2 - W


@pytest.mark.parametrize("yaw", [-135.0, 45.0])
def test_perspective_to_equirect_mask_is_the_view_frustum(yaw):
    cam = pano_cameras(yaw, 0.0, 60.0, 32, 32)
    _, mask = perspective_to_equirect(torch.ones(1, 32, 32, 1), cam, 64, 128)
    d = equirect_directions(64, 128)
    fwd = torch.tensor([math.cos(math.radians(yaw)), math.sin(math.radians(yaw)), 0.0])
    ang = torch.rad2deg(torch.acos((d @ fwd).clamp(-1, 1)))
    assert torch.all(mask[0, ..., 0][ang < 29.0] == 1)  # inside the half-FoV cone
    assert torch.all(mask[0, ..., 0][ang > 45.0] == 0)  # beyond the half-diagonal
