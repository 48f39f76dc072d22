"""One RenderOutput for mesh, Gaussian and field renders: the three renderers agree on
camera-z depth and alpha for the same scene (a sphere, a square facing the camera)."""

from __future__ import annotations

import math

import pytest
import torch

from layerforge.errors import InputError
from layerforge.renderers.cameras import Camera, generate_rays, look_at
from layerforge.renderers.gaussians import render_gaussians
from layerforge.renderers.mesh import render_mesh
from layerforge.renderers.output import RenderOutput
from layerforge.renderers.volume import (
    midpoints,
    render_output_from_rays,
    sample_stratified,
    volsdf_density,
    volume_render,
)
from test_mesh_renderer import icosphere  # noqa: E402 (tests/ is on sys.path under pytest)

D = torch.float64
SIZE, FOCAL = 48, 60.0  # image side in pixels, focal length in pixels
CENTRE = (2.0, 0.3, -0.1)  # sphere centre, world metres (camera at the origin looking along +X)
RADIUS = 0.5  # m
T_NEAR, T_FAR = 1.3, 2.7  # m, ray-marching range: covers the sphere's and the square's front surfaces
SAMPLES = 1200  # intervals per ray: 1.2 mm each, below the SDF's Laplace scale
BETA = 2e-3  # m, VolSDF Laplace scale ("sharp": the surface is a few mm thick)
SPLAT_SIGMA = 0.025  # m, tangent standard deviation of the surface splats (~ their spacing)
SPLAT_THIN = 1e-4  # m, standard deviation across the surface (flat discs)


@pytest.fixture(autouse=True)
def _two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


def _camera() -> Camera:
    k = torch.tensor([[FOCAL, 0.0, SIZE / 2], [0.0, FOCAL, SIZE / 2], [0.0, 0.0, 1.0]], dtype=D)
    w2c = look_at(torch.zeros(3, dtype=D), torch.tensor([1.0, 0.0, 0.0], dtype=D))
    return Camera(k, w2c, SIZE, SIZE, near=0.01, far=100.0)


def _splats_facing(points: torch.Tensor, normals: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Quaternions (wxyz) turning each splat's thin local z axis onto ``normals``, and scales."""
    z = torch.tensor([0.0, 0.0, 1.0], dtype=D).expand_as(normals)
    q = torch.cat([(1.0 + normals[:, 2:3]), torch.linalg.cross(z, normals, dim=-1)], -1)
    q = torch.nn.functional.normalize(q, dim=-1)  # half-angle rotation z -> n (n != -z here)
    scales = torch.tensor([sigma, sigma, SPLAT_THIN], dtype=D).expand(len(points), 3)
    return q, scales


def _volume(cam: Camera, sdf_fn) -> tuple[RenderOutput, dict[str, torch.Tensor]]:
    """Render an SDF (VolSDF density) along the camera's unit rays; per-ray dict and image."""
    o, d = generate_rays(cam)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    r = o.shape[0]
    edges = sample_stratified(torch.full((r,), T_NEAR, dtype=D), torch.full((r,), T_FAR, dtype=D), SAMPLES)
    t, _ = midpoints(edges)
    sdf = sdf_fn(o[:, None] + d[:, None] * t[..., None])
    rays = volume_render(volsdf_density(sdf, BETA), torch.ones(*sdf.shape, 3, dtype=D), edges)
    return render_output_from_rays(rays, cam), rays


def _all_three_sphere() -> tuple[Camera, dict[str, RenderOutput], torch.Tensor, torch.Tensor, torch.Tensor]:
    cam = _camera()
    c = torch.tensor(CENTRE, dtype=D)
    verts, faces = icosphere(4, RADIUS, D)  # 5120 faces
    mesh = render_mesh(verts + c, faces, cam)
    pts, _ = icosphere(4, RADIUS, D)  # 2562 points, ~2.4 cm apart
    normals = torch.nn.functional.normalize(pts, dim=-1)
    # splats of the camera-facing hemisphere only: back splats would show through the residual
    # transmittance of the front ones (measured +7 mm of expected depth at the centre with them)
    front = (normals * (pts + c)).sum(-1) < 0
    pts, normals = pts[front], normals[front]
    q, s = _splats_facing(pts, normals, SPLAT_SIGMA)
    n = len(pts)
    gauss = render_gaussians(pts + c, q, s, torch.ones(n, dtype=D), torch.ones(n, 3, dtype=D), cam, backend="torch")
    vol, rays = _volume(cam, lambda p: (p - c).norm(dim=-1) - RADIUS)
    # analytic: ray-sphere intersection along unit rays, then camera z
    o, d = generate_rays(cam)
    oc = o[0] - c
    b = (oc * d[0]).sum(-1)
    disc = b * b - (oc * oc).sum(-1) + RADIUS**2
    t = -b - disc.clamp_min(0).sqrt()
    z_true = t * (d[0] @ cam.world_to_camera[0, 2, :3])
    # angle of each ray from the direction to the centre, as a fraction of the silhouette's
    ang = torch.acos(((-oc * d[0]).sum(-1) / oc.norm(dim=-1)).clamp(-1, 1)) / math.asin(RADIUS / float(c.norm()))
    return cam, {"mesh": mesh, "gaussians": gauss, "volume": vol}, z_true, ang, rays["depth"].reshape(SIZE, SIZE)


def test_mesh_gaussians_and_volume_agree_on_a_sphere():
    cam, outs, z_true, ang, ray_t = _all_three_sphere()
    for out in outs.values():
        assert isinstance(out, RenderOutput)
        assert out.rgb.shape == (1, SIZE, SIZE, 3) and out.alpha.shape == out.depth.shape == (1, SIZE, SIZE, 1)
    centre = ang < 0.25  # pixels around the sphere's centre (about 4 px radius)
    half = ang < 0.5  # the inner half of the disc (splats are seen face-on enough to cover it)
    inside = ang < 0.8  # pixels well inside the silhouette
    outside = ang > 1.2  # pixels well outside it
    assert int(centre.sum()) >= 40 and int(inside.sum()) > 400 and int(outside.sum()) > 1000
    depth = {k: v.depth[0, ..., 0] for k, v in outs.items()}
    alpha = {k: v.alpha[0, ..., 0] for k, v in outs.items()}
    # camera z, not ray distance: at the centre pixels the two differ by up to 3.7 cm here
    assert float((ray_t - z_true)[centre].abs().max()) > 0.03
    # mesh (inscribed facets) and volume (VolSDF, beta 2 mm) to the millimetre everywhere inside;
    # measured 0.8 mm and 1.0 mm
    assert float((depth["mesh"] - z_true)[inside].abs().max()) < 2e-3
    assert float((depth["volume"] - z_true)[inside].abs().max()) < 2e-3
    assert float((depth["mesh"] - depth["volume"])[inside].abs().max()) < 2e-3
    # splats carry their centre's depth, and the nearest centres overlapping a pixel win: about
    # a pixel (3.3 cm at 2 m) times the surface slope; measured 8 mm at the centre pixels
    # (mean 4 mm), against 37 mm between ray distance and camera z there
    assert float((depth["gaussians"] - z_true)[centre].abs().max()) < 1.2e-2
    assert float((depth["gaussians"] - depth["mesh"])[centre].abs().max()) < 1.2e-2
    assert float((depth["gaussians"] - z_true)[centre].abs().mean()) < 6e-3
    for k in outs:
        # thin splats seen obliquely near the silhouette cover less (measured 0.90 there)
        assert float(alpha[k][inside if k != "gaussians" else half].min()) > 0.99, k
        assert float(alpha[k][outside].max()) < 1e-3, k
        assert float(depth[k][outside].abs().max()) == 0.0, k  # 0 where nothing was hit
    # mesh normals are world normals of the sphere
    pts = torch.tensor(CENTRE, dtype=D)
    o, d = generate_rays(cam)
    n_true = torch.nn.functional.normalize(o[0] + (z_true / (d[0] @ cam.world_to_camera[0, 2, :3]))[..., None] * d[0] - pts, dim=-1)
    assert float((outs["mesh"].normals[0] * n_true).sum(-1)[inside].min()) > 0.995


def test_square_facing_the_camera_has_the_same_depth_everywhere_in_all_three():
    cam = _camera()
    x0, half = 2.0, 0.45  # the square lies in the plane x = 2 m, |y|, |z| <= 0.45 m
    corners = torch.tensor([[x0, -half, -half], [x0, half, -half], [x0, half, half], [x0, -half, half]], dtype=D)
    mesh = render_mesh(corners, torch.tensor([[0, 1, 2], [0, 2, 3]]), cam)
    # dense splats on a 2 cm grid, flat, facing -X
    g = torch.arange(-half + 0.01, half, 0.02, dtype=D)
    yy, zz = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([torch.full_like(yy, x0), yy, zz], -1).reshape(-1, 3)
    q, s = _splats_facing(pts, torch.tensor([-1.0, 0.0, 0.0], dtype=D).expand_as(pts), 0.015)
    n = len(pts)
    gauss = render_gaussians(pts, q, s, torch.ones(n, dtype=D), torch.ones(n, 3, dtype=D), cam, backend="torch")

    def box_sdf(p: torch.Tensor) -> torch.Tensor:  # exact SDF of a box whose front face is the square
        e = torch.tensor([0.2, half, half], dtype=D)
        qd = (p - torch.tensor([x0 + 0.2, 0.0, 0.0], dtype=D)).abs() - e
        return qd.clamp_min(0).norm(dim=-1) + qd.amax(-1).clamp_max(0)

    vol, rays = _volume(cam, box_sdf)
    # pixel footprint of the square: |u - cx| < f * half / x0 = 13.5 px
    i = torch.arange(SIZE, dtype=D) + 0.5 - SIZE / 2
    r = torch.maximum(i[:, None].abs(), i[None, :].abs())
    inside, outside = r < 13.5 - 2, r > 13.5 + 2
    for name, out in (("mesh", mesh), ("gaussians", gauss), ("volume", vol)):
        dep, alp = out.depth[0, ..., 0], out.alpha[0, ..., 0]
        err = float((dep - x0)[inside].abs().max())
        assert err < (1e-9 if name != "volume" else 1e-3), (name, err)
        assert float(alp[inside].min()) > 0.99 and float(alp[outside].max()) < 1e-3, name
    # the volume's ray distance grows towards the corners (2 / cos); its camera z does not
    t = rays["depth"].reshape(SIZE, SIZE)
    assert float((t - x0)[inside].max()) > 0.05


def test_render_output_from_rays_conversions_and_errors():
    cam = _camera()
    o, d_unit = generate_rays(cam)
    _, d_z = generate_rays(cam, normalize=False)  # unit camera z: t is already camera z
    z = torch.full((SIZE * SIZE, 1), 2.0, dtype=D)
    cos = (d_unit.reshape(-1, 3) @ cam.world_to_camera[0, 2, :3])[:, None]
    base = {"rgb": torch.zeros(SIZE * SIZE, 3, dtype=D), "alpha": torch.ones(SIZE * SIZE, 1, dtype=D)}
    a = render_output_from_rays({**base, "depth": z / cos, "object_depth": (z / cos).expand(-1, 2)}, cam)
    torch.testing.assert_close(a.depth, torch.full((1, SIZE, SIZE, 1), 2.0, dtype=D))
    torch.testing.assert_close(a.extras["object_depth"], torch.full((1, SIZE, SIZE, 2), 2.0, dtype=D))
    b = render_output_from_rays({**base, "depth": z}, cam, d_z)
    torch.testing.assert_close(b.depth, torch.full((1, SIZE, SIZE, 1), 2.0, dtype=D))
    empty = render_output_from_rays({**base, "alpha": torch.zeros_like(z), "depth": z}, cam)
    assert (empty.depth == 0).all()
    with pytest.raises(InputError, match="rays for 2 camera"):
        render_output_from_rays({**base, "depth": z}, cam[[0, 0]])
    with pytest.raises(InputError, match="no 'depth'"):
        render_output_from_rays(base, cam)
    with pytest.raises(ValueError, match="extras"):
        RenderOutput(rgb=a.rgb, alpha=a.alpha, depth=a.depth, extras={"face_id": torch.zeros(1, 3)})
    with pytest.raises(ValueError, match="depth"):
        RenderOutput(rgb=a.rgb, alpha=a.alpha, depth=a.depth[..., 0])
