"""DP-Recon background: panorama of an analytic room, unseen mask, candidate score and choice,
TSDF filter of a box room (against the true walls)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from torch import Tensor

from layerforge.assets.types import Mesh
from layerforge.errors import ConfigError, InputError, OutputError
from layerforge.models.dp_recon import (
    UNSEEN_VIS_THRESHOLD,
    VisibilityGrid,
    anchor_cameras,
    choose_panorama,
    panorama_candidates,
    panorama_score,
    render_background_panorama,
    tsdf_filter,
    unseen_mask,
)
from layerforge.models.fields.base import Field, FieldOutput
from layerforge.models.fields.compose import ComposedSDFField
from layerforge.models.fields.mlp_fields import LaplaceDensity
from layerforge.models.fields.render import SamplerConfig, render_rays
from layerforge.models.guidance.inpaint import Inpainter

CENTRE = (0.2, -0.1, 0.05)
RADIUS = 1.0
H, W = 16, 32


class RoomSphere(Field):
    """Background: the inside of a sphere (SDF ``R - |x - c|``, free space inside), coloured by
    the world direction from its centre: ``rgb = 0.5 + 0.5 (x - c) / |x - c|``."""

    kind = "sdf"

    def __init__(self, centre, radius: float) -> None:
        c = torch.tensor(centre, dtype=torch.float32)
        super().__init__(torch.stack([c - radius - 0.3, c + radius + 0.3]))
        self.register_buffer("centre", c)
        self.radius = radius
        self.laplace = LaplaceDensity()

    def forward(self, points: Tensor, directions: Tensor | None = None) -> FieldOutput:
        rel = points - self.centre
        r = rel.norm(dim=-1, keepdim=True)
        sdf = self.radius - r
        rgb = 0.5 + 0.5 * rel / r.clamp_min(1e-9)
        return FieldOutput(density=self.laplace(sdf), rgb=rgb, sdf=sdf)


class Ball(Field):
    """An object: a ball (SDF ``|x - c| - r``), grey."""

    kind = "sdf"

    def __init__(self, centre, radius: float) -> None:
        c = torch.tensor(centre, dtype=torch.float32)
        super().__init__(torch.stack([c - radius - 0.1, c + radius + 0.1]))
        self.register_buffer("centre", c)
        self.radius = radius
        self.laplace = LaplaceDensity()

    def forward(self, points: Tensor, directions: Tensor | None = None) -> FieldOutput:
        sdf = (points - self.centre).norm(dim=-1, keepdim=True) - self.radius
        return FieldOutput(density=self.laplace(sdf), rgb=torch.full_like(points, 0.3), sdf=sdf)


def _scene() -> ComposedSDFField:
    ball_centre = (CENTRE[0] + 0.5, CENTRE[1], CENTRE[2])  # on the +X ray, 0.3 m from the pano centre
    return ComposedSDFField([RoomSphere(CENTRE, RADIUS), Ball(ball_centre, 0.2)], beta_init=0.01)


def _half_grid(fill_positive: float = 1.0) -> VisibilityGrid:
    """Grid 1 (or ``fill_positive``) on vertices with world x >= centre x + 0.3, 0 elsewhere."""
    grid = VisibilityGrid(resolution=31, lo=-1.5, hi=1.5)
    xs = grid.vertex_positions()[:, 0]
    with torch.no_grad():
        grid.values.zero_()
        grid.values[xs >= CENTRE[0] + 0.3 - 1e-6] = fill_positive
    return grid


def _design_directions(h: int, w: int) -> Tensor:
    """DESIGN's frame written out independently: lon = pi - 2 pi (j + .5) / W, lat = pi/2 - pi (i + .5) / H."""
    j = torch.arange(w, dtype=torch.float64) + 0.5
    i = torch.arange(h, dtype=torch.float64) + 0.5
    lon = math.pi - 2.0 * math.pi * j / w
    lat = 0.5 * math.pi - math.pi * i / h
    lat, lon = torch.meshgrid(lat, lon, indexing="ij")
    return torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], -1).float()


SAMPLER = SamplerConfig(num_samples=96, num_importance=32)


@pytest.fixture(scope="module")
def pano() -> dict[str, Tensor]:
    return render_background_panorama(_scene(), _half_grid(), CENTRE, H, W, SAMPLER, chunk_rays=4096)


# ------------------------------------------------------------------------------------ panorama


def test_panorama_distance_is_the_room_radius_and_skips_the_objects(pano) -> None:
    # Measured: |distance - R| <= 3.7e-3 m (VolSDF beta 0.01, 96 + 32 samples), alpha >= 0.9999998.
    assert pano["distance"].shape == (H, W, 1) and pano["rgb"].shape == (H, W, 3) and pano["visibility"].shape == (H, W)
    assert float((pano["distance"] - RADIUS).abs().max()) < 0.015
    assert float(pano["alpha"].min()) > 0.999
    assert not pano["rgb"].requires_grad and not pano["distance"].requires_grad
    # The full scene has the ball 0.3 m along +X; the background panorama does not see it.
    o = torch.tensor([CENTRE], dtype=torch.float32)
    with torch.no_grad():
        full = render_rays(_scene(), o, torch.tensor([[1.0, 0.0, 0.0]]), SAMPLER)
    assert float(full["distance"]) == pytest.approx(0.3, abs=0.02)


def test_panorama_colours_land_at_the_design_frame_pixels(pano) -> None:
    # Measured: max |rgb - (0.5 + 0.5 d)| = 2.4e-7 with d from DESIGN's formula.
    expected = 0.5 + 0.5 * _design_directions(H, W)
    assert float((pano["rgb"] - expected).abs().max()) < 1e-4
    equator = pano["rgb"][H // 2]
    assert int(equator[:, 0].argmax()) in (W // 2 - 1, W // 2)  # +X at the centre column
    assert int(equator[:, 1].argmax()) in (W // 4 - 1, W // 4)  # +Y a quarter to the left (lon +90)
    assert int(equator[:, 1].argmin()) in (3 * W // 4 - 1, 3 * W // 4)  # -Y a quarter to the right
    assert int(pano["rgb"][:, 0, 2].argmax()) == 0  # +Z on the top row


def test_panorama_visibility_is_the_composited_grid(pano) -> None:
    # Measured: seen side (d_x > 0.5) visibility >= 0.9999998, unseen side (d_x < -0.3) exactly 0.
    d = _design_directions(H, W)
    v = pano["visibility"]
    assert float(v[d[..., 0] > 0.5].min()) > 0.99 and float(v[d[..., 0] < -0.3].max()) < 1e-6
    assert bool((unseen_mask(v) == (v < 0.2)).all())
    # clamped to 1: a grid of 1.5 composites to 1.5 alpha and renders exactly 1
    clamped = render_background_panorama(_scene(), _half_grid(1.5), CENTRE, H, W, SAMPLER, chunk_rays=4096)
    assert float(clamped["visibility"].max()) == 1.0
    assert float(clamped["visibility"][d[..., 0] > 0.5].min()) == 1.0


def test_panorama_does_not_depend_on_the_chunk_size(pano) -> None:
    small = render_background_panorama(_scene(), _half_grid(), CENTRE, H, W, SAMPLER, chunk_rays=37)
    for k in ("rgb", "distance", "visibility"):
        assert torch.allclose(small[k], pano[k], atol=1e-6), k


def test_unseen_mask_hand_values() -> None:
    assert UNSEEN_VIS_THRESHOLD == 0.2
    v = torch.tensor([[0.0, 0.19, 0.2], [0.5, 1.0, 0.1999]])
    assert unseen_mask(v).tolist() == [[True, True, False], [False, False, True]]
    assert unseen_mask(v[..., None]).shape == (2, 3)
    assert unseen_mask(v, threshold=0.6).tolist() == [[True, True, True], [True, False, True]]


# -------------------------------------------------------------------------- score and choice


def _periodic(h: int = 12, w: int = 24) -> Tensor:
    """A smooth panorama that wraps seamlessly: 0.5 + 0.3 cos(lon) + 0.1 sin(lat) per channel."""
    d = _design_directions(h, w)
    lon = torch.atan2(d[..., 1], d[..., 0])
    base = 0.5 + 0.3 * torch.cos(lon) + 0.1 * d[..., 2]
    return torch.stack([base, 0.9 * base, 0.8 * base], -1)


def _hole(h: int = 12, w: int = 24) -> Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[4:8, 9:15] = True
    return m


def test_score_hand_value() -> None:
    # P = [[0, 1, 2], [3, 4, 5]], hole at (0, 1). seam = mean(|0 - 2|, |3 - 5|) = 2.
    # Pairs into the hole: from (0,0) rightwards: step 1, previous step 0 - 2 (wrap) -> change 3;
    # from (0,2) leftwards: step -1, previous 2 - 0 (wrap) -> change 3; from (1,1) upwards:
    # step -3, no row below -> no gradient pair. colour (1 + 1 + 3) / 3, gradient (3 + 3) / 2.
    P = torch.tensor([[0.0, 1, 2], [3, 4, 5]])[..., None]
    m = torch.tensor([[False, True, False], [False, False, False]])
    s = panorama_score(P, m)
    assert s["seam"] == pytest.approx(2.0)
    assert s["boundary_colour"] == pytest.approx(5.0 / 3.0)
    assert s["boundary_gradient"] == pytest.approx(3.0)
    assert s["total"] == pytest.approx(2.0 + 5.0 / 3.0 + 3.0)
    assert panorama_score(P, torch.zeros(2, 3, dtype=torch.bool))["boundary_colour"] == 0.0


def test_seamless_candidate_beats_a_seam_and_a_boundary_step() -> None:
    true, m = _periodic(), _hole()
    ramp = torch.linspace(0.0, 0.3, true.shape[1])[None, :, None]
    seam = (true + ramp).clamp(0, 1)
    step = true.clone()
    step[m] = (step[m] + 0.2).clamp(0, 1)
    s_true, s_seam, s_step = (panorama_score(x, m) for x in (true, seam, step))
    assert s_true["seam"] < 0.01 and s_seam["seam"] > 0.25
    assert s_step["boundary_colour"] > s_true["boundary_colour"] + 0.1
    assert s_step["boundary_gradient"] > s_true["boundary_gradient"] + 0.1
    assert s_true["total"] < min(s_seam["total"], s_step["total"])
    index, scores = choose_panorama([step, seam, true], m)
    assert index == 2 and [s["total"] for s in scores] == [s_step["total"], s_seam["total"], s_true["total"]]


def test_choice_is_deterministic_and_ties_go_to_the_first() -> None:
    true, m = _periodic(), _hole()
    step = true.clone()
    step[m] = 0.0
    assert choose_panorama([step, true, true.clone()], m)[0] == 1
    assert choose_panorama([true.clone(), true], m)[0] == 0
    assert choose_panorama([true, step], m) == choose_panorama([true, step], m)
    with pytest.raises(InputError):
        choose_panorama([], m)


def test_opencv_candidates_keep_unmasked_pixels_and_vary() -> None:
    true, m = _periodic(), _hole()
    holed = true.clone()
    holed[m] = 0.0
    cands = panorama_candidates(holed, m, Inpainter(), n=4, seed=3, prompt="empty room")
    assert len(cands) == 4
    for c in cands:
        assert torch.equal(c[~m], holed[~m])
        assert float((c[m] - true[m]).abs().mean()) < 0.1  # filled from the surroundings, not left black
    assert not torch.equal(cands[0], cands[1])  # telea vs Navier-Stokes
    index, _ = choose_panorama(cands, m)
    # Measured: mean |fill - truth| 0.030 / 0.022 / 0.037 / 0.028 (telea 3, ns 3, telea 5, ns 5);
    # the score picks ns 3, the most faithful one.
    errors = [float((c[m] - true[m]).abs().mean()) for c in cands]
    assert errors[index] == min(errors)
    assert index == choose_panorama(panorama_candidates(holed, m, Inpainter(), 4, 3), m)[0]
    with pytest.raises(ConfigError):
        panorama_candidates(holed, m, Inpainter(), n=9, seed=0)


def test_wrap_padding_fills_a_hole_across_the_seam_from_both_sides() -> None:
    true = _periodic()
    m = torch.zeros(12, 24, dtype=torch.bool)
    m[3:9, :3] = True
    m[3:9, -3:] = True  # one hole, split by the seam
    holed = true.clone()
    holed[m] = 0.0
    # Measured mean |fill - truth| (telea 3, ns 3, telea 5, ns 5): 0.074 0.049 0.088 0.053
    # without padding, 0.060 0.047 0.068 0.049 with 6 wrapped columns; seam 0.002-0.007 -> 0.002-0.003.
    plain = panorama_candidates(holed, m, Inpainter(), n=4, seed=0)
    wrapped = panorama_candidates(holed, m, Inpainter(), n=4, seed=0, wrap_px=6)
    for a, b in zip(plain, wrapped):
        assert b.shape == true.shape and torch.equal(b[~m], holed[~m])
        assert float((b[m] - true[m]).abs().mean()) <= float((a[m] - true[m]).abs().mean()) + 1e-4
    err = [float((b[m] - true[m]).abs().mean()) for b in wrapped]
    assert sum(err) < 0.9 * sum(float((a[m] - true[m]).abs().mean()) for a in plain)


def test_diffusion_candidates_use_consecutive_seeds() -> None:
    calls = []

    class Stub:
        backend = "diffusers"

        def __call__(self, image, mask, prompt=None, seed=None):
            calls.append((prompt, seed, tuple(image.shape)))
            return image.clone()

    out = panorama_candidates(_periodic(), _hole(), Stub(), n=3, seed=5, prompt="empty room")
    assert len(out) == 3 and [c[:2] for c in calls] == [("empty room", 5), ("empty room", 6), ("empty room", 7)]
    calls.clear()
    out = panorama_candidates(_periodic(), _hole(), Stub(), n=1, seed=0, wrap_px=4)
    assert calls[0][2] == (12, 32, 3) and torch.equal(out[0], _periodic())


# ------------------------------------------------------------------------------- TSDF filter


VOXEL = 0.04


def _box_distance(p: np.ndarray, half: float = 1.0) -> np.ndarray:
    """Unsigned distance of points [N, 3] to the surface of the cube [-half, half]^3."""
    q = np.abs(p) - half
    return np.abs(np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(1), 0.0))


def test_tsdf_filter_keeps_the_inner_walls_and_drops_what_is_unseen_or_detached() -> None:
    room = trimesh.creation.box(extents=(2.0, 2.0, 2.0))  # true inner area 24 m^2
    floater = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    floater.apply_translation((0.5, -0.5, -0.6))  # seen by the anchors, not connected to the walls
    outside = trimesh.creation.box(extents=(0.05, 1.5, 1.5))
    outside.apply_translation((1.5, 0.0, 0.0))  # behind the +X wall: no anchor sees it
    scene = trimesh.util.concatenate([room, floater, outside])
    centres = np.array([[0.0, 0.0, 0.0], [0.3, 0.2, 0.1]])
    out = tsdf_filter(Mesh(scene.vertices, scene.faces), centres, voxel=VOXEL, trunc=3 * VOXEL,
                      image_size=(64, 48), fov_deg=60.0, seed=0)
    assert out.vertices.dtype == np.float32 and out.faces.dtype == np.int64
    # Measured: max distance 0.033 m (0.8 voxel), area 23.46 m^2 (-2.2 %), every normal into the room.
    dist = _box_distance(out.vertices.astype(np.float64))
    assert dist.max() < 2 * VOXEL  # no floater (>= 0.3 m from the walls) and no outside plane (0.5 m)
    tm = trimesh.Trimesh(out.vertices, out.faces, process=False)
    assert tm.area == pytest.approx(24.0, rel=0.06)
    for axis in range(3):  # all six walls are there
        for sign in (-1.0, 1.0):
            assert (np.abs(out.vertices[:, axis] - sign) < VOXEL).sum() > 100
    inward = (tm.face_normals * -tm.triangles_center).sum(1) > 0
    assert inward.mean() > 0.99


def test_anchor_cameras_follow_the_authors_bins_and_are_seeded() -> None:
    centres = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 0.5]])
    cams = anchor_cameras(centres, image_size=(8, 6), fov_deg=60.0, seed=1)
    assert len(cams) == 2 * 12 * 6
    eye = cams.center.reshape(2, 72, 3).double()
    off = (eye - torch.tensor(centres)[:, None]).abs()
    assert bool((off <= torch.tensor([0.05, 0.05, 0.02]) + 1e-6).all())
    fwd = cams.world_to_camera[:, 2, :3].reshape(2, 6, 12, 3).double()
    el = torch.rad2deg(torch.asin(fwd[..., 2].clamp(-1, 1)))
    lo = (torch.arange(6) * 30.0 - 90.0)[None, :, None]
    assert bool(((el >= lo - 1e-3) & (el <= lo + 30.0 + 1e-3)).all())
    az = torch.rad2deg(torch.atan2(fwd[..., 1], fwd[..., 0]))
    want = torch.arange(-180.0, 180.0, 30.0, dtype=torch.float64)
    wrapped = (az - want + 180.0) % 360.0 - 180.0
    assert float(wrapped.abs().max()) < 0.01
    again = anchor_cameras(centres, image_size=(8, 6), fov_deg=60.0, seed=1)
    other = anchor_cameras(centres, image_size=(8, 6), fov_deg=60.0, seed=2)
    assert torch.equal(again.world_to_camera, cams.world_to_camera)
    assert not torch.equal(other.world_to_camera, cams.world_to_camera)


def test_tsdf_filter_errors_are_one_line() -> None:
    box = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    mesh = Mesh(box.vertices, box.faces)
    with pytest.raises(InputError) as err:
        tsdf_filter(Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64)), np.zeros((1, 3)), image_size=8)
    assert "\n" not in str(err.value) and "no faces" in str(err.value)
    with pytest.raises(InputError) as err:
        tsdf_filter(mesh, np.zeros((2, 2)), image_size=8)
    assert "\n" not in str(err.value)
    with pytest.raises(OutputError) as err:  # the room is 100 m away, beyond depth_trunc 5
        tsdf_filter(mesh, np.array([[100.0, 0.0, 0.0]]), voxel=VOXEL, trunc=3 * VOXEL, image_size=8)
    assert "\n" not in str(err.value) and "no surface" in str(err.value)


def test_canonical_order_is_the_same_for_any_vertex_and_face_order():
    """open3d's parallel extraction permutes its output between processes: the filter's
    canonical order makes the same surface the same arrays (and keeps every face's winding)."""
    import trimesh

    from layerforge.models.dp_recon.background import _canonical_order

    box = trimesh.creation.box((1.0, 2.0, 3.0))
    v, f = np.asarray(box.vertices, np.float32), np.asarray(box.faces, np.int64)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(v))
    inv = np.argsort(perm)
    v2, f2 = v[perm], inv[f][rng.permutation(len(f))]
    f2 = np.roll(f2, 1, axis=1)  # the same triangles, started at another corner
    a, b = _canonical_order(v, f), _canonical_order(v2, f2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    normals = trimesh.Trimesh(a[0], a[1], process=False).face_normals
    centres = a[0][a[1]].mean(1)
    assert (np.einsum("ij,ij->i", normals, centres) > 0).all()  # still wound outwards
