"""Volume rendering: sampling, compositing, K-object composition, SDF densities."""

from __future__ import annotations

import math

import pytest
import torch

from layerforge.renderers.volume import (
    composite_objects,
    midpoints,
    neus_alpha,
    neus_density,
    sample_pdf,
    sample_stratified,
    volsdf_density,
    volume_render,
    weights_from_alpha,
    weights_from_density,
)

D64 = torch.float64


def _slab(t: torch.Tensor, a: float, b: float, sigma: float) -> torch.Tensor:
    return torch.where((t >= a) & (t <= b), torch.full_like(t, sigma), torch.zeros_like(t))


@pytest.mark.parametrize("sigma", [0.5, 3.0])
def test_constant_density_slab_opacity_is_beer_lambert(sigma):
    R = 4
    a, b = 1.0, 1.75
    # intervals exactly covering the slab: exact for piecewise-constant density
    edges = sample_stratified(torch.full((R,), a, dtype=D64), torch.full((R,), b, dtype=D64), 16)
    t, _ = midpoints(edges)
    out = volume_render(_slab(t, a, b, sigma), torch.ones(R, 16, 3, dtype=D64), edges,
                        background=torch.tensor([0.0, 0.0, 1.0], dtype=D64))
    want = 1.0 - math.exp(-sigma * (b - a))
    torch.testing.assert_close(out["alpha"], torch.full((R, 1), want, dtype=D64))
    torch.testing.assert_close(out["rgb"][:, 2], torch.ones(R, dtype=D64))  # white fg + rest blue bg
    torch.testing.assert_close(out["rgb"][:, 0], torch.full((R,), want, dtype=D64))
    # slab inside a longer, jittered range: quadrature converges to the same value
    edges = sample_stratified(torch.zeros(R, dtype=D64), torch.full((R,), 3.0, dtype=D64), 3000,
                              perturb=True, generator=torch.Generator().manual_seed(0))
    t, _ = midpoints(edges)
    acc = volume_render(_slab(t, a, b, sigma), torch.ones(R, 3000, 3, dtype=D64), edges)["alpha"]
    torch.testing.assert_close(acc, torch.full((R, 1), want, dtype=D64), atol=5e-3, rtol=0)


def test_stratified_edges_are_sorted_and_bounded():
    g = torch.Generator().manual_seed(1)
    near, far = torch.tensor([0.5, 1.0]), torch.tensor([2.0, 4.0])
    e = sample_stratified(near, far, 8, perturb=True, generator=g)
    assert e.shape == (2, 9)
    assert torch.all(e[:, 1:] > e[:, :-1])
    torch.testing.assert_close(e[:, 0], near)
    torch.testing.assert_close(e[:, -1], far)
    plain = sample_stratified(near, far, 8)
    assert not torch.allclose(e, plain)
    assert torch.all((e - plain).abs() <= (far - near)[:, None] / 16 + 1e-6)


def test_expected_and_accumulated_depth_of_an_opaque_wall():
    edges = sample_stratified(torch.zeros(1, dtype=D64), torch.full((1,), 4.0, dtype=D64), 400)
    t, _ = midpoints(edges)
    dens = torch.where(t > 2.5, torch.full_like(t, 1e4), torch.zeros_like(t))
    ed = volume_render(dens, torch.zeros(1, 400, 3, dtype=D64), edges)
    d = volume_render(dens, torch.zeros(1, 400, 3, dtype=D64), edges, depth_mode="D")
    assert ed["depth"].item() == pytest.approx(2.505, abs=1e-3)  # first midpoint past the wall
    assert d["depth"].item() == pytest.approx(ed["depth"].item() * ed["alpha"].item())


def test_importance_sampling_concentrates_where_the_weights_are():
    R, S, M = 3, 32, 64
    edges = sample_stratified(torch.zeros(R), torch.full((R,), 4.0), S)
    w = torch.zeros(R, S)
    w[0, 10] = 1.0  # one bin
    w[1, 5], w[1, 20] = 0.25, 0.75  # two bins, 1:3
    new = sample_pdf(edges, w, M, merge=False)  # row 2: empty weights -> ~uniform
    mids, _ = midpoints(new)
    lo, hi = edges[0, 10], edges[0, 11]
    assert ((mids[0] > lo) & (mids[0] < hi)).float().mean() > 0.9
    in5 = ((mids[1] > edges[1, 5]) & (mids[1] < edges[1, 6])).sum().item()
    in20 = ((mids[1] > edges[1, 20]) & (mids[1] < edges[1, 21])).sum().item()
    assert in5 + in20 >= M - 4 and 2.7 <= in20 / in5 <= 3.5  # 1:3, up to the bridging intervals
    spacing = new[2, 1:] - new[2, :-1]
    torch.testing.assert_close(spacing, torch.full_like(spacing, 4.0 / M), atol=1e-3, rtol=0)
    merged = sample_pdf(edges, w, M, perturb=True, generator=torch.Generator().manual_seed(0))
    assert merged.shape == (R, S + M + 2) and torch.all(merged[:, 1:] >= merged[:, :-1])


def test_k_object_compositing_with_an_empty_object_equals_single_render():
    g = torch.Generator().manual_seed(0)
    R, S = 16, 24
    edges = sample_stratified(torch.full((R,), 0.5), torch.full((R,), 3.0), S)
    dens = torch.rand(R, S, generator=g) * 2.0
    col = torch.rand(R, S, 3, generator=g)
    bg = torch.tensor([0.3, 0.6, 0.9])
    single = volume_render(dens, col, edges, background=bg)
    dens_k = torch.stack([dens, torch.zeros(R, S)], -1)
    col_k = torch.stack([col, torch.rand(R, S, 3, generator=g)], 2)
    multi = composite_objects(dens_k, col_k, edges, background=bg, render_each=True)
    for k in ("rgb", "alpha", "depth", "weights"):
        torch.testing.assert_close(multi[k], single[k])
    torch.testing.assert_close(multi["object_opacity"][:, 0:1], single["alpha"])
    assert torch.all(multi["object_opacity"][:, 1] == 0)
    torch.testing.assert_close(multi["object_rgb"][:, 0] + (1 - single["alpha"]) * bg, single["rgb"])


def test_k_object_compositing_mixes_densities_and_splits_opacity():
    R, S = 2, 200
    edges = sample_stratified(torch.zeros(R, dtype=D64), torch.full((R,), 4.0, dtype=D64), S)
    t, _ = midpoints(edges)
    front = _slab(t, 1.0, 1.5, 2.0)
    back = _slab(t, 2.0, 3.0, 5.0)
    red, green = torch.tensor([1.0, 0.0, 0.0], dtype=D64), torch.tensor([0.0, 1.0, 0.0], dtype=D64)
    dens = torch.stack([front, back], -1)
    col = torch.stack([red.expand(R, S, 3), green.expand(R, S, 3)], 2)
    out = composite_objects(dens, col, edges, render_each=True)
    a_front = 1 - math.exp(-2.0 * 0.5)
    a_back = (1 - a_front) * (1 - math.exp(-5.0))
    torch.testing.assert_close(out["object_opacity"][0], torch.tensor([a_front, a_back], dtype=D64))
    torch.testing.assert_close(out["rgb"][0], torch.tensor([a_front, a_back, 0.0], dtype=D64))
    torch.testing.assert_close(out["object_opacity"].sum(-1, keepdim=True), out["alpha"])
    torch.testing.assert_close(out["object_alpha"][0, 1], torch.tensor(1 - math.exp(-5.0), dtype=D64))
    # removing the front object shows the back one unoccluded
    hidden = composite_objects(dens, col, edges, visibility=torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(hidden["rgb"][0], torch.tensor([0.0, 1 - math.exp(-5.0), 0.0], dtype=D64))
    # overlapping objects: colour is density weighted
    both = composite_objects(torch.stack([front, 3 * front], -1), col, edges)
    torch.testing.assert_close(both["rgb"][0, 1], 3 * both["rgb"][0, 0])


def test_volsdf_density_at_known_sdf_values():
    beta = 0.1
    sdf = torch.tensor([-10.0, -0.1, 0.0, 0.1, 10.0], dtype=D64)
    got = volsdf_density(sdf, beta)
    e = math.exp(-1.0)
    want = torch.tensor([1 / beta, (1 - 0.5 * e) / beta, 0.5 / beta, 0.5 * e / beta, 0.0], dtype=D64)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(volsdf_density(sdf, beta, alpha=2.0), want * beta * 2.0)
    # smooth: gradient continuous across the surface
    x = torch.tensor([-1e-6, 1e-6], dtype=D64, requires_grad=True)
    volsdf_density(x, beta).sum().backward()
    assert x.grad[0].item() == pytest.approx(x.grad[1].item(), rel=1e-4)


def test_neus_density_and_alpha():
    s = 64.0
    sdf = torch.tensor([0.0, 0.05, -0.05], dtype=D64)
    torch.testing.assert_close(neus_density(sdf, s)[0], torch.tensor(s / 4, dtype=D64))
    sig = 1 / (1 + math.exp(-s * 0.05))
    assert neus_density(sdf, s)[1].item() == pytest.approx(s * sig * (1 - sig))
    assert neus_density(sdf, s)[2].item() == pytest.approx(neus_density(sdf, s)[1].item())
    # a ray hitting a plane head-on at t = 1.3: weights sum to ~1 and peak at the surface
    edges = sample_stratified(torch.zeros(1, dtype=D64), torch.full((1,), 3.0, dtype=D64), 300)
    f = 1.3 - edges  # sdf along the ray
    alpha = neus_alpha(f[:, :-1], f[:, 1:], s)
    w, _ = weights_from_alpha(alpha)
    t, _ = midpoints(edges)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-3)
    assert ((w * t).sum() / w.sum()).item() == pytest.approx(1.3, abs=1e-2)


def test_weights_match_nerfstudio():
    ns = pytest.importorskip("nerfstudio.cameras.rays")
    g = torch.Generator().manual_seed(0)
    R, S = 5, 12
    edges = sample_stratified(torch.full((R,), 0.2), torch.full((R,), 2.0), S, perturb=True, generator=g)
    dens = torch.rand(R, S, generator=g) * 3
    fr = ns.Frustums(
        origins=torch.zeros(R, S, 3), directions=torch.tensor([0.0, 0.0, 1.0]).expand(R, S, 3),
        starts=edges[:, :-1, None], ends=edges[:, 1:, None], pixel_area=torch.ones(R, S, 1),
    )
    samples = ns.RaySamples(frustums=fr, deltas=(edges[:, 1:] - edges[:, :-1])[..., None])
    ref = samples.get_weights(dens[..., None])[..., 0]
    w, _ = weights_from_density(dens, edges[:, 1:] - edges[:, :-1])
    torch.testing.assert_close(w, ref, atol=1e-6, rtol=1e-5)
