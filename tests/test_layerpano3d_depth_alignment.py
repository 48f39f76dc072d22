"""LayerPano3D panorama depth: tangent views, joint per-view affine alignment, blend, metric scale.

Truths are independent of the module: an analytic box room with a sphere (ray casts), an
icosahedron built from its textbook vertex rings, per-view predictions made from the true
camera z with known random affines.
"""

from __future__ import annotations

import math

import pytest
import torch

from layerforge.errors import InputError
from layerforge.models.layerpano3d.depth_alignment import (
    CUBEMAP_FOV_DEG,
    ICOSAHEDRON_FOV_DEG,
    Alignment,
    align_views,
    blend_views,
    estimate_panorama_depth,
    room_prior_depth,
    scale_to_camera_height,
    tangent_cameras,
    view_geometry,
)
from layerforge.renderers.cameras import generate_rays
from layerforge.renderers.panorama import equirect_directions, equirect_to_perspective

H, W, S = 64, 128, 48  # panorama rows x columns, tangent view size

# box room around the camera (x, y, z ranges, metres) and a ball in front of the +X wall
BOX = ((-2.0, 3.0), (-2.5, 1.8), (-1.5, 1.2))
BALL_C, BALL_R = (2.0, 0.6, 0.1), 0.55


def scene_depth(dirs: torch.Tensor, box=BOX) -> torch.Tensor:
    """Radial distance [...] along unit dirs [..., 3] from the origin to the box walls or the ball."""
    d = dirs.double()
    t = torch.full(d.shape[:-1], float("inf"), dtype=torch.float64)
    for axis, (lo, hi) in enumerate(box):
        comp = d[..., axis]
        for plane in (lo, hi):
            hit = plane / torch.where(comp.abs() > 1e-12, comp, torch.full_like(comp, 1e-12))
            t = torch.where(hit > 0, torch.minimum(t, hit), t)
    c = torch.tensor(BALL_C, dtype=torch.float64)
    b = d @ c
    disc = b * b - (c @ c - BALL_R**2)
    t_ball = b - disc.clamp_min(0).sqrt()
    return torch.where((disc > 0) & (t_ball > 0), torch.minimum(t, t_ball), t)


def view_truth(cams, box=BOX) -> tuple[torch.Tensor, torch.Tensor]:
    """True camera z [B, h, w] at every view pixel centre and the views' forward axes [B, 3]."""
    _, dirs = generate_rays(cams.to(dtype=torch.float64))
    fwd = cams.to(dtype=torch.float64).camera_to_world[:, :3, 2]
    cos = torch.einsum("bhwi,bi->bhw", dirs, fwd)
    return scene_depth(dirs, box) * cos, fwd


def random_affines(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = 0.5 + 1.5 * torch.rand(n, generator=g, dtype=torch.float64)
    b = -0.2 + 0.4 * torch.rand(n, generator=g, dtype=torch.float64)
    return a, b


def predictions(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, kind: str, noise: float = 0.0, seed: int = 1):
    base = 1.0 / z if kind == "inverse_depth" else z
    p = a[:, None, None] * base + b[:, None, None]
    if noise:
        g = torch.Generator().manual_seed(seed)
        p = p * (1.0 + noise * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return p


def affine_errors(al: Alignment, a: torch.Tensor, b: torch.Tensor, z: torch.Tensor, kind: str):
    """Aligned view i is s_i (a_i base + b_i) + t_i; the only overlap-consistent result is
    a_0 * base for every view (scale fixed by s_0 = 1, zero shift: see the module docstring).
    Returns max |s_i a_i / a_0 - 1| and max |s_i b_i + t_i| / (a_0 * median(base))."""
    base = 1.0 / z if kind == "inverse_depth" else z
    s, t = al.scale, al.shift
    scale_err = (s * a / a[0] - 1.0).abs().max().item()
    shift_err = ((s * b + t).abs() / (a[0] * base.median())).max().item()
    return scale_err, shift_err


@pytest.fixture(scope="module")
def ico():
    cams = tangent_cameras("icosahedron", S).to(dtype=torch.float64)
    z, _ = view_truth(cams)
    truth = scene_depth(equirect_directions(H, W, dtype=torch.float64))
    return cams, z, truth


# --- cameras and coverage ----------------------------------------------------------------------


def textbook_icosahedron_face_centres() -> torch.Tensor:
    """Icosahedron with a vertex at each pole and rings of 5 at latitude +-atan(1/2) (the lower
    one turned by 36 deg); faces listed by hand: 5 caps each side, 10 in the band."""
    z, r = 1 / math.sqrt(5), 2 / math.sqrt(5)
    up = [(r * math.cos(2 * math.pi * k / 5), r * math.sin(2 * math.pi * k / 5), z) for k in range(5)]
    lo = [(r * math.cos(2 * math.pi * k / 5 + math.pi / 5), r * math.sin(2 * math.pi * k / 5 + math.pi / 5), -z)
          for k in range(5)]
    n, s = (0.0, 0.0, 1.0), (0.0, 0.0, -1.0)
    faces = []
    for k in range(5):
        k1 = (k + 1) % 5
        faces += [(n, up[k], up[k1]), (up[k], up[k1], lo[k]), (lo[k], lo[k1], up[k1]), (s, lo[k], lo[k1])]
    c = torch.tensor(faces, dtype=torch.float64).sum(1)
    return c / c.norm(dim=-1, keepdim=True)


def test_tangent_cameras_look_at_the_icosahedron_faces_and_cube_axes():
    cams = tangent_cameras("icosahedron", S)
    assert len(cams) == 20 and (cams.width, cams.height) == (S, S)
    fwd = cams.to(dtype=torch.float64).camera_to_world[:, :3, 2]
    torch.testing.assert_close(fwd.norm(dim=-1), torch.ones(20, dtype=torch.float64), atol=1e-6, rtol=0)
    truth = textbook_icosahedron_face_centres()
    gap = torch.cdist(fwd, truth)  # chord lengths (float32 cameras: acos near 1 would amplify rounding)
    assert gap.min(1).values.max() < 1e-5 and gap.min(0).values.max() < 1e-5  # the same 20 directions
    pair = torch.rad2deg(torch.acos((fwd @ fwd.T).clamp(-1, 1))) + torch.eye(20, dtype=torch.float64) * 999
    assert abs(pair.min().item() - 41.810) < 1e-2  # neighbouring face centres
    # square views: the focal length gives the stated FoV, principal point at the centre
    f = cams.K[:, 0, 0]
    torch.testing.assert_close(2 * torch.rad2deg(torch.atan(0.5 * S / f)), torch.full((20,), ICOSAHEDRON_FOV_DEG))
    cube = tangent_cameras("cubemap", S)
    assert len(cube) == 6
    cf = cube.to(dtype=torch.float64).camera_to_world[:, :3, 2]
    axes = torch.cat([torch.eye(3), -torch.eye(3)]).double()
    assert ((cf @ axes.T) > 1 - 1e-9).sum().item() == 6 and ((cf @ axes.T) > 1 - 1e-9).any(0).all()
    torch.testing.assert_close(2 * torch.rad2deg(torch.atan(0.5 * S / cube.K[:, 0, 0])), torch.full((6,), CUBEMAP_FOV_DEG))


def test_view_geometry_coverage_and_cosines():
    d = equirect_directions(H, W, dtype=torch.float64)
    for layout, min_views, frac2 in (("icosahedron", 2, 1.0), ("cubemap", 1, 0.12)):
        cams = tangent_cameras(layout, S)
        mask, cos = view_geometry(cams, H, W)
        assert mask.shape == (len(cams), H, W) and cos.shape == (len(cams), H, W)
        count = mask.sum(0)
        assert count.min().item() >= min_views  # every panorama pixel is seen
        assert (count >= 2).double().mean().item() >= frac2  # ico: all by >= 2; cube: >= 12 % of pixels
        # cos is the cosine to the optical axis, and the mask agrees with a direct pinhole test
        fwd = cams.to(dtype=torch.float64).camera_to_world[:, :3, :3]
        local = torch.einsum("bji,hwj->bhwi", fwd, d)  # camera-frame rays (rows of w2c = axes)
        torch.testing.assert_close(cos, local[..., 2], atol=1e-9, rtol=0)
        half = math.tan(math.radians(0.5 * (ICOSAHEDRON_FOV_DEG if layout == "icosahedron" else CUBEMAP_FOV_DEG)))
        zc = local[..., 2].clamp_min(1e-9)
        inside = (local[..., 2] > 0) & ((local[..., 0] / zc).abs() <= half) & ((local[..., 1] / zc).abs() <= half)
        assert (inside != mask).double().mean().item() < 1e-3  # only pixels on a border may differ


# --- alignment and blending ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["inverse_depth", "depth"])
def test_align_views_recovers_the_per_view_affines(ico, kind):
    cams, z, _ = ico
    a, b = random_affines(len(cams), seed=3)
    al = align_views(predictions(z, a, b, kind), cams, H, W, prediction=kind)
    assert al.scale.shape == (20,) and al.shift.shape == (20,) and al.pairs > 1000
    assert al.scale[0].item() == 1.0  # the gauge
    scale_err, shift_err = affine_errors(al, a, b, z, kind)
    assert scale_err < 1e-3 and shift_err < 1e-3, (scale_err, shift_err)
    noisy = align_views(predictions(z, a, b, kind, noise=0.01), cams, H, W, prediction=kind)
    scale_err, shift_err = affine_errors(noisy, a, b, z, kind)
    assert scale_err < 2e-2 and shift_err < 2e-2, (scale_err, shift_err)
    assert noisy.rms > al.rms


def test_plain_least_squares_is_biased_by_noise_and_the_eigen_solve_is_not(ico):
    # pinning s_0 = 1 in a plain least squares pulls the other scales low under noise (errors
    # in variables); the default relative-noise solve does not
    cams, z, _ = ico
    a, b = random_affines(len(cams), seed=3)
    p = predictions(z, a, b, "inverse_depth", noise=0.01)
    plain = affine_errors(align_views(p, cams, H, W, noise_model="none"), a, b, z, "inverse_depth")
    eigen = affine_errors(align_views(p, cams, H, W), a, b, z, "inverse_depth")
    assert plain[0] > 2 * eigen[0] and plain[0] > 1e-2, (plain, eigen)
    # without noise both are exact
    exact = predictions(z, a, b, "inverse_depth")
    assert max(affine_errors(align_views(exact, cams, H, W, noise_model="none"), a, b, z, "inverse_depth")) < 1e-3


def test_cubemap_views_align_unless_the_up_down_views_see_only_floor_or_ceiling():
    cams = tangent_cameras("cubemap", S).to(dtype=torch.float64)
    a, b = random_affines(6, seed=9)
    # in the big room the +Z view's 10 deg overlap bands (40-50 deg from the zenith) see only the
    # flat ceiling (and the -Z view's almost only the floor): its prediction is constant there
    # and its scale and shift trade off exactly
    z, _ = view_truth(cams)
    with pytest.raises(InputError, match="view [45]'s scale and shift"):
        align_views(predictions(z, a, b, "inverse_depth"), cams, H, W)
    # walls within 1.2-1.4 m reach into those bands: the cube aligns exactly
    small = ((-1.2, 1.4), (-1.1, 1.3), (-1.5, 1.2))
    z, _ = view_truth(cams, small)
    al = align_views(predictions(z, a, b, "inverse_depth"), cams, H, W)
    assert max(affine_errors(al, a, b, z, "inverse_depth")) < 1e-3


@pytest.mark.parametrize("kind", ["inverse_depth", "depth"])
def test_blend_reproduces_the_true_radial_depth_and_needs_the_alignment(ico, kind):
    cams, z, truth = ico
    a, b = random_affines(len(cams), seed=5)
    p = predictions(z, a, b, kind)
    al = align_views(p, cams, H, W, prediction=kind)
    depth = blend_views(p, cams, al, H, W, prediction=kind)
    assert depth.shape == (H, W) and torch.isfinite(depth).all()
    # the aligned views are a_0 * base, so the blend is truth / a_0 (inverse) or a_0 * truth (depth)
    metric = depth * a[0] if kind == "inverse_depth" else depth / a[0]
    rel = (metric - truth).abs() / truth
    err = rel.median().item()
    assert err < 1e-3, err
    # at the ball's silhouette, views sampled at their nearest pixel (edge_jump) keep the edge
    # sharp; always-bilinear samples leave points floating between ball and wall
    soft = blend_views(p, cams, al, H, W, prediction=kind, edge_jump=None)
    soft_rel = ((soft * a[0] if kind == "inverse_depth" else soft / a[0]) - truth).abs() / truth
    assert (rel > 0.05).sum() < 0.5 * (soft_rel > 0.05).sum(), ((rel > 0.05).sum(), (soft_rel > 0.05).sum())
    # the same blend without the alignment is far off
    raw = blend_views(p, cams, Alignment(torch.ones(20), torch.zeros(20), float("nan"), 0), H, W, prediction=kind)
    assert torch.isfinite(raw).all()
    ratio = raw / truth
    raw_err = ((ratio / ratio.median() - 1.0).abs()).median().item()  # even forgiving a global scale
    assert raw_err > 10 * err and raw_err > 1e-2, (raw_err, err)


def test_estimate_panorama_depth_with_a_fake_estimator(ico):
    _, z, truth = ico
    # the panorama's RGB encodes the radial depth, so the fake can check which view it was shown
    pano = (truth / truth.max())[..., None].expand(H, W, 3).float()
    expected = tangent_cameras("icosahedron", S)
    seen = []
    g = torch.Generator().manual_seed(11)

    def fake(image: torch.Tensor) -> torch.Tensor:
        k = len(seen)
        seen.append(k)
        assert image.shape == (S, S, 3)
        ref = equirect_to_perspective(pano, expected[k], mode="bilinear")[0]
        assert torch.allclose(image, ref, atol=1e-6)  # views come in tangent_cameras' order
        a = 0.5 + 1.5 * torch.rand((), generator=g, dtype=torch.float64)
        b = -0.2 + 0.4 * torch.rand((), generator=g, dtype=torch.float64)
        return (a / z[k] + b).float()

    calls = []
    depth, al = estimate_panorama_depth(pano, fake, view_size=S, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 20) for i in range(1, 21)]
    assert depth.shape == (H, W) and depth.dtype == torch.float32 and torch.isfinite(depth).all()
    assert abs(depth.median().item() - 1.0) < 1e-5
    ratio = depth.double() / truth
    assert (ratio.std() / ratio.mean()).item() < 1e-2
    assert al.rms < 1e-3


# --- metric scale and the room prior -----------------------------------------------------------


def test_scale_to_camera_height_recovers_the_scale():
    d = equirect_directions(H, W, dtype=torch.float64)
    floor = torch.where(d[..., 2] < -1e-9, 1.5 / (-d[..., 2]).clamp_min(1e-9), torch.full((H, W), 4.0, dtype=torch.float64))
    scaled, scale = scale_to_camera_height(floor * 3.7, 1.5)
    assert abs(scale * 3.7 - 1.0) < 1e-3
    torch.testing.assert_close(scaled, floor, rtol=1e-3, atol=0)


def test_room_prior_depth_hits_floor_wall_and_ceiling():
    h, c, r = 1.6, 2.8, 3.0
    depth = room_prior_depth(181, 360, camera_height_m=h, ceiling_height_m=c, wall_distance_m=r)
    assert depth.shape == (181, 360) and torch.isfinite(depth).all()
    # 181 rows: the middle row (90) is the horizon exactly; the last row is 0.5 deg from straight down
    torch.testing.assert_close(depth[90], torch.full((360,), r), rtol=1e-5, atol=0)
    lat = math.radians(0.5)
    torch.testing.assert_close(depth[-1], torch.full((360,), h / math.cos(lat)), rtol=1e-5, atol=0)
    torch.testing.assert_close(depth[0], torch.full((360,), (c - h) / math.cos(lat)), rtol=1e-5, atol=0)
    # row 135 looks 44.75 deg down: the floor (2.27 m) is nearer than the wall (4.22 m); row 100
    # looks 9.94 deg down: the wall (3.05 m) is nearer than the floor (9.27 m)
    for row, expect in ((135, "floor"), (100, "wall")):
        down = math.radians((row + 0.5) * 180 / 181 - 90)
        floor, wall = h / math.sin(down), r / math.cos(down)
        assert (floor < wall) == (expect == "floor")
        torch.testing.assert_close(depth[row], torch.full((360,), min(floor, wall)), rtol=1e-5, atol=0)


# --- bad input -----------------------------------------------------------------------------------


def test_bad_predictions_raise_one_line_input_errors(ico):
    cams, z, _ = ico
    good = predictions(z, *random_affines(20, seed=7), "inverse_depth")
    with pytest.raises(InputError) as err:
        align_views(good[:19], cams, H, W)
    assert "\n" not in str(err.value) and "[20, 48, 48]" in str(err.value)
    nan = good.clone()
    nan[4] = float("nan")
    for fn in (lambda: align_views(nan, cams, H, W), lambda: blend_views(nan, cams, Alignment(torch.ones(20), torch.zeros(20), 0.0, 0), H, W)):
        with pytest.raises(InputError) as err:
            fn()
        assert "\n" not in str(err.value) and "view 4" in str(err.value)
    # two views that never overlap: no shared pixel
    far = tangent_cameras("cubemap", S, fov_deg=60.0).to(dtype=torch.float64)[[0, 2]]
    with pytest.raises(InputError, match="overlap"):
        align_views(torch.ones(2, S, S, dtype=torch.float64), far, H, W)
    with pytest.raises(InputError):
        estimate_panorama_depth(torch.zeros(H, W), lambda im: im[..., 0], view_size=S)
