"""UDC-NeRF (layerforge.models.udc_nerf): exact checks of the blocking, the last-interval
rule and the edits, the loss terms and sampler, and a tiny fit through the engine.

The fit: a red box and a blue sphere on a grey floor, rendered by our mesh rasterizer
(fixed light) into training and held-out views, instance ids from the visible face ids
(floor and empty = 0 background), and a pseudo-background (what an inpainter would give)
= the floor rendered without the objects. The fast config (hash grid, tiny widths) is fitted
with all seven paper terms at the paper's weights through optimise() in an Engine stage,
with poly lr decay (PolyDecay); the fast config differs from the paper in the encoding, the
sizes, lr 1e-2, no density noise and a sigma bias init of 1 (see FIT_CONFIG). Figures
measured are in FIT_MEASURED below.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from engine_toy import run_one_stage

from layerforge.models.fields import HashGridConfig
from layerforge.models.optimisation import LossTerm, ParamGroup
from layerforge.models.udc_nerf import (
    BLOCK_SIGMA,
    DELTA_INF,
    BalancedRayBatches,
    Edit,
    PolyDecay,
    UDCNeRF,
    UDCNeRFConfig,
    block_background,
    gumbel_noise,
    hard_gumbel_softmax,
    paper_terms,
    render_points,
    render_views,
)
from layerforge.models.udc_nerf.losses import PAPER_WEIGHTS
from layerforge.pipelines.optimise import OptimiseConfig, optimise
from layerforge.renderers.camera_set import CameraSet
from layerforge.renderers.cameras import orbit_cameras
from layerforge.renderers.mesh import rasterize, render_mesh


def _tiny_config(**kw) -> UDCNeRFConfig:
    base = dict(objects=2, encoding="hashgrid", width=16, code_dim=8, num_samples=8, num_importance=8,
                near=1.0, far=4.0, aabb=((-1.5, -1.5, -0.5), (1.5, 1.5, 0.5)),
                hashgrid=HashGridConfig(4, 2, 12, 4, 32))
    base.update(kw)
    return UDCNeRFConfig(**base)


def _rays(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g) * 0.1 + torch.tensor([-2.5, 0.0, 0.2])
    d = F.normalize(torch.tensor([1.0, 0.0, -0.05]) + 0.2 * torch.randn(n, 3, generator=g), dim=-1)
    return o, d


# ---------------------------------------------------------------- Gumbel blocking


def test_blocking_sets_background_to_minus_5e6_exactly_where_a_foreground_wins():
    sig = torch.tensor([
        [10.0, -10.0, -10.0],  # background wins by 20: never blocked
        [-10.0, 10.0, -10.0],  # object 1 wins: blocked
        [-10.0, -10.0, 10.0],  # object 2 wins: blocked
        [0.0, 0.0, 0.0],  # a tie: the Gumbel draw decides
        [1.0, 0.5, 0.9],
    ])
    noise = gumbel_noise(sig.shape, torch.Generator().manual_seed(3), "cpu")
    # the same draw by hand: -log(-log U), U from the identically seeded generator
    u = torch.rand(sig.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(noise, (-torch.log(-torch.log(u))).float())
    winners = (sig + noise).argmax(-1)
    blocked_sig, blocked = block_background(sig, noise)
    assert blocked[:3].tolist() == [False, True, True]
    assert torch.equal(blocked, winners != 0)
    expect = sig.clone()
    expect[winners != 0, 0] = BLOCK_SIGMA
    assert torch.equal(blocked_sig, expect)  # background set to -5e6 there, everything else unchanged
    assert float(blocked_sig[1, 0]) == -5e6
    # a blocked background has alpha 0 (relu(-5e6) = 0), even on its infinite last interval
    t = torch.tensor([[1.0, 2.0, 3.0]])
    r = render_points(blocked_sig[1:2, 0:1].expand(1, 3), torch.ones(1, 3, 3), t, DELTA_INF)
    assert float(r["alpha"]) == 0.0


def test_blocking_without_generator_is_the_argmax():
    sig = torch.tensor([[0.2, 0.1, 0.0], [0.2, 0.3, 0.0]])
    _, blocked = block_background(sig, gumbel_noise(sig.shape, None, "cpu"))
    assert blocked.tolist() == [False, True]


def test_hard_gumbel_softmax_is_one_hot_with_the_soft_gradient():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.3, -1.0, 0.2]], requires_grad=True)
    noise = gumbel_noise(logits.shape, torch.Generator().manual_seed(0), "cpu")
    tau = 0.1
    y = hard_gumbel_softmax(logits, tau, noise)
    assert torch.equal(y.detach(), F.one_hot((logits + noise).argmax(-1), 3).float())
    w = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]])
    (y * w).sum().backward()
    # straight-through: d/dl of sum w * softmax((l + g) / tau)
    ref = logits.detach().clone().requires_grad_(True)
    (torch.softmax((ref + noise) / tau, -1) * w).sum().backward()
    assert torch.allclose(logits.grad, ref.grad, atol=1e-6)
    # and it matches torch's own straight-through construction
    soft = torch.softmax((logits.detach() + noise) / tau, -1)
    assert torch.allclose(y.detach(), (F.one_hot(soft.argmax(-1), 3) - soft + soft).float())


# ---------------------------------------------------------------- last-interval delta


def test_last_interval_delta_inf_for_background_zero_for_foreground():
    t = torch.tensor([[1.0, 2.0, 4.0]])
    rgb = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    # only the last sample has density
    sig = torch.tensor([[0.0, -1.0, 1e-3]])
    bg = render_points(sig, rgb, t, DELTA_INF)
    fg = render_points(sig, rgb, t, 0.0)
    assert float(bg["alpha"]) == pytest.approx(1.0, abs=1e-9)  # 1 - exp(-1e10 * 1e-3)
    assert torch.allclose(bg["rgb"], torch.tensor([[0.0, 0.0, 1.0]]))
    assert float(fg["alpha"]) == 0.0 and torch.equal(fg["rgb"], torch.zeros(1, 3))
    # densities 0.5, 0, 0.3 at t = 1, 2, 4: deltas 1, 2, last
    sig = torch.tensor([[0.5, 0.0, 0.3]])
    a1 = 1.0 - math.exp(-0.5)  # 0.393469
    bg = render_points(sig, rgb, t, DELTA_INF)
    fg = render_points(sig, rgb, t, 0.0)
    w_bg = torch.tensor([[a1, 0.0, (1 - a1 + 1e-10) * (1 + 1e-10)]])  # last alpha = 1
    assert torch.allclose(bg["weights"], w_bg, atol=1e-7)
    assert float(bg["alpha"]) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(fg["weights"], torch.tensor([[a1, 0.0, 0.0]]), atol=1e-7)
    assert float(fg["alpha"]) == pytest.approx(0.393469, abs=1e-6)
    assert float(fg["depth"]) == pytest.approx(1.0, abs=1e-6)  # all weight at t = 1


def test_model_components_follow_the_delta_rule():
    torch.manual_seed(0)
    m = UDCNeRF(_tiny_config()).eval()
    o, d = _rays(64)
    out = m(o, d, None)
    t, sig = out["t"], out["component_sigma"]
    for k in range(3):
        ref = render_points(sig[..., k], out["components_rgb"][:, None, k].expand(-1, t.shape[1], -1) * 0, t,
                            DELTA_INF if k == 0 else 0.0)
        assert torch.allclose(out["component_alpha"][:, k], ref["alpha"], atol=1e-6)
    # scene, instance and merged fields use the infinite last interval too: where the last
    # sample's merged density is positive the ray is opaque
    merged_last = 0.5 * (m.fine.scene_at((o + t[:, -1:] * d), d)[0] +
                         (sig * out["composition_mask"]).sum(-1)[:, -1])
    opaque = merged_last > 1e-3
    assert int(opaque.sum()) > 0
    assert torch.allclose(out["merged_alpha"][opaque], torch.ones_like(out["merged_alpha"][opaque]), atol=1e-5)


# ---------------------------------------------------------------- edits


def test_remove_zeroes_the_component_everywhere_and_move_is_a_shift():
    torch.manual_seed(1)
    m = UDCNeRF(_tiny_config()).eval()
    with torch.no_grad():  # make object 1 dense so the checks are not trivially zero
        m.fine.foreground.sigma[-1].bias.fill_(5.0)
    o, d = _rays(128, seed=2)
    plain = m(o, d, None)
    assert float(plain["component_alpha"][:, 1].max()) > 0.5
    rem = m(o, d, None, edits=[Edit.remove(1)])
    assert torch.equal(rem["component_alpha"][:, 1], torch.zeros_like(rem["component_alpha"][:, 1]))
    assert float(rem["composition_mask"][..., 1].max()) == 0.0  # never in the composition
    assert torch.equal(rem["component_alpha"][:, 2], plain["component_alpha"][:, 2])

    # point level: the moved object's component at x equals the original's at x - dx
    shift = torch.tensor([0.2, -0.1, 0.05])
    from layerforge.models.udc_nerf import make_slots
    pts = torch.rand(500, 3) * 2 - 1
    dirs = F.normalize(torch.randn(500, 3), dim=-1)
    slots = make_slots([Edit.move(1, shift.tolist())], 2)
    _, _, sig_e, rgb_e = m.fine.components_at(pts, dirs, slots)
    _, _, sig_o, rgb_o = m.fine.components_at(pts - shift, dirs)
    assert torch.equal(sig_e[:, 1], sig_o[:, 1]) and torch.equal(rgb_e[:, 1], rgb_o[:, 1])
    _, _, sig_p, _ = m.fine.components_at(pts, dirs)
    assert torch.equal(sig_e[:, [0, 2]], sig_p[:, [0, 2]])  # background and object 2 unchanged

    # ray level on fixed samples: moving by d == rendering the original from origins - d
    t = torch.linspace(1.0, 4.0, 24).expand(128, 24).contiguous()
    moved = m(o, d, None, edits=[Edit.move(1, shift.tolist())], samples=t)
    ref = m(o - shift, d, None, samples=t)
    assert torch.allclose(moved["component_alpha"][:, 1], ref["component_alpha"][:, 1], atol=1e-5)
    assert torch.allclose(moved["components_rgb"][:, 1], ref["components_rgb"][:, 1], atol=1e-5)

    # duplicate appends a slot equal to the object moved by the offset; rotate by 360 is identity
    dup = m(o, d, None, edits=[Edit.duplicate(1, shift.tolist())], samples=t)
    assert dup["component_alpha"].shape[1] == 4
    assert torch.allclose(dup["component_alpha"][:, 3], ref["component_alpha"][:, 1], atol=1e-5)
    rot = m(o, d, None, edits=[Edit.rotate(1, 360.0, (0.1, 0.2, 0.0))], samples=t)
    base = m(o, d, None, samples=t)
    assert torch.allclose(rot["component_alpha"][:, 1], base["component_alpha"][:, 1], atol=1e-4)
    # a 90 deg turn about c maps c + (1, 0, 0) to c + (0, 1, 0): the original at c + e_x is seen at c + e_y
    c = torch.tensor([0.1, 0.2, 0.0])
    slots = make_slots([Edit.rotate(1, 90.0, c.tolist())], 2)
    p, _ = slots[1].to_original((c + torch.tensor([0.0, 1.0, 0.0]))[None], torch.zeros(1, 3))
    assert torch.allclose(p[0], c + torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)


def test_object_boxes_confine_each_component_and_move_with_its_object():
    boxes = (((-0.5, -0.5, -0.5), (0.0, 0.5, 0.5)), ((0.0, -0.5, -0.5), (0.5, 0.5, 0.5)))
    torch.manual_seed(3)
    free = UDCNeRF(_tiny_config()).eval()
    boxed = UDCNeRF(_tiny_config(object_boxes=boxes)).eval()
    boxed.load_state_dict(free.state_dict())
    pts = torch.rand(4000, 3) * 2 - 1
    dirs = F.normalize(torch.randn(4000, 3), dim=-1)
    with torch.no_grad():
        _, _, sig_f, rgb_f = free.fine.components_at(pts, dirs)
        _, _, sig_b, rgb_b = boxed.fine.components_at(pts, dirs)
    for k, (lo, hi) in enumerate(boxes, start=1):
        inside = ((pts >= torch.tensor(lo)) & (pts <= torch.tensor(hi))).all(-1)
        assert 0 < int(inside.sum()) < len(pts)
        assert torch.equal(sig_b[inside, k], sig_f[inside, k])
        assert bool((sig_b[~inside, k] == BLOCK_SIGMA).all())
    assert torch.equal(sig_b[:, 0], sig_f[:, 0]) and torch.equal(rgb_b, rgb_f)  # background everywhere; colours kept
    # a moved object carries its box: its density at x + dx is the unmoved one at x
    shift = torch.tensor([0.7, 0.0, 0.0])
    from layerforge.models.udc_nerf import make_slots
    with torch.no_grad():
        _, _, sig_m, _ = boxed.fine.components_at(pts + shift, dirs, make_slots([Edit.move(1, shift.tolist())], 2))
    assert torch.equal(sig_m[:, 1], sig_b[:, 1])
    with pytest.raises(ValueError, match="object_boxes"):
        _tiny_config(object_boxes=boxes[:1])


# ---------------------------------------------------------------- sampler, losses, lr


def _toy_views(n=2, res=8, objects=2):
    cams = orbit_cameras(torch.full((n,), 30.0), torch.arange(n) * 90.0, 2.6, 40.0, res, res)
    ids = torch.zeros(n, res, res, dtype=torch.long)
    ids[:, 2:4, 2:4] = 1
    ids[:, 5:7, 5:7] = 2
    ids[:, 0, 0] = -1
    rgb = torch.rand(n, res, res, 3, generator=torch.Generator().manual_seed(0))
    return CameraSet(cams, rgb, ids), torch.rand(n, res, res, 3)


def test_balanced_sampler_draws_30_percent_object_rays_and_never_ignored_pixels():
    views, ps = _toy_views()
    s = BalancedRayBatches(views, ps, 1000, objects=2)
    b = s.sample(0, torch.Generator().manual_seed(0))
    ids = b["instance"]
    assert int((ids >= 1).sum()) == 300 and int((ids == 0).sum()) == 700 and int((ids < 0).sum()) == 0
    assert b["origins"].shape == (1000, 3) and b["pseudo_background"].shape == (1000, 3)
    # the colours travel with the pixels
    flat = views.images.reshape(-1, 3)
    idx = (b["rgb"][:, None] == flat[None]).all(-1).float().argmax(-1)
    assert torch.equal(views.masks.reshape(-1)[idx], ids)


def test_every_term_shares_one_forward_and_gives_gradients():
    torch.manual_seed(0)
    m = UDCNeRF(_tiny_config()).train()
    views, ps = _toy_views()
    batch = BalancedRayBatches(views, ps, 64, objects=2).sample(0, torch.Generator().manual_seed(1))
    terms = paper_terms()
    assert [t.name for t in terms] == list(PAPER_WEIGHTS) and all(isinstance(t, LossTerm) for t in terms)
    assert {t.name: t.weight for t in terms} == PAPER_WEIGHTS
    info = {"log": {}}
    calls = []
    fwd = m.forward

    def counted(*a, **k):
        calls.append(1)
        return fwd(*a, **k)

    m.forward = counted  # type: ignore[method-assign]
    vals = {t.name: t(m, batch, 0, info) for t in terms}
    assert len(calls) == 1
    for name, v in vals.items():
        assert v.ndim == 0 and torch.isfinite(v), name
    sum(t.weight * vals[t.name] for t in terms).backward()
    assert m.fine.codes.weight.grad is not None and float(m.fine.codes.weight.grad.abs().sum()) > 0
    assert m.coarse.scene.sigma[0].weight.grad is not None


def test_component_rgb_and_opacity_losses_by_hand():
    """Two rays, fixed forward outputs: the paper's masked means computed by hand."""
    from layerforge.models.udc_nerf.losses import (
        ComponentOpacityLoss,
        ComponentRGBLoss,
        PseudoBackgroundLoss,
    )

    m = UDCNeRF(_tiny_config(objects=1))
    out = {
        "components_rgb": torch.tensor([[[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]], [[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]]]),
        "component_alpha": torch.tensor([[[0.9], [0.2]], [[0.4], [0.7]]]),
    }
    batch = {"instance": torch.tensor([0, 1]), "rgb": torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.5, 1.0]]),
             "pseudo_background": torch.tensor([[9.0, 9.0, 9.0], [0.2, 0.2, 0.2]])}
    info = {"udc": out, "log": {}}
    # ray 0 (bg): component 0 vs rgb -> 3 x 0.25; ray 1 (object): component 1 vs rgb -> 1 + 0.25 + 0
    assert float(ComponentRGBLoss()(m, batch, 0, info)) == pytest.approx((0.75 + 1.25) / 12)
    # pseudo-bg only on ray 1: (0.1, 0.0, 0.1)^2 summed = 0.02, over 6 entries
    assert float(PseudoBackgroundLoss()(m, batch, 0, info)) == pytest.approx(0.02 / 6)
    # fg: ray 0 outside mask w 0.05 (0.2)^2, ray 1 inside w 1 (0.3)^2; bg: ray 0 (0.1)^2, ray 1 weight 0
    fg = (0.05 * 0.04 + 0.09) / 2
    bg = 0.01 / 2
    assert float(ComponentOpacityLoss()(m, batch, 0, info)) == pytest.approx(fg + bg)


def test_poly_decay():
    p = PolyDecay(1e-3, 100)
    assert p(0) == 1e-3 and p(50) == pytest.approx(2.5e-4) and p(100) == 0.0


def test_render_views_shapes_and_camera_depth():
    torch.manual_seed(0)
    m = UDCNeRF(_tiny_config())
    cams = orbit_cameras(torch.tensor([30.0]), torch.tensor([0.0]), 2.6, 40.0, 6, 5)
    r = render_views(m, cams, chunk_rays=7)
    assert r.rgb.shape == (1, 5, 6, 3) and r.depth.shape == (1, 5, 6, 1)
    assert r.extras["component_alpha"].shape == (1, 5, 6, 3)
    assert r.extras["components_rgb"].shape == (1, 5, 6, 3, 3)
    r2 = render_views(m, cams, chunk_rays=1000, edits=[Edit.remove(2), Edit.rotate(1, 30.0)])
    assert float(r2.extras["component_alpha"][..., 2].abs().max()) == 0.0
    assert m.training  # restored


def test_paper_yaml_is_the_config_defaults():
    from omegaconf import OmegaConf as OC

    import layerforge

    path = Path(layerforge.__file__).parent / "configs" / "field" / "udc_nerf_codes.yaml"
    cfg = UDCNeRFConfig(**OC.to_container(OC.load(path)))
    assert cfg == UDCNeRFConfig()
    m = UDCNeRF(cfg)
    assert m.fine.codes.weight.shape == (6, 64) and m.fine.fusion.in_features == 256 + 64
    assert m.fine.trunk[2][0].in_features == 256 + 63 and m.fine.dir_encoding.out_dim == 27
    assert not hasattr(m.coarse, "background") and hasattr(m.fine, "foreground")


# ---------------------------------------------------------------- the fit

RES = 40
N_TRAIN, N_TEST = 32, 3
FOV_DEG, DISTANCE = 40.0, 2.6
FLOOR_Z = -0.3
LIGHT_DIR = (0.4, -0.3, 1.0)
BOX_COLOUR, SPHERE_COLOUR, FLOOR_COLOUR = (0.85, 0.25, 0.2), (0.2, 0.35, 0.9), (0.6, 0.6, 0.55)
FIT_CONFIG = dict(
    objects=2, encoding="hashgrid", width=32, code_dim=16, num_samples=32, num_importance=16,
    near=1.2, far=4.2, aabb=((-1.6, -1.6, -0.4), (1.6, 1.6, 0.5)), noise_std=0.0, sigma_bias_init=1.0,
    hashgrid=HashGridConfig(num_levels=6, features_per_level=2, log2_hashmap_size=14, base_resolution=8,
                            max_resolution=32),
)
FIT_STEPS = 300
FIT_RAYS = 256
FIT_LR = 1e-2  # ours: hash grids want a larger lr than the paper's 1e-3 for its PE MLP (poly decay kept)
FIT_THREADS = 1
# Measured (seeds 0, 1, 2; one thread each on the shared 2-core machine, 2026-12-01), 300 steps x
# 256 rays, through the engine and optimise():
#   held-out merged PSNR 19.0 / 20.5 / 22.5 dB (scene branch 20.4 / 21.4 / 24.3 dB; seen
#   training views 23.2 / 23.8 / 26.1 dB), mIoU (bg, box, sphere) 0.47 / 0.86 / 0.51,
#   fit 32-34 s, total 37-39 s.
# References on the same held-out views: all black 7.6 dB, the mean colour 12.0 dB, the
# pseudo-background (floor only) 17.1 dB; everything labelled background scores mIoU 0.27.
# The fit is short (an hour of the paper's schedule is 100 epochs), so the bounds only say
# "it learnt the scene and a decomposition": above every trivial answer, below the worst seed.
FIT_MEASURED = {"psnr": (19.0, 20.5, 22.5), "miou": (0.47, 0.86, 0.51)}
BOUNDS = {"psnr": 18.0, "miou": 0.40}


def _scene():
    box = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    box.apply_translation((-0.3, -0.15, 0.0))
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.28)
    sphere.apply_translation((0.3, 0.25, 0.0))
    floor = trimesh.Trimesh(vertices=[[-1.5, -1.5, FLOOR_Z], [1.5, -1.5, FLOOR_Z], [1.5, 1.5, FLOOR_Z],
                                      [-1.5, 1.5, FLOOR_Z]], faces=[[0, 1, 2], [0, 2, 3]])
    parts = [(floor, FLOOR_COLOUR), (box, BOX_COLOUR), (sphere, SPHERE_COLOUR)]
    vs, fs, cs, off = [], [], [], 0
    for mesh, col in parts:
        vs.append(mesh.vertices)
        fs.append(mesh.faces + off)
        cs.append(np.tile(col, (len(mesh.vertices), 1)))
        off += len(mesh.vertices)
    t = lambda a, dt: torch.as_tensor(np.ascontiguousarray(np.concatenate(a)), dtype=dt)  # noqa: E731
    counts = np.cumsum([0] + [len(p[0].faces) for p in parts])
    return t(vs, torch.float32), t(fs, torch.long), t(cs, torch.float32), counts


def _render(cams, v, f, col, counts):
    out = render_mesh(v, f, cams, vertex_colors=col, light_dir=torch.tensor(LIGHT_DIR), background=0.0)
    rgb = out["rgb"] if isinstance(out, dict) else out.rgb
    fid = rasterize(v, f, cams).face_id
    ids = torch.zeros_like(fid)
    ids[(fid >= counts[1]) & (fid < counts[2])] = 1
    ids[fid >= counts[2]] = 2
    nf = int(counts[1])  # floor only: the pseudo-background
    ps = render_mesh(v[:4], f[:nf], cams, vertex_colors=col[:4], light_dir=torch.tensor(LIGHT_DIR), background=0.0)
    ps = ps["rgb"] if isinstance(ps, dict) else ps.rgb
    return rgb.detach().clamp(0, 1), ids.long(), ps.detach().clamp(0, 1)


def _miou(seg: torch.Tensor, gt: torch.Tensor, classes: int) -> float:
    pred = seg.argmax(-1)
    ious = []
    for k in range(classes):
        inter = ((pred == k) & (gt == k)).sum()
        union = ((pred == k) | (gt == k)).sum()
        if union > 0:
            ious.append(float(inter) / float(union))
    return sum(ious) / len(ious)


def fit_udc(seed: int = 0, run_dir: Path | None = None) -> dict[str, float]:
    """Fit the fast config; return held-out merged PSNR (dB), mIoU (K+1 classes), times (s)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    v, f, col, counts = _scene()
    az = torch.arange(N_TRAIN, dtype=torch.float32) * (360.0 / N_TRAIN)
    el = torch.where(torch.arange(N_TRAIN) % 2 == 0, 25.0, 45.0)
    train = orbit_cameras(el, az, DISTANCE, FOV_DEG, RES, RES)
    test = orbit_cameras(torch.full((N_TEST,), 35.0), torch.tensor([50.0, 170.0, 290.0]), DISTANCE, FOV_DEG, RES, RES)
    rgb_tr, ids_tr, ps_tr = _render(train, v, f, col, counts)
    rgb_te, ids_te, _ = _render(test, v, f, col, counts)
    views = CameraSet(train, rgb_tr, ids_tr)
    model = UDCNeRF(UDCNeRFConfig(**FIT_CONFIG))
    terms = paper_terms()

    def fit(ctx):
        groups = [ParamGroup("all", list(model.parameters()), PolyDecay(FIT_LR, FIT_STEPS), betas=(0.9, 0.99), eps=1e-15)]
        optimise(ctx, model, groups, terms, BalancedRayBatches(views, ps_tr, FIT_RAYS, objects=2),
                 OptimiseConfig(steps=FIT_STEPS, checkpoint_every=FIT_STEPS))

    run_dir = run_dir or Path(tempfile.mkdtemp()) / "run"
    t_fit = time.perf_counter()
    run_one_stage(fit, run_dir, "udc", seed)
    fit_s = time.perf_counter() - t_fit
    out = render_views(model, test, chunk_rays=4096)
    removed = render_views(model, test, chunk_rays=4096, edits=[Edit.remove(1), Edit.remove(2)])
    psnr = lambda a, b: float(-10 * torch.log10(F.mse_loss(a, b)))  # noqa: E731
    _, _, ps_te = _render(test, v, f, col, counts)
    seen = render_views(model, train[:3], chunk_rays=4096)
    return {
        "psnr_train_views": psnr(seen.rgb.clamp(0, 1), rgb_tr[:3]),
        "psnr": psnr(out.rgb.clamp(0, 1), rgb_te),
        "psnr_scene": psnr(out.extras["scene_rgb"].clamp(0, 1), rgb_te),
        "psnr_removed_vs_floor": psnr(removed.rgb.clamp(0, 1), ps_te),
        "miou": _miou(out.extras["segmentation"], ids_te, 3),
        "fit_s": fit_s,
        "total_s": time.perf_counter() - t0,
    }


def test_fit_two_object_scene(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(FIT_THREADS)
    try:
        m = fit_udc(run_dir=tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    msg = ", ".join(f"{k}={v:.3f}" for k, v in m.items())
    assert m["psnr"] >= BOUNDS["psnr"], msg
    assert m["miou"] >= BOUNDS["miou"], msg
    # no wall-time bound here: under another job's load it failed a correct model (61 s vs 60 s);
    # the run's seconds are in the message, and speed is measured by benchmarks/decomp_nerf.py


if __name__ == "__main__":  # measure: python tests/test_udc_nerf.py [seed]
    import sys

    torch.set_num_threads(FIT_THREADS)
    print(fit_udc(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
