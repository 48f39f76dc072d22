"""models/fields: encodings (gradients, hashing), composition on analytic fields, render_field."""

from __future__ import annotations

import math
import time

import pytest
import torch

from layerforge.models.fields import (
    DP_RECON_HASHGRID,
    ComposedDensityField,
    ComposedSDFField,
    DenseGrid,
    DensityField,
    DensityFieldConfig,
    EncodingConfig,
    Field,
    FieldOutput,
    HashGrid,
    HashGridConfig,
    PositionalEncoding,
    SamplerConfig,
    SDFField,
    SDFFieldConfig,
    render_field,
    render_rays,
)
from layerforge.models.fields.config import load_field_spec, load_field_yaml, packaged_field_config
from layerforge.models.fields.encodings import cell_coordinates, trilinear_corners
from layerforge.models.fields.hashgrid import HASH_PRIMES
from layerforge.models.fields.mlp_fields import VOLSDF_BETA_INIT
from layerforge.renderers.cameras import Camera, generate_rays, intrinsics_from_fov, look_at, orbit_cameras
from layerforge.renderers.volume import composite_objects, volsdf_density

BOX = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))


# --- analytic fields ---------------------------------------------------------------------
class SphereSDF(Field):
    """Exact sphere SDF |x - c| - r with a constant colour (VolSDF density, fixed beta)."""

    kind = "sdf"

    def __init__(self, centre, radius, colour, beta=0.01, box=BOX):
        super().__init__(box)
        self.register_buffer("c", torch.tensor(centre))
        self.r = radius
        self.register_buffer("col", torch.tensor(colour))
        self.beta = beta

    def forward(self, points, directions=None):
        sdf = (points - self.c).norm(dim=-1, keepdim=True) - self.r
        return FieldOutput(density=volsdf_density(sdf, self.beta), rgb=self.col.expand(*points.shape[:-1], 3), sdf=sdf)


class SlabDensity(Field):
    """Constant density ``sigma`` where lo <= x <= hi (world x), constant colour elsewhere 0."""

    kind = "density"

    def __init__(self, lo, hi, sigma, colour, box=BOX):
        super().__init__(box)
        self.lo, self.hi, self.sigma = lo, hi, sigma
        self.register_buffer("col", torch.tensor(colour))

    def forward(self, points, directions=None):
        x = points[..., :1]
        d = torch.where((x >= self.lo) & (x <= self.hi), torch.full_like(x, self.sigma), torch.zeros_like(x))
        return FieldOutput(density=d, rgb=self.col.expand(*points.shape[:-1], 3))


def _small_density_field(encoding: EncodingConfig, seed: int = 0) -> DensityField:
    torch.manual_seed(seed)
    cfg = DensityFieldConfig(encoding=encoding, hidden=(16,), geo_features=7, color_hidden=(16,), view_dependent=True)
    return DensityField(BOX, cfg)


# 4 levels, N = 4 -> 32, T = 2^9: level 0 (5^3 = 125 vertices) is dense, the finest is hashed.
TINY_HASH = HashGridConfig(
    num_levels=4, features_per_level=2, log2_hashmap_size=9, base_resolution=4, max_resolution=32
)


# --- encodings -----------------------------------------------------------------------------
def test_dp_recon_hashgrid_config_is_expressible():
    cfg = DP_RECON_HASHGRID
    assert (cfg.num_levels, cfg.features_per_level, cfg.log2_hashmap_size) == (16, 2, 19)
    res = cfg.resolutions()
    assert res[0] == 16 and res[-1] == 2048 and res == sorted(res)
    assert cfg.growth_factor == pytest.approx(math.exp(math.log(128) / 15))
    g = HashGrid(cfg)
    assert g.out_dim == 32
    # levels with (N+1)^3 <= 2^19 are dense (N = 16, 22, 30, 42, 58), the rest hashed at T rows.
    assert g.dense.tolist() == [True] * 5 + [False] * 11
    assert g.table.shape[0] == sum(min((n + 1) ** 3, 1 << 19) for n in res)
    assert g(torch.rand(7, 3)).shape == (7, 32)


def test_coarse_hash_level_is_dense_and_collision_free():
    g = HashGrid(TINY_HASH)
    n = TINY_HASH.resolutions()[0]
    assert bool(g.dense[0]) and (n + 1) ** 3 <= 1 << TINY_HASH.log2_hashmap_size
    ar = torch.arange(n + 1)
    verts = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), -1).reshape(-1, 1, 1, 3)
    corners = verts.expand(-1, TINY_HASH.num_levels, 1, 3)
    rows = g.level_indices(corners)[:, 0, 0]
    assert rows.unique().numel() == (n + 1) ** 3  # no two vertices share a row
    assert rows.min() == g.offsets[0] and rows.max() == g.offsets[1] - 1  # exactly fills the level


def test_fine_hash_level_uses_instant_ngp_primes():
    g = HashGrid(TINY_HASH)
    assert not bool(g.dense[-1])
    t = 1 << TINY_HASH.log2_hashmap_size
    pts = torch.randint(0, TINY_HASH.max_resolution + 1, (50, 3), generator=torch.Generator().manual_seed(0))
    rows = g.level_indices(pts[:, None, None, :].expand(-1, TINY_HASH.num_levels, 1, 3))[:, -1, 0]
    for p, row in zip(pts.tolist(), rows.tolist()):
        h = 0
        for xi, pi in zip(p, HASH_PRIMES):
            h ^= (xi * pi) & 0xFFFFFFFF  # tiny-cuda-nn's uint32 arithmetic
        assert row == int(g.offsets[-2]) + h % t
    # a hashed level does collide (more vertices than rows), a dense level never does.
    assert (TINY_HASH.max_resolution + 1) ** 3 > t


def test_fast_hash_indexing_matches_the_reference_per_corner_form():
    torch.manual_seed(0)
    g = HashGrid(TINY_HASH)
    x = torch.rand(2000, 3)
    # box corners and faces (x = 1 interpolates inside the last cell), cell boundaries
    x[:8] = torch.tensor(
        [[0.0, 0, 0], [1, 1, 1], [1, 0, 1], [0.5, 0.5, 0.5], [0.25, 1, 0], [0, 0, 1], [1, 1, 0], [0.999, 0, 0.5]]
    )
    corners, w = trilinear_corners(x, g.resolution)
    rows = g.level_indices(corners)  # [P, L, 8] reference: all 24 products, both paths per level
    base, _ = cell_coordinates(x, g.resolution)
    assert torch.equal(g.cell_indices(base), rows)
    ref = (w[..., None] * g.table[rows]).sum(-2).reshape(len(x), -1)
    assert torch.allclose(g(x), ref, atol=1e-7)
    assert torch.allclose(w.sum(-1), torch.ones_like(w[..., 0]))


def test_hash_grid_gradients_match_finite_differences():
    torch.manual_seed(0)
    g = HashGrid(HashGridConfig(3, 2, 6, 2, 8, init_scale=1.0)).double()
    x = (0.05 + 0.9 * torch.rand(6, 3, dtype=torch.float64)).requires_grad_(True)
    # w.r.t. the inputs and the table entries together (central differences, eps 1e-6).
    table = g.table.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda xx, tab: _hash_with_table(g, xx, tab), (x, table))
    # second derivatives (the eikonal loss differentiates the input gradient again)
    assert torch.autograd.gradgradcheck(lambda xx: g(xx), (x,))


def _hash_with_table(g: HashGrid, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The hash grid's output as a function of an explicit table (checked equal to forward)."""
    with torch.no_grad():
        g.table.copy_(table)
    corners, w = trilinear_corners(x, g.resolution)
    idx = g.level_indices(corners)
    feats = table[idx.reshape(-1)].reshape(*idx.shape, table.shape[1])
    out = (w[..., None] * feats).sum(-2).reshape(x.shape[0], -1)
    assert torch.allclose(out, g(x))
    return out


def test_dense_grid_is_exact_on_linear_functions_and_matches_a_dense_hash_level():
    torch.manual_seed(0)
    grid = DenseGrid(resolution=5, features=2).double()
    ar = torch.arange(6, dtype=torch.float64) / 5
    xyz = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), -1)
    with torch.no_grad():
        grid.grid[..., 0] = 1.0 + 2 * xyz[..., 0] - 3 * xyz[..., 1] + 0.5 * xyz[..., 2]
        grid.grid[..., 1] = xyz[..., 2]
    x = torch.rand(100, 3, dtype=torch.float64)
    x[0] = 1.0  # the far corner interpolates inside the last cell
    out = grid(x)
    assert torch.allclose(out[:, 0], 1.0 + 2 * x[:, 0] - 3 * x[:, 1] + 0.5 * x[:, 2])
    assert torch.allclose(out[:, 1], x[:, 2])
    # a one-level hash grid whose grid fits its table is the same dense grid
    hg = HashGrid(HashGridConfig(1, 2, 9, 5, 5)).double()
    assert bool(hg.dense[0])
    with torch.no_grad():
        hg.table.copy_(grid.grid.reshape(-1, 2))
    assert torch.allclose(hg(x), out)
    xg = torch.rand(4, 3, dtype=torch.float64).mul(0.9).add(0.05).requires_grad_(True)
    assert torch.autograd.gradcheck(grid, (xg,))


def test_positional_encoding_is_nerf_gamma():
    pe = PositionalEncoding(3, 4, include_input=True)
    assert pe.out_dim == 3 * (2 * 4 + 1)
    x = torch.tensor([[0.25, -0.5, 1.0]])
    out = pe(x)
    assert torch.allclose(out[0, :3], x[0])
    # layout: [x, sin(2^k pi x) for k, cos(2^k pi x) for k], each k block over the 3 inputs
    k = 2
    assert torch.allclose(out[0, 3 + 3 * k : 6 + 3 * k], torch.sin(2**k * math.pi * x[0]), atol=1e-6)
    assert torch.allclose(out[0, 15 + 3 * k : 18 + 3 * k], torch.cos(2**k * math.pi * x[0]), atol=1e-6)


# --- composition ---------------------------------------------------------------------------
def test_sdf_minimum_of_two_spheres_is_the_union_sdf():
    a = SphereSDF((-0.4, 0.0, 0.0), 0.3, (1.0, 0.0, 0.0))
    b = SphereSDF((0.4, 0.1, 0.0), 0.25, (0.0, 0.0, 1.0))
    comp = ComposedSDFField([a, b])
    assert comp.num_objects == 2 and comp.kind == "sdf" and comp.composition == "min"
    assert float(comp.laplace.beta.detach()) == pytest.approx(VOLSDF_BETA_INIT, rel=1e-2)
    x = torch.rand(1000, 3) * 2 - 1
    out = comp(x)
    da = (x - torch.tensor([-0.4, 0.0, 0.0])).norm(dim=-1)
    db = (x - torch.tensor([0.4, 0.1, 0.0])).norm(dim=-1)
    union = torch.minimum(da - 0.3, db - 0.25)
    assert torch.allclose(out.sdf[:, 0], union, atol=1e-6)
    assert torch.allclose(out.object_sdf, torch.stack([da - 0.3, db - 0.25], -1), atol=1e-6)
    closer_a = (da - 0.3) < (db - 0.25)
    assert torch.equal(out.rgb[:, 0] == 1.0, closer_a)  # colour of the argmin object
    beta = comp.laplace.beta
    assert torch.allclose(out.density[:, 0], volsdf_density(union, beta))
    assert torch.allclose(out.object_density, volsdf_density(out.object_sdf, beta))
    # VolSDF density is monotone in -sdf, so the scene density is the max of the objects'
    assert torch.allclose(out.density[:, 0], out.object_density.amax(-1))


def test_density_sum_weights_colour_by_density():
    a = SlabDensity(-0.5, 0.5, 2.0, (1.0, 0.0, 0.0))
    b = SlabDensity(0.0, 1.0, 6.0, (0.0, 1.0, 0.0))
    comp = ComposedDensityField([a, b])
    x = torch.tensor([[-0.25, 0, 0], [0.25, 0, 0], [0.75, 0, 0], [-0.9, 0, 0]])
    out = comp(x)
    assert out.density[:, 0].tolist() == [2.0, 8.0, 6.0, 0.0]
    assert torch.allclose(out.rgb[1], torch.tensor([0.25, 0.75, 0.0]))  # 2/8 red + 6/8 green
    assert torch.allclose(out.rgb[0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(out.object_density, torch.tensor([[2.0, 0], [2, 6], [0, 6], [0, 0]]))
    # rendered: same as the volume primitive's K-object compositing; object alphas sum to alpha
    o = torch.tensor([[-2.0, 0.0, 0.0], [-2.0, 0.3, 0.2]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    r = render_rays(comp, o, d, SamplerConfig(num_samples=200))
    assert torch.allclose(r["object_alpha"].sum(-1, keepdim=True), r["alpha"], atol=1e-6)
    t = 0.5 * (r["edges"][:, 1:] + r["edges"][:, :-1])
    pts = o[:, None] + d[:, None] * t[..., None]
    ref = composite_objects(comp(pts).object_density, comp(pts).object_rgb, r["edges"])
    assert torch.allclose(r["rgb"], ref["rgb"], atol=1e-6)
    # the ray crosses x in [-0.5, 0]: sigma 2 (red), then [0, 0.5] sigma 8 - nearly opaque
    assert float(r["alpha"][0]) == pytest.approx(1 - math.exp(-2 * 0.5 - 8 * 0.5 - 6 * 0.5), abs=1e-3)
    with pytest.raises(ValueError):
        ComposedDensityField([SphereSDF((0, 0, 0), 0.2, (1, 1, 1))])


# --- rendering -----------------------------------------------------------------------------
def _camera_looking_along_x(width: int = 32, height: int = 24, fov: float = 60.0) -> Camera:
    k = intrinsics_from_fov(torch.tensor([fov]), width, height)
    return Camera(k, look_at([-3.0, 0.0, 0.0], [0.0, 0.0, 0.0]), width, height)


def test_depth_is_camera_z_not_ray_distance():
    wall = SlabDensity(0.0, 1.0, 1e4, (0.2, 0.4, 0.6), box=((-1.0, -5.0, -5.0), (1.0, 5.0, 5.0)))
    cam = _camera_looking_along_x()
    out = render_field(wall, cam, SamplerConfig(num_samples=64, num_importance=64))
    assert out.rgb.shape == (1, 24, 32, 3) and out.alpha.shape == out.depth.shape == (1, 24, 32, 1)
    assert torch.allclose(out.alpha, torch.ones_like(out.alpha), atol=1e-4)
    # the wall x = 0 is at camera z = 3 for every pixel; corner rays travel 3 / cos further
    assert torch.allclose(out.depth, torch.full_like(out.depth, 3.0), atol=5e-3)
    _, d = generate_rays(cam)
    corner_cos = float(d[0, 0, 0, 0])
    assert corner_cos < 0.85  # so the ray distance there (>= 3.5) would have failed the check
    assert torch.allclose(out.rgb, torch.tensor([0.2, 0.4, 0.6]).expand_as(out.rgb), atol=1e-4)


def test_rays_that_miss_the_box_are_empty_with_zero_depth():
    sphere = SphereSDF((0.0, 0.0, 0.0), 0.3, (1.0, 1.0, 1.0), box=((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5)))
    cam = _camera_looking_along_x(fov=90.0)
    out = render_field(sphere, cam, SamplerConfig(num_samples=32))
    assert float(out.alpha[0, 0, 0, 0]) == 0.0 and float(out.depth[0, 0, 0, 0]) == 0.0
    assert float(out.alpha[0, 12, 16, 0]) > 0.99  # centre ray hits the sphere
    assert "object_alpha" not in out.extras and out.normals is None


def test_sdf_render_normals_and_per_object_alpha():
    a = SphereSDF((0.0, -0.45, 0.0), 0.3, (1.0, 0.0, 0.0))
    b = SphereSDF((0.0, 0.45, 0.0), 0.3, (0.0, 0.0, 1.0))
    comp = ComposedSDFField([a, b], beta_init=0.005)
    cam = _camera_looking_along_x(width=40, height=20, fov=40.0)
    out = render_field(comp, cam, SamplerConfig(num_samples=128, num_importance=64), compute_normals=True)
    oa = out.extras["object_alpha"]
    assert oa.shape == (1, 20, 40, 2)
    # the left half of the image (world -y... camera +x is world -y here) sees sphere a
    o, d = generate_rays(cam)
    hit = out.alpha[..., 0] > 0.99
    assert int(hit.sum()) > 50
    mask_a = oa[..., 0] > 0.5
    mask_b = oa[..., 1] > 0.5
    assert not bool((mask_a & mask_b).any()) and bool(((mask_a | mask_b) == hit).float().mean() > 0.97)
    red = out.rgb[..., 0] > 0.9
    assert bool((red[hit] == mask_a[hit]).all())
    # normals: analytic sphere normal at the rendered hit point o + t d (t from camera z)
    t = out.depth / (d * torch.tensor([1.0, 0.0, 0.0])).sum(-1, keepdim=True)
    p = o + d * t
    centre = torch.where(mask_a[..., None], a.c, b.c)
    n_true = torch.nn.functional.normalize(p - centre, dim=-1)
    cos = (out.normals * n_true).sum(-1)[hit]
    assert float(cos.detach().mean()) > 0.99


def test_chunked_and_unchunked_renders_agree():
    fields = [_small_density_field(EncodingConfig("hashgrid", TINY_HASH), s) for s in range(2)]
    comp = ComposedDensityField(fields)
    cams = orbit_cameras(torch.tensor([20.0, 35.0]), torch.tensor([0.0, 120.0]), 3.0, 45.0, 20, 14)
    sampler = SamplerConfig(num_samples=24, num_importance=16)
    with torch.no_grad():
        full = render_field(comp, cams, sampler, chunk_rays=10**6)
        chunked = render_field(comp, cams, sampler, chunk_rays=97)
    for name in ("rgb", "alpha", "depth"):
        assert torch.allclose(getattr(full, name), getattr(chunked, name), atol=1e-6, rtol=0), name
    assert torch.allclose(full.extras["object_alpha"], chunked.extras["object_alpha"], atol=1e-6, rtol=0)
    assert float(full.alpha.max()) > 0.1  # the random field is not empty


def test_chunking_bounds_the_points_per_field_call():
    field = _small_density_field(EncodingConfig("dense", dense_resolution=8, dense_features=4))
    calls: list[int] = []
    field.register_forward_hook(lambda mod, args, out: calls.append(args[0][..., 0].numel()))
    cams = orbit_cameras(30.0, 10.0, 3.0, 45.0, 33, 21)
    sampler = SamplerConfig(num_samples=16, num_importance=8)
    with torch.no_grad():
        render_field(field, cams, sampler, chunk_rays=50)
    # coarse pass 16 and fine pass 16 + 8 + 1 intervals per ray, at most 50 rays per call
    assert max(calls) == 50 * (16 + 8 + 1)
    assert sum(calls) == 33 * 21 * (16 + 16 + 8 + 1)


def test_render_is_differentiable_into_tables_and_beta():
    torch.manual_seed(0)
    enc = EncodingConfig("hashgrid", TINY_HASH)
    cfg = SDFFieldConfig(encoding=enc, hidden=(16,), color_hidden=(16,), sphere_radius=0.4)
    comp = ComposedSDFField([SDFField(BOX, cfg), SDFField(BOX, cfg)])
    cam = _camera_looking_along_x(8, 6)
    gen = torch.Generator().manual_seed(0)
    out = render_field(comp, cam, SamplerConfig(num_samples=16, perturb=True), generator=gen)
    (out.rgb.mean() + out.extras["object_alpha"].mean()).backward()
    assert comp.laplace.beta_param.grad is not None and float(comp.laplace.beta_param.grad.abs()) > 0
    assert float(comp.objects[0].encoding.table.grad.abs().sum()) > 0
    assert float(comp.objects[1].geo.net[0].weight.grad.abs().sum()) > 0


def test_full_640x480_render_finishes_on_cpu():
    """~2.7 s on 2 CPU cores (16 samples, dense-grid field); not marked slow."""
    torch.set_num_threads(2)
    field = _small_density_field(EncodingConfig("dense", dense_resolution=16, dense_features=4))
    cam = orbit_cameras(25.0, 45.0, 3.0, 50.0, 640, 480)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = render_field(field, cam, SamplerConfig(num_samples=16), chunk_rays=16384)
    elapsed = time.perf_counter() - t0
    assert out.rgb.shape == (1, 480, 640, 3) and torch.isfinite(out.rgb).all()
    assert elapsed < 120.0, f"640x480 render took {elapsed:.1f} s"


# --- packaged configs ----------------------------------------------------------------------
def test_packaged_field_configs_build_the_papers_fields():
    spec = load_field_yaml(packaged_field_config("dp_recon"), num_objects=3)
    assert spec.kind == "sdf" and spec.composition == "min" and spec.num_objects == 3
    assert spec.network.encoding.hashgrid == DP_RECON_HASHGRID and spec.network.hidden == (256, 256)
    comp = spec.build()
    assert isinstance(comp, ComposedSDFField) and comp.num_objects == 3
    assert float(comp.laplace.beta.detach()) == pytest.approx(0.1, rel=1e-2)
    out = comp(torch.rand(5, 3) * 2 - 1, torch.nn.functional.normalize(torch.randn(5, 3), dim=-1))
    assert out.object_sdf.shape == (5, 3) and out.rgb.shape == (5, 3)

    spec = load_field_yaml(packaged_field_config("udc_nerf"))
    assert spec.kind == "density" and spec.composition == "sum"
    assert (spec.sampler.num_samples, spec.sampler.num_importance) == (64, 64)
    comp = spec.build()
    assert isinstance(comp, ComposedDensityField)
    assert comp.objects[0].encoding.out_dim == 3 * (2 * 10 + 1)
    assert comp(torch.zeros(2, 3)).object_density.shape == (2, 2)


@pytest.mark.parametrize(
    "cfg, words",
    [
        ({"kind": "sdf", "colour": 1}, "unknown key(s) ['colour']"),
        ({"kind": "nerf"}, "field.kind"),
        ({"kind": "sdf", "composition": "sum", "num_objects": 2}, "does not apply"),
        ({"kind": "sdf", "network": {"hiden": [8]}}, "field.network: unknown key(s) ['hiden']"),
        ({"kind": "sdf", "network": {"encoding": {"type": "tcnn"}}}, "field.network.encoding.type must be one of"),
        ({"kind": "sdf", "network": {"encoding": {"hashgrid": {"num_levels": 0}}}}, "field.network.encoding.hashgrid"),
        ({"kind": "density", "sampler": {"num_samples": 0}}, "field.sampler"),
        ({"kind": "sdf", "aabb": [[0, 0, 0], [1, 1]]}, "field.aabb"),
        ({"kind": "sdf", "num_objects": 2}, "field.num_objects"),
    ],
)
def test_bad_field_configs_fail_with_one_line_errors(cfg, words):
    with pytest.raises(ValueError) as exc:
        load_field_spec(cfg)
    assert words in str(exc.value) and "\n" not in str(exc.value)


# --- GPU -------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_hash_grid_field_renders_the_same_on_gpu_and_cpu():
    torch.manual_seed(0)
    comp = ComposedDensityField([_small_density_field(EncodingConfig("hashgrid", TINY_HASH), s) for s in range(2)])
    cams = orbit_cameras(torch.tensor([20.0, 35.0]), torch.tensor([0.0, 120.0]), 3.0, 45.0, 20, 14)
    sampler = SamplerConfig(num_samples=24, num_importance=16)
    x = torch.rand(1000, 3)
    enc = comp.objects[0].encoding
    with torch.no_grad():
        enc_cpu = enc(x)
        cpu = render_field(comp, cams, sampler)
        comp = comp.cuda()
        enc_gpu = enc(x.cuda()).cpu()
        gpu = render_field(comp, cams, sampler)
    assert torch.allclose(enc_cpu, enc_gpu, atol=1e-6)
    assert gpu.rgb.device.type == "cuda"
    for name in ("rgb", "alpha", "depth"):
        assert torch.allclose(getattr(cpu, name), getattr(gpu, name).cpu(), atol=1e-4), name
    assert torch.allclose(cpu.extras["object_alpha"], gpu.extras["object_alpha"].cpu(), atol=1e-4)


def test_field_outputs_shapes_semantics_and_view_dependence():
    torch.manual_seed(0)
    enc = EncodingConfig("frequency", num_frequencies=4)
    cfg = DensityFieldConfig(encoding=enc, hidden=(16,), geo_features=7, color_hidden=(16,), num_semantics=3)
    f = DensityField(BOX, cfg)
    pts = torch.rand(4, 5, 3) * 2 - 1
    d1 = torch.nn.functional.normalize(torch.randn(4, 5, 3), dim=-1)
    out = f(pts, d1)
    assert out.density.shape == (4, 5, 1) and out.rgb.shape == (4, 5, 3) and out.semantics.shape == (4, 5, 3)
    assert bool((out.density >= 0).all()) and bool(((out.rgb > 0) & (out.rgb < 1)).all())
    assert not torch.allclose(f(pts, -d1).rgb, out.rgb)  # view-dependent colour
    assert torch.equal(f(pts, -d1).density, out.density)  # density is not
    assert float(f(torch.tensor([[3.0, 0.0, 0.0]])).density.detach()) == 0.0  # empty outside the box
    cfg = SDFFieldConfig(encoding=enc, hidden=(16,), color_hidden=(16,), view_dependent=False, num_semantics=2)
    comp = ComposedSDFField([SDFField(BOX, cfg), SDFField(BOX, cfg)])
    o = comp(pts)
    assert o.semantics.shape == (4, 5, 2) and o.object_sdf.shape == (4, 5, 2) and o.object_rgb.shape == (4, 5, 2, 3)
    pick = o.object_sdf.argmin(-1, keepdim=True)
    assert torch.equal(o.rgb, o.object_rgb.gather(-2, pick[..., None].expand(4, 5, 1, 3))[..., 0, :])
