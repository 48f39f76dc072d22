"""DP-Recon visibility grid, compositing and visibility-guided SDS weights, against hand values."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from layerforge.models.dp_recon import (
    SMOOTH_KERNEL_SIZE,
    SMOOTH_SIGMA,
    TEXTURE_VIS_THRESHOLD,
    VISGRID_HALF_EXTENT,
    VISGRID_LR,
    VISGRID_RESOLUTION,
    VisibilityGrid,
    gaussian_kernel_3d,
    texture_sds_mask,
)
from layerforge.models.guidance import visibility_weight_map
from layerforge.models.guidance.sds import SDS_NONE_VIS_REGION_MAX, SDS_VIS_REGION_MAX


def _grid5() -> VisibilityGrid:
    """R = 5 on [-1, 1]^3: vertices at -1, -0.5, 0, 0.5, 1 on every axis."""
    return VisibilityGrid(resolution=5, lo=-1.0, hi=1.0)


def _x_ray(xs: list[float], y: float = 0.0, z: float = 0.0) -> torch.Tensor:
    """[1, S, 3] samples at the given x, fixed y and z."""
    return torch.tensor([[[x, y, z] for x in xs]], dtype=torch.float32)


# -- paper constants -------------------------------------------------------------------------


def test_paper_constants():
    assert VISGRID_RESOLUTION == 256
    assert VISGRID_HALF_EXTENT == 1.1
    assert VISGRID_LR == pytest.approx(1e-2)
    assert (SMOOTH_KERNEL_SIZE, SMOOTH_SIGMA) == (5, 0.5)
    assert (SDS_VIS_REGION_MAX, SDS_NONE_VIS_REGION_MAX, TEXTURE_VIS_THRESHOLD) == (0.1, 20.0, 0.3)


# -- per-pixel SDS weight and texture mask ---------------------------------------------------


def test_sds_weight_hand_values():
    v = torch.tensor([0.0, 0.25, 0.49, 0.5, 0.75, 1.0])
    expected = torch.tensor([20.0, 10.5, 1.38, 0.1, 0.05, 0.0])
    torch.testing.assert_close(visibility_weight_map(v), expected, atol=1e-5, rtol=0)
    v64 = torch.tensor([0.0, 0.25, 0.49, 0.5, 0.75, 1.0], dtype=torch.float64)
    out64 = visibility_weight_map(v64)
    assert out64.dtype == torch.float64
    expected64 = torch.tensor([20.0, 10.5, 1.38, 0.1, 0.05, 0.0], dtype=torch.float64)
    torch.testing.assert_close(out64, expected64, atol=1e-12, rtol=0)


def test_sds_weight_discontinuous_at_half_and_linear_within_branches():
    below = visibility_weight_map(torch.tensor(0.5 - 1e-7, dtype=torch.float64))
    at = visibility_weight_map(torch.tensor(0.5, dtype=torch.float64))
    above = visibility_weight_map(torch.tensor(0.5 + 1e-7, dtype=torch.float64))
    assert float(below) == pytest.approx(1.0, abs=1e-5)  # 20 - 38 * 0.5 = 1 from below
    assert float(at) == pytest.approx(0.1, abs=1e-12)  # the visible branch includes 0.5
    assert float(above) == pytest.approx(0.1, abs=1e-6)  # continuous from above
    # slopes: -38 on [0, 0.5), -0.2 on [0.5, 1]
    v = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    w = visibility_weight_map(v)
    assert float((w[1] - w[0]) / 0.2) == pytest.approx(-38.0)
    assert float((w[3] - w[2]) / 0.3) == pytest.approx(-0.2)


def test_texture_mask_at_threshold():
    v = torch.tensor([0.0, 0.29, 0.3, 0.31, 1.0])
    torch.testing.assert_close(texture_sds_mask(v), torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(texture_sds_mask(v, threshold=0.5), torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]))


# -- update: the exact scatter-max variant ---------------------------------------------------


def test_update_max_writes_hand_profile_into_vertices():
    grid = _grid5()
    xs = [-1.0, -0.5, 0.0, 0.5, 1.0]
    t = torch.tensor([[1.0, 0.9, 0.6, 0.2, 0.05]])
    grid.update_max(_x_ray(xs), t)
    expected = torch.zeros(5, 5, 5)
    expected[:, 2, 2] = t[0]
    torch.testing.assert_close(grid.values.data, expected, atol=0, rtol=0)

    # a second ray through the same voxels with lower T never lowers them
    grid.update_max(_x_ray(xs), torch.tensor([[0.5, 0.5, 0.5, 0.1, 0.0]]))
    torch.testing.assert_close(grid.values.data, expected, atol=0, rtol=0)
    # and a higher T raises exactly where it is higher
    grid.update_max(_x_ray(xs), torch.tensor([[0.5, 0.5, 0.5, 0.7, 0.0]]))
    expected[3, 2, 2] = 0.7
    torch.testing.assert_close(grid.values.data, expected, atol=0, rtol=0)


def test_update_max_nearest_vertex_axis_order_and_outside():
    grid = _grid5()
    # x = -0.3 -> index 1.4 -> vertex 1; x = 0.3 -> 2.6 -> vertex 3; two samples into vertex 2 keep the max
    grid.update_max(_x_ray([-0.3, 0.3, 0.1, -0.1]), torch.tensor([[0.4, 0.8, 0.7, 0.3]]))
    assert float(grid.values.data[1, 2, 2]) == pytest.approx(0.4)
    assert float(grid.values.data[3, 2, 2]) == pytest.approx(0.8)
    assert float(grid.values.data[2, 2, 2]) == pytest.approx(0.7)
    assert int((grid.values.data != 0).sum()) == 3
    # a ray along y at x = 0.5, z = -0.5 writes values[3, :, 1]; a sample outside the box is dropped
    pts = torch.tensor([[[0.5, y, -0.5] for y in (-1.0, -0.5, 0.0, 0.5, 1.0, 1.6)]])
    grid.update_max(pts, torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 1.0]]))
    torch.testing.assert_close(grid.values.data[3, :, 1], torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]))
    assert int((grid.values.data != 0).sum()) == 8


# -- update: the authors' learned hinge ------------------------------------------------------


def test_hinge_loss_and_gradient_hand_values():
    grid = _grid5()
    pts = _x_ray([-1.0, -0.5, 0.0, 0.5])
    t = torch.tensor([[1.0, 0.8, 0.3, 0.05]], requires_grad=True)
    with torch.no_grad():
        grid.values[1, 2, 2] = 0.9  # already above its T = 0.8: contributes 0
    loss = grid.loss(pts, t)
    assert float(loss.detach()) == pytest.approx((1.0 + 0.0 + 0.3 + 0.05) / 4)
    loss.backward()
    assert t.grad is None  # T is a target, detached
    expected = torch.zeros(5, 5, 5)
    expected[0, 2, 2] = expected[2, 2, 2] = expected[3, 2, 2] = -0.25
    torch.testing.assert_close(grid.values.grad, expected)


def test_fit_covers_max_transmittance_and_lower_rays_never_lower_it():
    torch.manual_seed(0)
    grid = _grid5()
    opt = grid.make_optimizer()
    pts = _x_ray([-1.0, -0.5, 0.0, 0.5, 1.0])
    t = torch.tensor([[1.0, 0.8, 0.5, 0.3, 0.1]])
    for _ in range(150):
        grid.fit_step(opt, pts, t)
    assert float(grid.loss(pts, t).detach()) == 0.0
    assert bool((grid.query(pts) >= t).all())
    # untouched vertices stay at their fill value
    mask = torch.ones(5, 5, 5, dtype=torch.bool)
    mask[:, 2, 2] = False
    assert bool((grid.values.data[mask] == 0).all())

    before = grid.values.data.clone()
    lower = t * 0.5
    for _ in range(10):
        assert grid.fit_step(opt, pts, lower) == 0.0
        assert bool((grid.values.data >= before).all())

    # off-vertex samples: trilinear gradients are never positive, so no vertex ever drops
    rand_pts = torch.rand(1, 64, 3) * 2 - 1
    rand_t = torch.rand(1, 64)
    prev = grid.values.data.clone()
    for _ in range(5):
        grid.fit_step(opt, rand_pts, rand_t)
        assert bool((grid.values.data >= prev).all())
        prev = grid.values.data.clone()


# -- smoothing -------------------------------------------------------------------------------


def _hand_gaussian_1d() -> torch.Tensor:
    w = torch.tensor([math.exp(-x * x / (2 * 0.5**2)) for x in range(-2, 3)], dtype=torch.float64)
    return w / w.sum()


def test_gaussian_kernel_hand_weights():
    w1 = _hand_gaussian_1d()
    # exp(0)=1, exp(-2)=0.135335, exp(-8)=0.000335463; sum 1.271341
    torch.testing.assert_close(
        w1, torch.tensor([0.000263865, 0.106450772, 0.786570726, 0.106450772, 0.000263865], dtype=torch.float64),
        atol=1e-9, rtol=0,
    )
    outer = torch.einsum("i,j,k->ijk", w1, w1, w1).float()
    kernel = gaussian_kernel_3d()
    assert kernel.shape == (5, 5, 5)
    torch.testing.assert_close(kernel, outer, atol=1e-7, rtol=0)
    assert float(kernel[2, 2, 2]) == pytest.approx(0.4866462, abs=1e-6)


def test_smooth_spreads_hot_voxel_into_normalised_gaussian():
    grid = VisibilityGrid(resolution=9, lo=-1.0, hi=1.0)
    with torch.no_grad():
        grid.values[4, 4, 4] = 1.0
    grid.smooth()
    w1 = _hand_gaussian_1d()
    expected = torch.zeros(9, 9, 9, dtype=torch.float64)
    expected[2:7, 2:7, 2:7] = torch.einsum("i,j,k->ijk", w1, w1, w1)
    torch.testing.assert_close(grid.values.data, expected.float(), atol=1e-7, rtol=0)
    assert float(grid.values.data.double().sum()) == pytest.approx(1.0, abs=1e-6)  # mass kept away from borders


def test_smooth_zero_padding_leaks_mass_at_the_border():
    grid = VisibilityGrid(resolution=9, lo=-1.0, hi=1.0)
    with torch.no_grad():
        grid.values[0, 4, 4] = 1.0
    grid.smooth()
    w1 = _hand_gaussian_1d()
    kept = float(w1[2] + w1[3] + w1[4])  # offsets -1, -2 along x fall outside: 0.893285
    assert float(grid.values.data.double().sum()) == pytest.approx(kept, abs=1e-6)
    assert kept == pytest.approx(0.8932854, abs=1e-6)


# -- query -----------------------------------------------------------------------------------


def _linear_grid(lo, hi, r: int = 5) -> tuple[VisibilityGrid, Callable[[torch.Tensor], torch.Tensor]]:
    grid = VisibilityGrid(resolution=r, lo=lo, hi=hi)

    def f(p: torch.Tensor) -> torch.Tensor:
        return 1.0 + 2.0 * p[..., 0] - 3.0 * p[..., 1] + 0.5 * p[..., 2]

    lo_t = torch.as_tensor(lo, dtype=torch.float32).expand(3)
    hi_t = torch.as_tensor(hi, dtype=torch.float32).expand(3)
    axes = [lo_t[a] + torch.arange(r) * (hi_t[a] - lo_t[a]) / (r - 1) for a in range(3)]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    with torch.no_grad():
        grid.values.copy_(f(torch.stack([x, y, z], dim=-1)))
    return grid, f


def test_query_exact_at_vertices_and_halfway_for_linear_field():
    grid, f = _linear_grid(-1.0, 1.0)
    vertices = torch.tensor([[-1.0, -1.0, -1.0], [0.5, -0.5, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    # hand values of 1 + 2x - 3y + 0.5z
    torch.testing.assert_close(grid.query(vertices), torch.tensor([1.5, 4.0, 0.5, 1.0]), atol=1e-5, rtol=0)
    halfway = torch.tensor([[-0.75, 0.25, 0.75], [0.25, -0.75, -0.25], [0.75, 0.75, 0.75]])
    torch.testing.assert_close(grid.query(halfway), torch.tensor([-0.875, 3.625, 0.625]), atol=1e-5, rtol=0)
    inner = torch.tensor([[0.1, -0.37, 0.62]])
    torch.testing.assert_close(grid.query(inner), f(inner), atol=1e-5, rtol=0)
    # leading shape kept
    assert grid.query(halfway.reshape(3, 1, 3)).shape == (3, 1)


def test_query_anisotropic_box_and_zero_outside():
    grid, f = _linear_grid((0.0, -1.0, -2.0), (1.0, 1.0, 2.0))
    pts = torch.tensor([[0.125, 0.25, -1.5], [1.0, -1.0, 2.0], [0.5, 0.0, 0.0]])
    torch.testing.assert_close(grid.query(pts), f(pts), atol=1e-5, rtol=0)
    far = torch.tensor([[5.0, 0.0, 0.0], [0.5, 0.0, -9.0]])
    torch.testing.assert_close(grid.query(far), torch.zeros(2))


# -- render ----------------------------------------------------------------------------------


def test_render_is_unnormalised_weighted_sum_and_clamped():
    grid = _grid5()
    with torch.no_grad():
        grid.values.copy_(((grid.vertex_positions()[:, 0] + 1) / 2)[:, None, None].expand(5, 5, 5))  # g = (x + 1) / 2
    pts = torch.cat([_x_ray([-1.0, 0.0, 1.0]), _x_ray([0.5, 0.5, -0.5], y=0.3, z=-0.8)])
    weights = torch.tensor([[0.2, 0.5, 0.1], [0.3, 0.3, 0.2]], requires_grad=True)
    v = grid.render(weights, pts)
    # 0.2*0 + 0.5*0.5 + 0.1*1 = 0.35 (normalised would be 0.4375); 0.3*0.75 + 0.3*0.75 + 0.2*0.25 = 0.5
    torch.testing.assert_close(v, torch.tensor([0.35, 0.5]), atol=1e-6, rtol=0)
    v.sum().backward()
    torch.testing.assert_close(weights.grad, torch.tensor([[0.0, 0.5, 1.0], [0.75, 0.75, 0.25]]), atol=1e-6, rtol=0)
    assert grid.values.grad is None  # the grid is read without gradient

    hot = _x_ray([1.0, 1.0])
    w = torch.tensor([[0.9, 0.9]])
    assert float(grid.render(w, hot)) == pytest.approx(1.0)  # 1.8 clamped to 1
    assert float(grid.render(w, hot, clamp=False)) == pytest.approx(1.8)
    with pytest.raises(ValueError):
        grid.render(w, _x_ray([1.0, 1.0, 1.0]))
