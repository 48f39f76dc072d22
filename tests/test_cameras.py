"""Camera conventions: OpenCV world-to-camera, pixel centres at +0.5, converters round-trip."""

from __future__ import annotations

import math

import pytest
import torch

from layerforge.renderers.cameras import (
    Camera,
    flip_camera_yz,
    focal_to_fov,
    fov_to_focal,
    generate_rays,
    intrinsics_from_fov,
    look_at,
    opencv_w2c_to_opengl_c2w,
    opengl_c2w_to_opencv_w2c,
    orbit_cameras,
    project,
    sample_orbit_cameras,
)


def _random_cameras(n: int = 4, seed: int = 0) -> Camera:
    g = torch.Generator().manual_seed(seed)
    eye = torch.randn(n, 3, generator=g, dtype=torch.float64) * 3
    target = torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.3
    k = torch.tensor([[50.0, 0.0, 20.0], [0.0, 55.0, 14.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return Camera(k.expand(n, 3, 3), look_at(eye, target), width=40, height=30)


def _project_opengl_by_hand(c2w_gl: torch.Tensor, k: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Textbook OpenGL: camera looks down -Z, +Y up; image v grows downwards."""
    p = torch.linalg.inv(c2w_gl) @ torch.cat([point, point.new_ones(1)])
    x, y, z = p[0], p[1], p[2]
    assert z < 0, "point must be in front of an OpenGL camera (negative z)"
    u = k[0, 0] * x / -z + k[0, 2]
    v = k[1, 1] * -y / -z + k[1, 2]
    return torch.stack([u, v])


def test_look_at_centre_up_and_forward():
    w2c = look_at(torch.tensor([3.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0]))
    cam = Camera(intrinsics_from_fov(60.0, 32, 32), w2c, 32, 32)
    assert torch.allclose(cam.center, torch.tensor([[3.0, 0.0, 1.0]]), atol=1e-6)
    pts = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.5], [0.0, -0.5, 1.0]])
    pix, depth = project(cam, pts)
    assert torch.allclose(pix[0, 0], torch.tensor([16.0, 16.0]), atol=1e-5)  # target at centre
    assert torch.allclose(depth[0, 0], torch.tensor(3.0))
    assert pix[0, 1, 1] < 16.0  # world +Z is image up (v decreases)
    # looking along -X with +Z up, world +Y is to the camera's right, so -Y is left
    assert pix[0, 2, 0] < 16.0
    # rotation is orthonormal and right-handed
    r = w2c[0, :3, :3]
    assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-6)
    assert torch.allclose(torch.det(r), torch.tensor(1.0), atol=1e-6)


def test_look_at_straight_down_is_well_defined():
    w2c = look_at([0.0, 0.0, 2.0], [0.0, 0.0, 0.0])
    assert torch.isfinite(w2c).all()
    assert torch.allclose(w2c[0, 2, :3], torch.tensor([0.0, 0.0, -1.0]))


def test_fov_focal_round_trip_and_intrinsics():
    f = fov_to_focal(90.0, 64)
    assert f == pytest.approx(32.0)
    assert focal_to_fov(f, 64) == pytest.approx(90.0)
    t = torch.tensor([30.0, 60.0], dtype=torch.float64)
    assert torch.allclose(focal_to_fov(fov_to_focal(t, 48.0), 48.0), t)
    k = intrinsics_from_fov(t, 40, 30)
    assert k.shape == (2, 3, 3)
    assert torch.allclose(k[:, 0, 2], torch.tensor(20.0)) and torch.allclose(k[:, 1, 2], torch.tensor(15.0))


def test_flip_camera_yz_maps_camera_vectors_between_opencv_and_opengl():
    """A camera-frame vector (a normal) means the same world direction in either convention."""
    cams = _random_cameras()
    v_cv = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    world = torch.einsum("bji,bj->bi", cams.world_to_camera[:, :3, :3], v_cv)  # R^T v
    v_gl = flip_camera_yz(v_cv)
    assert torch.allclose(torch.einsum("bij,bj->bi", cams.to_opengl()[:, :3, :3], v_gl), world, atol=1e-12)
    assert torch.equal(flip_camera_yz(v_gl), v_cv)
    assert flip_camera_yz(torch.tensor([0.0, 0.0, -1.0])).tolist() == [0.0, -0.0, 1.0]  # faces an OpenGL camera: +z


def test_point_projects_to_same_pixel_through_every_converter():
    cams = _random_cameras()
    point = torch.tensor([0.1, -0.2, 0.15], dtype=torch.float64)
    pix, depth = project(cams, point[None])
    assert (depth > 0).all()
    gl = cams.to_opengl()
    for b in range(len(cams)):
        by_hand = _project_opengl_by_hand(gl[b], cams.K[b], point)
        assert torch.allclose(pix[b, 0], by_hand, atol=1e-9)
    # each round trip reproduces the same world-to-camera and hence the same pixel
    trips = [
        Camera.from_opengl(gl, cams.K, 40, 30),
        Camera.from_nerfstudio(cams.to_nerfstudio(), cams.K, 40, 30),
        Camera.from_blender(cams.to_blender(), cams.K, 40, 30),
        Camera(cams.K, opengl_c2w_to_opencv_w2c(opencv_w2c_to_opengl_c2w(cams.world_to_camera)), 40, 30),
    ]
    for other in trips:
        assert torch.allclose(other.world_to_camera, cams.world_to_camera, atol=1e-12)
        assert torch.allclose(project(other, point[None])[0], pix, atol=1e-9)
    assert cams.to_nerfstudio().shape == (4, 3, 4)
    # Blender = OpenGL camera axes: the camera looks down its local -Z
    fwd_world = -cams.to_blender()[:, :3, 2]
    assert torch.allclose(fwd_world, cams.camera_to_world[:, :3, 2], atol=1e-12)


def test_opengl_projection_matches_pixels():
    cams = _random_cameras()
    point = torch.tensor([0.1, -0.2, 0.15, 1.0], dtype=torch.float64)
    pix, _ = project(cams, point[None, :3])
    view = torch.linalg.inv(cams.to_opengl())
    clip = cams.opengl_projection() @ view @ point
    ndc = clip[:, :3] / clip[:, 3:]
    u = (ndc[:, 0] + 1) / 2 * cams.width
    v = (1 - ndc[:, 1]) / 2 * cams.height
    assert torch.allclose(torch.stack([u, v], -1), pix[:, 0], atol=1e-9)


def test_generate_rays_pass_through_pixel_centres():
    cams = _random_cameras(2).resized(8, 6)
    origins, dirs = generate_rays(cams)
    assert origins.shape == dirs.shape == (2, 6, 8, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(2, 6, 8, dtype=torch.float64))
    assert torch.allclose(origins[:, 0, 0], cams.center)
    pts = (origins + 2.5 * dirs).reshape(2, -1, 3)
    pix, _ = project(cams, pts)
    v, u = torch.meshgrid(torch.arange(6.0) + 0.5, torch.arange(8.0) + 0.5, indexing="ij")
    expected = torch.stack([u, v], -1).reshape(1, -1, 2).double()
    assert torch.allclose(pix, expected.expand(2, -1, -1), atol=1e-9)
    # unnormalised directions have camera z = 1, so origin + d * dir sits at depth d
    _, raw = generate_rays(cams, normalize=False)
    _, depth = project(cams, (origins + 3.0 * raw).reshape(2, -1, 3))
    assert torch.allclose(depth, torch.full_like(depth, 3.0))


def test_orbit_angles_mean_what_the_docstring_says():
    cams = orbit_cameras(
        torch.tensor([0.0, 0.0, 90.0, 30.0]), torch.tensor([0.0, 90.0, 0.0, 180.0]), 2.0, 50.0, 16, 16
    )
    c = cams.center
    assert torch.allclose(c[0], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)  # azimuth 0: +X side
    assert torch.allclose(c[1], torch.tensor([0.0, 2.0, 0.0]), atol=1e-6)  # azimuth 90: +Y side
    assert torch.allclose(c[2], torch.tensor([0.0, 0.0, 2.0]), atol=1e-6)  # elevation 90: above
    e = math.radians(30.0)
    assert torch.allclose(c[3], torch.tensor([-2 * math.cos(e), 0.0, 2 * math.sin(e)]), atol=1e-6)
    pix, _ = project(cams, torch.zeros(1, 3))
    assert torch.allclose(pix, torch.full_like(pix, 8.0), atol=1e-4)  # all look at the origin


def test_sample_orbit_cameras_ranges_and_determinism():
    kw = dict(elevation_range=(0.0, 30.0), azimuth_range=(-90.0, 90.0), distance_range=(2.0, 3.0), fov_range=(40.0, 50.0))
    a = sample_orbit_cameras(64, 8, 8, generator=torch.Generator().manual_seed(3), **kw)
    b = sample_orbit_cameras(64, 8, 8, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(a.cameras.world_to_camera, b.cameras.world_to_camera)
    assert len(a.cameras) == 64
    assert ((a.elevation_deg >= 0) & (a.elevation_deg <= 30)).all()
    assert ((a.azimuth_deg >= -90) & (a.azimuth_deg <= 90)).all()
    dist = a.cameras.center.norm(dim=-1)
    assert torch.allclose(dist, a.distance, atol=1e-5)
    el = torch.rad2deg(torch.asin(a.cameras.center[:, 2] / dist))
    assert torch.allclose(el, a.elevation_deg, atol=1e-3)
    fov = focal_to_fov(a.cameras.K[:, 1, 1], 8.0)
    assert torch.allclose(fov, a.fov_y_deg, atol=1e-3)


def test_camera_container_behaviour_and_validation():
    cams = _random_cameras(3)
    assert len(cams) == 3
    one = cams[1]
    assert len(one) == 1 and torch.equal(one.K[0], cams.K[1])
    assert len(cams[-1]) == 1 and len(cams[0:2]) == 2
    assert len(Camera.cat([cams, one])) == 4
    f32 = cams.to(dtype=torch.float32)
    assert f32.dtype == torch.float32 and f32.device.type == "cpu"
    assert torch.allclose(cams.camera_to_world @ cams.world_to_camera, torch.eye(4, dtype=torch.float64).expand(3, 4, 4), atol=1e-12)
    single = Camera(torch.eye(3), torch.eye(4), 4, 4)
    assert single.K.shape == (1, 3, 3)
    with pytest.raises(IndexError):
        cams[3]
    with pytest.raises(ValueError):
        Camera(torch.eye(3), torch.eye(4), 4, 4, near=1.0, far=0.5)
    with pytest.raises(ValueError):
        Camera(torch.eye(2), torch.eye(4), 4, 4)


def test_resized_keeps_pixel_centre_convention():
    cams = _random_cameras(1)
    pts = torch.tensor([[0.05, 0.1, -0.1]], dtype=torch.float64)
    p1, _ = project(cams, pts)
    p2, _ = project(cams.resized(80, 60), pts)
    assert torch.allclose(p2, p1 * 2.0)
