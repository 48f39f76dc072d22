"""Gaussian splatting renderer: torch reference checked analytically, by finite differences,
by fitting, and (GPU only) against gsplat."""

from __future__ import annotations

import math

import pytest
import torch

from layerforge.errors import ConfigError
from layerforge.renderers.cameras import Camera, intrinsics_from_fov, look_at
from layerforge.renderers.gaussians import ALPHA_MAX, EPS2D, project_gaussians, render_gaussians
from layerforge.renderers.sh import SH_C0, eval_sh, rgb_to_sh


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add sync overhead (10x slower on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _axis_camera(size: int = 32, f: float = 40.0, dtype=torch.float64) -> Camera:
    """Camera at the origin looking along world +X (+Z up), principal point on pixel (size//2) centre."""
    c = size // 2 + 0.5
    K = torch.tensor([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]], dtype=dtype)
    w2c = look_at(torch.zeros(3, dtype=dtype), torch.tensor([1.0, 0.0, 0.0], dtype=dtype))
    return Camera(K, w2c, size, size, near=0.01, far=100.0)


def _iso(n: int, scale: float, dtype=torch.float64):
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype).repeat(n, 1)
    scales = torch.full((n, 3), scale, dtype=dtype)
    return quats, scales


def test_single_isotropic_splat_matches_projected_2d_gaussian():
    cam = _axis_camera(32, f=40.0)
    z, s, o = 2.0, 0.15, 0.8
    quats, scales = _iso(1, s)
    means = torch.tensor([[z, 0.0, 0.0]], dtype=torch.float64)
    out = render_gaussians(means, quats, scales, torch.tensor([o], dtype=torch.float64),
                           torch.tensor([[1.0, 0.5, 0.25]], dtype=torch.float64), cam)
    alpha = out.alpha[0, ..., 0]
    assert EPS2D == 0.3  # gsplat's default dilation
    var = (40.0 * s / z) ** 2 + 0.3  # projected variance in px² plus the low-pass dilation
    v, u = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    r2 = (u - 16.0) ** 2 + (v - 16.0) ** 2
    expected = o * torch.exp(-0.5 * r2.double() / var)
    expected = torch.where(expected >= 1.0 / 255.0, expected, torch.zeros_like(expected))
    assert alpha.argmax().item() == 16 * 32 + 16
    assert alpha.max().item() == pytest.approx(o, abs=1e-12)
    torch.testing.assert_close(alpha, expected, atol=1e-9, rtol=0)
    # colour is alpha-weighted, expected depth is the splat depth, accumulated depth alpha * z
    torch.testing.assert_close(out.rgb[0, 16, 16], torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64) * o)
    hit = alpha > 0
    torch.testing.assert_close(out.depth[0, ..., 0][hit], torch.full_like(alpha[hit], z))
    d_acc = render_gaussians(means, quats, scales, torch.tensor([o], dtype=torch.float64),
                             torch.ones(1, 3, dtype=torch.float64), cam, depth_mode="D").depth
    torch.testing.assert_close(d_acc[0, ..., 0], alpha * z)
    proj = project_gaussians(means, quats, scales, cam)
    assert int(proj["radii"][0, 0]) == math.ceil(3 * math.sqrt(var))


def test_anisotropic_rotated_splat_follows_covariance():
    cam = _axis_camera(32, f=40.0)
    # long axis along world +Y (image -u), rotated 90° about the view axis (+X) -> along world Z (image -v)
    means = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)
    scales = torch.tensor([[0.01, 0.3, 0.05]], dtype=torch.float64)
    q_id = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    q_rx = torch.tensor([[math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0]], dtype=torch.float64) * 3.0
    op = torch.tensor([0.9], dtype=torch.float64)
    col = torch.ones(1, 3, dtype=torch.float64)
    a0 = render_gaussians(means, q_id, scales, op, col, cam).alpha[0, ..., 0]
    a1 = render_gaussians(means, q_rx, scales, op, col, cam).alpha[0, ..., 0]
    # identity: wide along u (row 16), narrow along v; rotated (unnormalised quat): the transpose
    assert a0[16, 16 + 8] > 0.3 and a0[16 + 8, 16] < 1e-3
    torch.testing.assert_close(a1, a0.T, atol=1e-9, rtol=0)


def test_front_splat_wins_with_alpha_clamp_and_early_stop():
    cam = _axis_camera(16, f=20.0)
    quats, scales = _iso(3, 0.5)
    means = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    colors = torch.eye(3, dtype=torch.float64)
    out = render_gaussians(means, quats, scales, torch.ones(3, dtype=torch.float64), colors, cam,
                           background=torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    # nearest splat (green, index 1) takes 0.999; the next would bring T to 1e-6 <= 1e-4: stop
    assert ALPHA_MAX == 0.999  # gsplat 1.4/1.5 clamp (3DGS's original rasterizer used 0.99)
    c = out.rgb[0, 8, 8]
    torch.testing.assert_close(c, torch.tensor([0.0, ALPHA_MAX, 1 - ALPHA_MAX], dtype=torch.float64))
    assert out.alpha[0, 8, 8, 0].item() == pytest.approx(ALPHA_MAX, abs=1e-12)
    assert out.depth[0, 8, 8, 0].item() == pytest.approx(1.0, abs=1e-9)


def test_culling_and_background():
    cam = _axis_camera(16, f=20.0)
    quats, scales = _iso(2, 0.2)
    means = torch.tensor([[-2.0, 0.0, 0.0], [500.0, 0.0, 0.0]], dtype=torch.float64)  # behind, beyond far
    bg = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64)
    out = render_gaussians(means, quats, scales, torch.ones(2, dtype=torch.float64),
                           torch.ones(2, 3, dtype=torch.float64), cam, background=bg)
    assert torch.all(out.alpha == 0)
    torch.testing.assert_close(out.rgb, bg.expand(1, 16, 16, 3))
    assert torch.all(out.meta["radii"] == 0)


def _random_scene(n: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * torch.tensor([0.6, 0.6, 0.6], dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = 0.05 + 0.1 * torch.rand(n, 3, generator=g, dtype=dtype)
    opac = 0.2 + 0.6 * torch.rand(n, generator=g, dtype=dtype)
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    return means, quats, scales, opac, colors


def _two_cams(size: int, dtype=torch.float64) -> Camera:
    eye = torch.tensor([[2.0, 0.3, 0.4], [-0.5, 2.0, 0.8]], dtype=dtype)
    return Camera(intrinsics_from_fov(40.0, size, size, dtype=dtype), look_at(eye), size, size)


def test_chunking_and_batching_do_not_change_the_image():
    means, quats, scales, opac, colors = _random_scene(40)
    cams = _two_cams(24)
    full = render_gaussians(means, quats, scales, opac, colors, cams)
    small = render_gaussians(means, quats, scales, opac, colors, cams, chunk_elems=97)
    single = render_gaussians(means, quats, scales, opac, colors, cams[1])
    for k in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(small, k), getattr(full, k))
        torch.testing.assert_close(getattr(single, k)[0], getattr(full, k)[1])
    assert full.alpha.max() > 0.5  # the scene is actually in view


def test_gradients_match_finite_differences():
    means, quats, scales, opac, colors = _random_scene(3, seed=1)
    cam = Camera(intrinsics_from_fov(50.0, 8, 8, dtype=torch.float64),
                 look_at(torch.tensor([1.5, 0.2, 0.3], dtype=torch.float64)), 8, 8)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)

    def f(m, s, o, c):
        out = render_gaussians(m, quats, s, o, c, cam, background=bg)
        return out.rgb, out.alpha, out.depth

    inputs = tuple(t.clone().requires_grad_(True) for t in (means, scales, opac, colors))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_sh_matches_gsplat_reference_and_dc_equals_colour():
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(64, 3, generator=g, dtype=torch.float64)
    coeffs = torch.randn(64, 16, 3, generator=g, dtype=torch.float64)
    # hand-checked first-order signs (3DGS): basis = (C0, -C1 y, C1 z, -C1 x)
    d = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    c = torch.zeros(1, 4, 1, dtype=torch.float64)
    c[0, 2, 0] = 1.0
    assert eval_sh(1, d, c).item() == pytest.approx(0.4886025119029199)
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    for deg in range(4):
        ours = eval_sh(deg, dirs, coeffs)
        ref = torch_impl._spherical_harmonics(deg, dirs, coeffs)
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)

    means, quats, scales, opac, colors = _random_scene(20, seed=2)
    cam = _two_cams(16)
    sh = torch.zeros(20, 16, 3, dtype=torch.float64)
    sh[:, 0] = rgb_to_sh(colors)
    a = render_gaussians(means, quats, scales, opac, colors, cam)
    b = render_gaussians(means, quats, scales, opac, None, cam, sh_coeffs=sh, sh_degree=3)
    torch.testing.assert_close(a.rgb, b.rgb)
    assert SH_C0 * rgb_to_sh(torch.tensor(0.7)).item() + 0.5 == pytest.approx(0.7)


def test_bad_arguments_raise():
    means, quats, scales, opac, colors = _random_scene(4, dtype=torch.float32)
    cam = _two_cams(8, dtype=torch.float32)
    with pytest.raises(ConfigError):
        render_gaussians(means, quats, scales, opac, colors, cam, backend="gsplat")
    with pytest.raises(ValueError):
        render_gaussians(means, quats, scales, opac, None, cam)
    with pytest.raises(ValueError):
        render_gaussians(means, quats, scales[:3], opac, colors, cam)


@pytest.fixture
def gsplat_unimportable(monkeypatch):
    """``import gsplat`` fails (a None entry in sys.modules makes Python raise ImportError), and
    the once-per-process log memory starts empty."""
    import sys

    from layerforge.renderers import gaussians

    monkeypatch.setitem(sys.modules, "gsplat", None)
    monkeypatch.setattr(gaussians, "_FALLBACKS_LOGGED", set(), raising=False)


def _fallback_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "gsplat" in r.getMessage()]


def test_auto_backend_logs_cuda_fallback_once_with_reason(gsplat_unimportable, caplog):
    """Issue: backend='auto' fell back to the torch reference on CUDA silently when gsplat failed to import."""
    from layerforge.renderers.gaussians import gsplat_import_error, resolve_backend

    caplog.set_level("WARNING", logger="layerforge.renderers")
    reason = gsplat_import_error()
    assert reason == "ModuleNotFoundError: import of gsplat halted; None in sys.modules"
    cuda = torch.device("cuda")  # a device object needs no GPU; the decision only looks at its type
    assert resolve_backend("auto", cuda) == "torch"
    assert resolve_backend("auto", cuda) == "torch"
    assert resolve_backend("auto", "cuda:1") == "torch"
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 1, warnings  # once, not per render call
    assert reason in warnings[0] and "torch reference" in warnings[0] and "install gsplat" in warnings[0]
    assert "\n" not in warnings[0]
    # explicit choices are honoured without a warning; the explicit gsplat backend says why it cannot run
    assert resolve_backend("torch", cuda) == "torch" and resolve_backend("gsplat", cuda) == "gsplat"
    with pytest.raises(ConfigError, match="unknown Gaussian backend"):
        resolve_backend("cuda", cuda)  # type: ignore[arg-type]
    assert len(_fallback_warnings(caplog)) == 1


def test_auto_backend_on_cpu_is_torch_without_a_warning(gsplat_unimportable, caplog):
    caplog.set_level("WARNING", logger="layerforge.renderers")
    means, quats, scales, opac, colors = _random_scene(4, dtype=torch.float32)
    out = render_gaussians(means, quats, scales, opac, colors, _two_cams(8, dtype=torch.float32))
    assert out.rgb.shape == (2, 8, 8, 3)
    assert _fallback_warnings(caplog) == []  # on CPU torch is the only path, not a fallback


@pytest.mark.gpu
def test_auto_backend_falls_back_on_gpu_with_one_warning(gsplat_unimportable, caplog):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    caplog.set_level("WARNING", logger="layerforge.renderers")
    means, quats, scales, opac, colors = (t.cuda() for t in _random_scene(20, dtype=torch.float32))
    cams = _two_cams(16, dtype=torch.float32).to(torch.device("cuda"))
    auto = render_gaussians(means, quats, scales, opac, colors, cams)
    render_gaussians(means, quats, scales, opac, colors, cams)
    ref = render_gaussians(means, quats, scales, opac, colors, cams, backend="torch")
    torch.testing.assert_close(auto.rgb, ref.rgb)
    assert len(_fallback_warnings(caplog)) == 1
    with pytest.raises(ConfigError, match="cannot import gsplat"):
        render_gaussians(means, quats, scales, opac, colors, cams, backend="gsplat")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10.0 * torch.log10(((a - b) ** 2).mean()))


def test_fit_gaussians_to_an_image():
    torch.manual_seed(0)
    size = 32
    cam = Camera(intrinsics_from_fov(50.0, size, size), look_at([2.0, 0.0, 0.0]), size, size)
    v, u = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    target = torch.stack([u, v, 0.5 * (1 + torch.sin(6.0 * u) * torch.cos(4.0 * v))], -1)[None]
    target = torch.where(((u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.12)[None, ..., None], target, 1 - target)

    n = 100
    g = torch.Generator().manual_seed(0)
    means = torch.nn.Parameter(torch.cat([torch.zeros(n, 1), (torch.rand(n, 2, generator=g) - 0.5) * 1.6], -1))
    log_s = torch.nn.Parameter(torch.full((n, 3), math.log(0.08)))
    quats = torch.nn.Parameter(torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1))
    logit_o = torch.nn.Parameter(torch.zeros(n))
    logit_c = torch.nn.Parameter(torch.zeros(n, 3))
    opt = torch.optim.Adam(
        [
            {"params": [means], "lr": 5e-3},
            {"params": [log_s, logit_c, logit_o], "lr": 5e-2},
            {"params": [quats], "lr": 1e-2},
        ]
    )

    def loss_fn() -> tuple[torch.Tensor, torch.Tensor]:
        out = render_gaussians(means, quats, log_s.exp(), logit_o.sigmoid(), logit_c.sigmoid(), cam,
                               background=torch.zeros(3))
        return ((out.rgb - target) ** 2).mean(), out.rgb

    first, _ = loss_fn()
    for _ in range(200):
        opt.zero_grad()
        loss, _ = loss_fn()
        loss.backward()
        opt.step()
    last, img = loss_fn()
    assert last.item() < first.item() / 20
    assert _psnr(img.detach().clamp(0, 1), target) > 23.0


@pytest.mark.gpu
def test_torch_reference_matches_gsplat_on_gpu():
    pytest.importorskip("gsplat")
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(3)
    n = 800
    means = ((torch.rand(n, 3, generator=g) - 0.5) * 1.2).to(dev)
    quats = torch.randn(n, 4, generator=g).to(dev)
    scales = (0.01 + 0.08 * torch.rand(n, 3, generator=g)).to(dev)
    opac = torch.rand(n, generator=g).to(dev)
    sh = (0.5 * torch.randn(n, 16, 3, generator=g)).to(dev)
    eye = torch.tensor([[2.0, 0.3, 0.4], [-0.5, 2.0, 0.8]])
    cams = Camera(intrinsics_from_fov(45.0, 64, 48), look_at(eye), 64, 48).to(dev)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0]], device=dev)
    for mode in ("ED", "D"):
        kw = dict(sh_coeffs=sh, sh_degree=3, background=bg, depth_mode=mode)
        ref = render_gaussians(means, quats, scales, opac, None, cams, backend="torch", **kw)
        fast = render_gaussians(means, quats, scales, opac, None, cams, backend="gsplat", **kw)
        assert fast.alpha.max() > 0.5
        for k in ("rgb", "alpha"):
            torch.testing.assert_close(getattr(ref, k), getattr(fast, k), atol=1e-3, rtol=0)
        torch.testing.assert_close(ref.depth, fast.depth, atol=1e-3 * 4, rtol=1e-3)
        torch.testing.assert_close(ref.meta["radii"], fast.meta["radii"].to(ref.meta["radii"].dtype), atol=1, rtol=0)
    colors = torch.rand(n, 3, generator=g).to(dev)
    ref = render_gaussians(means, quats, scales, opac, colors, cams, backend="torch")
    fast = render_gaussians(means, quats, scales, opac, colors, cams, backend="gsplat")
    torch.testing.assert_close(ref.rgb, fast.rgb, atol=1e-3, rtol=0)
