"""DP-Recon stage-1 reconstruction losses against hand and analytic values (exact sphere / plane SDFs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from layerforge.models.dp_recon import (
    OBJECT_VIOLATION_START,
    PAPER_WEIGHTS,
    SCANNETPP_WEIGHTS,
    BackgroundRegLoss,
    DepthLoss,
    DPEikonalLoss,
    NormalCosineLoss,
    NormalL1Loss,
    ObjectViolationLoss,
    RGBL1Loss,
    SemanticLoss,
    SmoothnessLoss,
    foreground_mask,
    multiscale_gradient_error,
    object_violation,
    paper_terms,
    scale_shift_invariant_depth,
    smoothness_residuals,
)
from layerforge.models.fields.base import Field, FieldOutput
from layerforge.models.fields.compose import ComposedSDFField
from layerforge.models.fields.losses import RGBLoss, rendered
from layerforge.models.fields.mlp_fields import LaplaceDensity, SDFField, SDFFieldConfig
from layerforge.models.fields.render import SamplerConfig
from layerforge.models.schedules import schedule_value

SAMPLER = SamplerConfig(num_samples=48)


class SphereSDF(Field):
    """Exact sphere SDF ``|x - c| - r`` (metres) with a constant colour."""

    kind = "sdf"

    def __init__(self, centre, radius: float, aabb=((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))) -> None:
        super().__init__(aabb)
        self.register_buffer("centre", torch.tensor(centre, dtype=torch.float32))
        self.radius = radius
        self.laplace = LaplaceDensity()

    def sdf_and_feature(self, points: Tensor) -> tuple[Tensor, Tensor]:
        return (points - self.centre).norm(dim=-1, keepdim=True) - self.radius, points.new_zeros(*points.shape[:-1], 1)

    def forward(self, points: Tensor, directions: Tensor | None = None) -> FieldOutput:
        sdf, _ = self.sdf_and_feature(points)
        return FieldOutput(density=self.laplace(sdf), rgb=torch.full_like(points, 0.5), sdf=sdf)


class PlaneSDF(SphereSDF):
    """Exact plane SDF ``n . x - offset`` (n unit)."""

    def __init__(self, normal, offset: float, aabb=((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))) -> None:
        super().__init__((0.0, 0.0, 0.0), 0.0, aabb)
        n = torch.tensor(normal, dtype=torch.float32)
        self.register_buffer("normal", n / n.norm())
        self.offset = offset

    def sdf_and_feature(self, points: Tensor) -> tuple[Tensor, Tensor]:
        return (points * self.normal).sum(-1, keepdim=True) - self.offset, points.new_zeros(*points.shape[:-1], 1)


def _batch(**kw) -> dict:
    return {"seed": 7, **kw}


# ------------------------------------------------------------------ weights and schedules


def test_weights_default_to_the_papers() -> None:
    terms = {t.name: t for t in paper_terms(SAMPLER, points=16)}
    expected = {"rgb": 1.0, "eikonal": 0.1, "smooth": 0.005, "depth": 0.1, "normal_l1": 0.05, "normal_cos": 0.05,
                "semantic": 1.0, "bg_reg": 0.1}
    for name, w in expected.items():
        assert terms[name].weight == w, name
    assert set(terms) == set(expected) | {"object_violation"}
    assert SCANNETPP_WEIGHTS["eikonal"] == 0.05 and SCANNETPP_WEIGHTS["bg_reg"] == 0.01
    assert paper_terms(SAMPLER, 16, SCANNETPP_WEIGHTS)[1].weight == 0.05
    assert OBJECT_VIOLATION_START == 10_000
    assert BackgroundRegLoss(SAMPLER).every == 10


def test_violation_weight_is_zero_before_10k_and_half_from_it() -> None:
    w = ObjectViolationLoss(points=8).weight
    assert w == PAPER_WEIGHTS["object_violation"]
    assert schedule_value(w, 0) == 0.0 and schedule_value(w, 9_999) == 0.0
    assert schedule_value(w, 10_000) == 0.5 and schedule_value(w, 75_000) == 0.5


# ------------------------------------------------------------------ depth


def test_ssi_depth_is_zero_for_affine_predictions() -> None:
    g = torch.rand(64, dtype=torch.float64) * 3.0  # float64: exact zero up to rounding
    mask = (torch.arange(64) % 5 != 0).double()
    for a, b in ((2.0, -0.3), (0.25, 4.0), (-1.0, 0.5)):
        assert float(scale_shift_invariant_depth(a * g + b, g, mask)) == pytest.approx(0.0, abs=1e-12)


def test_ssi_depth_hand_value() -> None:
    # p = 0..3, target 0, 1, 1, 3: least squares s = 0.9, t = -0.1, residuals -0.1, -0.2, 0.7, -0.4.
    p, g, m = torch.tensor([0.0, 1, 2, 3]), torch.tensor([0.0, 1, 1, 3]), torch.ones(4)
    # data 0.70 / (2 * 4); rows of 2: |dx| 0.1 + 1.1, |dy| 0.8 + 0.2 -> 2.2 / 4.
    assert float(scale_shift_invariant_depth(p, g, m, row_width=2)) == pytest.approx(0.0875 + 0.5 * 0.55, abs=1e-6)
    assert float(scale_shift_invariant_depth(p, g, m, alpha=0.0, row_width=2)) == pytest.approx(0.0875, abs=1e-6)
    assert float(scale_shift_invariant_depth(p, g, torch.zeros(4), row_width=2)) == 0.0


def test_depth_term_uses_camera_z_and_the_4g_plus_half_target() -> None:
    # 32 rays in one row, 4 of them valid, at different angles to the view's +z (identity w2c): z = t cos.
    n = 32
    z = torch.zeros(n)
    z[:4] = torch.tensor([0.0, 1, 2, 3])
    dirs = torch.tensor([0.0, 0.0, 1.0]).repeat(n, 1)
    dirs[:4] = torch.tensor([[0.6, 0.0, 0.8], [0.8, 0.0, 0.6], [0.0, 0.0, 1.0], [0.96, 0.0, 0.28]])
    target = torch.zeros(n)
    target[:4] = torch.tensor([0.0, 1, 1, 3])
    fg = torch.zeros(n, dtype=torch.bool)
    fg[:4] = True
    batch = _batch(origins=torch.zeros(n, 3), directions=dirs, w2c_rotation=torch.eye(3).expand(n, 3, 3),
                   depth=(target - 0.5) / 4.0)
    info = {"log": {}, "render": {"distance": (z / dirs[:, 2])[:, None], "normals": torch.zeros(n, 3)}, "dp_recon_fg": fg}
    term = DepthLoss(SAMPLER)
    # data 0.70 / 8; one row: |dx| 0.1 + 0.9 + 1.1 = 2.1 over the 4 valid -> 0.525.
    assert float(term(None, batch, 0, info)) == pytest.approx(0.0875 + 0.5 * 0.525, abs=1e-6)
    assert info["log"]["depth"] == pytest.approx(0.35, abs=1e-6)


def test_foreground_mask_needs_a_sign_change_and_the_prior_mask() -> None:
    field = ComposedSDFField([SphereSDF((0.0, 0.0, 0.0), 0.5)])
    origins = torch.tensor([[0.0, 0.0, -1.4], [0.9, 0.0, -1.4], [0.1, 0.0, -1.4]])
    dirs = torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3)
    info: dict = {"log": {}}
    fg = foreground_mask(field, _batch(origins=origins, directions=dirs, mask=torch.tensor([1.0, 1.0, 0.0])), info, SAMPLER)
    assert fg.tolist() == [True, False, False]


# ------------------------------------------------------------------ normals


def test_normal_l1_and_cosine_hand_values() -> None:
    # world-to-camera: camera x = world y, camera y = -world x.
    rot = torch.tensor([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]])
    pred_world = torch.tensor([[0.0, 1, 0], [0.0, 0, 1], [1.0, 0, 0], [0.0, 1, 0]])  # cam: (1,0,0) (0,0,1) (0,-1,0) (1,0,0)
    gt_cam = torch.tensor([[1.0, 0, 0], [0.0, 0, 2], [0.0, 1, 0], [1.0, 0, 0]])
    fg = torch.tensor([True, True, True, False])  # the last ray is masked: prediction 0
    batch = _batch(w2c_rotation=rot.expand(4, 3, 3), normal=gt_cam)
    info = {"log": {}, "render": {"normals": pred_world}, "dp_recon_fg": fg}
    # per ray L1: 0, 0, 2, 1 (masked: |0 - gt|_1); 1 - cos: 0, 0, 2, 1 (masked). (World frame: L1 5/4.)
    assert float(NormalL1Loss(SAMPLER)(None, batch, 0, info)) == pytest.approx(3.0 / 4.0, abs=1e-6)
    assert float(NormalCosineLoss(SAMPLER)(None, batch, 0, info)) == pytest.approx(3.0 / 4.0, abs=1e-6)
    assert info["log"]["normal_l1"] == pytest.approx(0.75, abs=1e-6)


# ------------------------------------------------------------------ smoothness


def test_smoothness_is_zero_for_a_plane() -> None:
    field = ComposedSDFField([PlaneSDF((0.3, -0.2, 0.9), 0.1)])
    info: dict = {"log": {}}
    assert float(SmoothnessLoss(points=512)(field, _batch(), 0, info)) == pytest.approx(0.0, abs=1e-6)


def test_smoothness_sphere_hand_value() -> None:
    field = ComposedSDFField([SphereSDF((0.0, 0.0, 0.0), 0.4)])
    x, x2 = torch.tensor([[0.5, 0.0, 0.0]]), torch.tensor([[0.5, 0.005, 0.0]])
    theta = math.atan(0.005 / 0.5)
    assert float(smoothness_residuals(field, x, x2)[0].detach()) == pytest.approx(2 * math.sin(theta / 2) / (1 + 1e-5), rel=1e-4)


def test_smoothness_term_on_a_sphere_matches_the_analytic_expectation() -> None:
    box = ((0.5, -0.5, -0.5), (1.5, 0.5, 0.5))
    field = ComposedSDFField([SphereSDF((0.0, 0.0, 0.0), 0.4, aabb=box)])
    value = float(SmoothnessLoss(points=4096)(field, _batch(), 0, {"log": {}}).detach())
    # E |x/|x| - x'/|x'|| with x uniform in the box, x' = x + U(-0.005, 0.005)^3 (analytic normals, numpy).
    rng = np.random.default_rng(0)
    xs = rng.uniform(box[0], box[1], size=(200_000, 3))
    x2 = xs + rng.uniform(-0.005, 0.005, size=xs.shape)
    expect = np.linalg.norm(xs / np.linalg.norm(xs, axis=1, keepdims=True) - x2 / np.linalg.norm(x2, axis=1, keepdims=True),
                            axis=1).mean()
    assert value == pytest.approx(expect, rel=0.05)


# ------------------------------------------------------------------ object violation


def test_object_violation_hand_values() -> None:
    # row 1: inside 0 by 0.1, object 1 only 0.05 outside -> 0.05; row 2: inside 1 by 0.2, object 0 0.3 out -> 0.
    assert float(object_violation(torch.tensor([[-0.1, 0.05], [0.3, -0.2]]))) == pytest.approx(0.025, abs=1e-7)
    assert float(object_violation(torch.tensor([[0.2, 0.5, 0.1]]))) == 0.0  # outside everything


def test_object_violation_spheres() -> None:
    overlap = ComposedSDFField([SphereSDF((-0.3, 0.0, 0.0), 0.5), SphereSDF((0.3, 0.0, 0.0), 0.5)])
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0]])
    # origin: both -0.2 -> relu(0.2 + 0.2); (0.3, 0, 0): d = (0.1, -0.5) -> relu(-0.1 + 0.5).
    assert float(object_violation(overlap(pts).object_sdf)) == pytest.approx(0.4, abs=1e-6)
    assert float(ObjectViolationLoss(points=2048)(overlap, _batch(), OBJECT_VIOLATION_START, {"log": {}})) > 1e-3
    disjoint = ComposedSDFField([SphereSDF((-0.6, 0.0, 0.0), 0.5), SphereSDF((0.6, 0.0, 0.0), 0.5)])
    assert float(ObjectViolationLoss(points=2048)(disjoint, _batch(), OBJECT_VIOLATION_START, {"log": {}})) == 0.0


# ------------------------------------------------------------------ semantic and rgb


def test_semantic_is_the_object_opacity_bce() -> None:
    o = torch.tensor([[0.9, 0.1, 1.0], [0.2, 0.7, 0.0]], dtype=torch.float64)
    batch = _batch(segs=torch.tensor([0, 1]))
    info = {"log": {}, "render": {"object_alpha": o, "normals": torch.zeros(2, 3)}}
    # o = 1 (target 0) clamps to 1 - 1e-4 -> -log 1e-4; o = 0 (target 0) clamps to 1e-4 -> -log(1 - 1e-4).
    hand = -(math.log(0.9) + math.log(0.9) + math.log(1e-4) + math.log(0.8) + math.log(0.7) + math.log(1 - 1e-4)) / 6
    assert float(SemanticLoss(SAMPLER)(None, batch, 0, info)) == pytest.approx(hand, rel=1e-9)


def test_rgb_is_l1() -> None:
    info = {"log": {}, "render": {"rgb": torch.tensor([[0.5, 0.5, 0.5], [0.0, 1.0, 0.2]]), "normals": torch.zeros(2, 3)}}
    batch = _batch(rgb=torch.tensor([[0.25, 0.5, 1.0], [0.0, 0.0, 0.2]]))
    assert float(RGBL1Loss(SAMPLER)(None, batch, 0, info)) == pytest.approx((0.25 + 0.5 + 1.0) / 6, abs=1e-7)


# ------------------------------------------------------------------ background regularisation


def test_multiscale_gradient_error_ramp() -> None:
    x = torch.arange(4.0).expand(4, 4)[None]  # x_ij = j
    ones = torch.ones(1, 4, 4)
    # scale 1: 12 unit steps / 16; scale 2 (2x2 of cols 0, 2): 2 steps of 2 / 4; scales 4 and 8: 1x1, nothing.
    assert float(multiscale_gradient_error(x, ones, 2)) == pytest.approx(12 / 16 + 4 / 4)
    assert float(multiscale_gradient_error(x, ones, 4)) == pytest.approx(1.75)
    assert float(multiscale_gradient_error(x, torch.zeros(1, 4, 4), 4)) == 0.0


def _patch(size: int = 8) -> tuple[Tensor, Tensor]:
    u = torch.linspace(-0.2, 0.2, size)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    d = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(-1, 3)
    return torch.zeros_like(d) + torch.tensor([0.0, 0.0, -1.4]), d / d.norm(dim=-1, keepdim=True)


def test_background_reg_runs_every_10_steps_and_sees_a_tilt() -> None:
    o, d = _patch()
    batch = _batch(bg_origins=o, bg_directions=d, bg_w2c_rotation=torch.eye(3))
    sampler = SamplerConfig(num_samples=128)
    flat = ComposedSDFField([PlaneSDF((0.0, 0.0, -1.0), -0.5), SphereSDF((0.0, 0.0, 0.0), 0.2)], beta_init=0.02)
    tilt = ComposedSDFField([PlaneSDF((0.0, 0.5, -1.0), -0.5), SphereSDF((0.0, 0.0, 0.0), 0.2)], beta_init=0.02)
    term = BackgroundRegLoss(sampler)
    info: dict = {"log": {}}
    assert float(term(flat, batch, 3, info)) == 0.0 and "bg_reg" not in info["log"]
    v_flat, v_tilt = float(term(flat, batch, 10, info).detach()), float(term(tilt, batch, 10, {"log": {}}).detach())
    assert info["log"]["bg_reg"] == pytest.approx(v_flat)
    assert v_tilt > 0.1 and v_flat < 0.05 * v_tilt


# ------------------------------------------------------------------ all terms on a learnable field


def test_paper_terms_run_and_backpropagate_on_a_tiny_sdf_field() -> None:
    torch.manual_seed(0)
    cfg = SDFFieldConfig(hidden=(16,), geo_features=4, color_hidden=(16,), view_dependent=False, sphere_radius=0.3)
    box = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    field = ComposedSDFField([SDFField(box, SDFFieldConfig(**{**cfg.__dict__, "sphere_radius": -0.9})), SDFField(box, cfg)])
    n = 32
    origins = torch.tensor([0.0, 0.0, -0.95]).expand(n, 3).clone()
    dirs = torch.nn.functional.normalize(torch.cat([torch.rand(n, 2) * 0.6 - 0.3, torch.ones(n, 1)], -1), dim=-1)
    bo, bd = _patch(4)
    batch = _batch(origins=origins, directions=dirs, rgb=torch.rand(n, 3), w2c_rotation=torch.eye(3).expand(n, 3, 3),
                   depth=torch.rand(n), normal=torch.randn(n, 3), segs=torch.randint(0, 2, (n,)),
                   bg_origins=bo + torch.tensor([0.0, 0.0, 0.5]), bg_directions=bd, bg_w2c_rotation=torch.eye(3))
    info: dict = {"log": {}}
    sampler = SamplerConfig(num_samples=16)
    terms = paper_terms(sampler, points=64) + [RGBLoss(sampler)]
    total = sum(schedule_value(t.weight, 10_000) * t(field, batch, 10_000, info) for t in terms)
    assert torch.isfinite(total)
    assert rendered(field, batch, info, sampler) is info["render"] and "normals" in info["render"]
    total.backward()
    grads = [p.grad for p in field.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    for name in ("rgb", "eikonal", "smooth", "depth", "normal_l1", "normal_cos", "semantic", "object_violation", "bg_reg"):
        assert math.isfinite(info["log"][name]), name
    assert isinstance(terms[1], DPEikonalLoss)
    # smoothness / violation points: 64 uniform + one near-surface sample per rendered ray (network.py)
    assert info["dp_recon_points"][0].shape == (64 + n, 3)
