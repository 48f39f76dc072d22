"""normals_from_depth: camera-frame normals of a camera-z depth map (OpenCV frame, facing the camera)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from layerforge.renderers import camera_points_from_depth, normals_from_depth
from layerforge.renderers.cameras import Camera, intrinsics_from_fov, look_at
from layerforge.renderers.depth_normals import MAX_INCIDENCE_DEG


def _k(fx: float, fy: float, cx: float, cy: float, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def _rays(h: int, w: int, k: torch.Tensor) -> torch.Tensor:
    """[H, W, 3] camera-frame rays with z = 1 through the pixel centres."""
    return camera_points_from_depth(torch.ones(1, h, w, 1, dtype=k.dtype), k)[0]


def _plane_depth(normal: torch.Tensor, offset: float, h: int, w: int, k: torch.Tensor) -> torch.Tensor:
    """Camera z of the plane n . X = offset along every pixel's ray, [H, W]."""
    return offset / (_rays(h, w, k) @ normal)


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.acos((a * b).sum(-1).clamp(-1.0, 1.0)))


def test_points_back_project_through_the_pixel_centres():
    k = _k(30.0, 32.0, 9.0, 7.5)
    depth = torch.full((1, 12, 16, 1), 2.0)
    p = camera_points_from_depth(depth, k)[0]
    assert torch.allclose(p[..., 2], torch.full((12, 16), 2.0))
    pix = p @ k.T
    uv = pix[..., :2] / pix[..., 2:]
    want = torch.stack(torch.meshgrid(torch.arange(16) + 0.5, torch.arange(12) + 0.5, indexing="xy"), -1).float()
    assert torch.allclose(uv, want, atol=1e-5)


def test_plane_gives_its_exact_normal_away_from_the_border():
    h, w = 40, 56
    ks = torch.stack([_k(50.0, 47.0, 29.0, 18.5), _k(35.0, 35.0, 26.0, 21.0)])
    normals = [F.normalize(torch.tensor([0.3, -0.2, -1.0]), dim=0), F.normalize(torch.tensor([-0.35, 0.3, -1.0]), dim=0)]
    depth = torch.stack([_plane_depth(n, -2.5, h, w, k) for n, k in zip(normals, ks)])[..., None]
    assert (depth > 0).all()
    got = normals_from_depth(depth, ks)
    assert got.shape == (2, h, w, 3) and got.dtype == torch.float32
    for i, n in enumerate(normals):
        inner = got[i, 1:-1, 1:-1]
        assert (inner - n).abs().max() < 1e-4
        assert ((inner * _rays(h, w, ks[i])[1:-1, 1:-1]).sum(-1) < 0).all()  # faces the camera
    border = torch.ones(h, w, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert (got[:, border] == 0).all()
    # one K shared by all views ([3, 3]) and a scaled depth give the same normals
    torch.testing.assert_close(normals_from_depth(depth[:1] * 7.0, ks[0]), got[:1], atol=1e-5, rtol=0)


def test_sphere_normals_match_the_analytic_normal():
    """Measured on this 48x64, f = 60 px view of a 1 m sphere at 3 m: mean 0.27 deg, p99 2.8 deg
    (the largest errors at the silhouette, where the surface turns away from the camera)."""
    h, w = 48, 64
    k = _k(60.0, 60.0, w / 2, h / 2, torch.float64)
    r = _rays(h, w, k)
    c, radius = torch.tensor([0.1, -0.05, 3.0], dtype=torch.float64), 1.0
    a, b = (r * r).sum(-1), (r * c).sum(-1)
    disc = b * b - a * ((c * c).sum() - radius**2)
    hit = disc > 0
    t = torch.where(hit, (b - disc.clamp_min(0).sqrt()) / a, torch.zeros_like(a))  # camera z (ray z = 1)
    truth = (t[..., None] * r - c) / radius
    got = normals_from_depth(t[None, ..., None].float(), k.float())[0].double()
    valid = got.norm(dim=-1) > 0
    assert not (valid & ~hit).any()  # nothing off the sphere
    assert valid.sum() > 0.9 * hit.sum()  # only a rim at the silhouette is lost
    err = _angle_deg(got, truth)[valid]
    assert err.mean() < 0.35 and torch.quantile(err, 0.99) < 3.5


def test_depth_discontinuity_unknown_and_non_finite_give_zero():
    h, w = 20, 24
    k = _k(30.0, 30.0, w / 2, h / 2)
    depth = torch.full((1, h, w, 1), 2.0)
    depth[:, :, 12:] = 3.0  # a 1 m step between columns 11 and 12
    depth[0, 5, 5, 0] = 0.0  # unknown
    depth[0, 14, 5, 0] = float("nan")
    got = normals_from_depth(depth, k)[0]
    zero = got.norm(dim=-1) == 0
    assert zero[1:-1, 11:13].all()  # both sides of the step
    for i, j in ((5, 5), (14, 5)):  # the pixel and its 4 neighbours
        assert zero[i, j] and zero[i - 1, j] and zero[i + 1, j] and zero[i, j - 1] and zero[i, j + 1]
    keep = ~zero
    keep[0], keep[-1], keep[:, 0], keep[:, -1] = False, False, False, False
    assert keep.sum() > 0.6 * (h - 2) * (w - 2)
    assert torch.allclose(got[keep], torch.tensor([0.0, 0.0, -1.0]), atol=1e-5)
    assert torch.isfinite(got).all()


def test_incidence_threshold_is_what_its_name_says():
    """A plane seen at about 70 deg between ray and normal (65-75 over this narrow view) is a
    surface under the default 80 deg and a discontinuity under 60 deg."""
    h, w = 16, 16
    k = _k(100.0, 100.0, 8.0, 8.0)
    tilt = math.radians(70.0)
    n = torch.tensor([math.sin(tilt), 0.0, -math.cos(tilt)])
    depth = _plane_depth(n, -1.0, h, w, k)[None, ..., None]
    assert MAX_INCIDENCE_DEG == 80.0
    kept = normals_from_depth(depth, k)[0, 1:-1, 1:-1]
    assert (kept - n).abs().max() < 1e-4
    assert (normals_from_depth(depth, k, max_incidence_deg=60.0) == 0).all()


def test_matches_the_rasterizer_face_normals_of_a_cube():
    """Conventions end to end: camera-frame normals from the rasterized depth equal the world face
    normals the mesh renderer reports, rotated by the world-to-camera rotation."""
    import trimesh

    from layerforge.renderers.mesh import normal_map, rasterize

    box = trimesh.creation.box(extents=(1.0, 0.8, 0.6))
    v = torch.tensor(box.vertices, dtype=torch.float32)
    f = torch.tensor(box.faces, dtype=torch.int64)
    h, w = 48, 64
    eyes = torch.tensor([[2.0, -1.5, 1.2], [-1.8, -2.0, -0.9]])
    cams = Camera(intrinsics_from_fov(40.0, w, h).expand(2, 3, 3), look_at(eyes), w, h)
    frags = rasterize(v, f, cams, "torch")
    world = normal_map(frags, v, f, smooth=False)
    want = torch.einsum("bij,bhwj->bhwi", cams.world_to_camera[:, :3, :3], world)
    got = normals_from_depth(frags.depth[..., None], cams.K)
    # pixels whose 3x3 neighbourhood lies on one side of the box (one face normal; the box is convex)
    padded = F.pad(world, (0, 0, 1, 1, 1, 1))
    same = torch.ones_like(frags.face_id, dtype=torch.bool)
    for di in (0, 1, 2):
        for dj in (0, 1, 2):
            same &= (padded[:, di:di + h, dj:dj + w] - world).abs().amax(-1) < 1e-5
    inside = same & (frags.face_id >= 0)
    assert inside.sum() > 500
    assert (got[inside] - want[inside]).abs().max() < 1e-3
    assert (got[frags.face_id < 0] == 0).all()


def test_gradients_flow_to_depth():
    k = _k(20.0, 20.0, 6.0, 6.0)
    depth = (2.0 + 0.1 * torch.rand(1, 12, 12, 1)).requires_grad_()
    normals_from_depth(depth, k)[..., 0].sum().backward()
    assert torch.isfinite(depth.grad).all() and depth.grad.abs().sum() > 0


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\[N, H, W, 1\]"):
        normals_from_depth(torch.ones(1, 8, 8), torch.eye(3))
    with pytest.raises(ValueError, match=r"K must be"):
        normals_from_depth(torch.ones(2, 8, 8, 1), torch.eye(3).expand(3, 3, 3))
    assert (normals_from_depth(torch.ones(1, 2, 8, 1), torch.eye(3)) == 0).all()
