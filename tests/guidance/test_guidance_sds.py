"""SDS: exact gradients under an oracle prior, weightings, per-pixel maps, schedules, guards, colour contract."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from layerforge.assets.types import srgb_to_linear
from layerforge.errors import ConfigError, NonFiniteError
from layerforge.models.guidance import SDSConfig, SDSGuidance, visibility_weight_map
from layerforge.models.schedules import schedule_value

S = 8  # latent side of the tiny models


def _guidance(pipe, **cfg) -> SDSGuidance:
    base = dict(prompt="a chair", latent_size=S, device="cpu", dtype="float32", latent_mode="direct",
                guidance_scale=7.5)
    return SDSGuidance({**base, **cfg}, pipe=pipe)


def _with_oracle(g: SDSGuidance, oracle_cls, target: torch.Tensor):
    g.unet = oracle_cls(target, g.alphas_cumprod)
    return g.unet


@pytest.mark.parametrize("weighting", ["dreamfusion", "uniform", "fantasia3d"])
def test_gradient_equals_weighted_noise_residual(tiny_sd_pipe, oracle_cls, weighting):
    torch.manual_seed(1)
    g = _guidance(tiny_sd_pipe, weighting=weighting)
    target = torch.randn(3, 4, S, S)
    oracle = _with_oracle(g, oracle_cls, target)
    images = torch.rand(3, S, S, 4, requires_grad=True)
    t = torch.tensor([50, 400, 900])
    noise = torch.randn(3, 4, S, S)
    out = g(images, timesteps=t, noise=noise)
    out.latents.retain_grad()
    out.loss.backward()

    abar = g.alphas_cumprod[t].view(-1, 1, 1, 1)
    x = images.detach().permute(0, 3, 1, 2) * 2 - 1
    eps_hat = oracle.expected_eps(abar.sqrt() * x + (1 - abar).sqrt() * noise, t)
    w = {"dreamfusion": 1 - abar, "uniform": torch.ones_like(abar), "fantasia3d": abar.sqrt() * (1 - abar)}[weighting]
    expected = w * (eps_hat - noise)
    torch.testing.assert_close(out.latents.grad * 3, expected, rtol=1e-5, atol=1e-6)
    # direct mode maps [0, 1] -> [-1, 1]: the image gradient carries the factor 2
    torch.testing.assert_close(images.grad, 2 * expected.permute(0, 2, 3, 1) / 3, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.weights, w.view(-1))
    assert oracle.calls == 1  # cond and uncond in one batched call
    assert out.logs["loss_sds"] == pytest.approx(0.5 * float((expected ** 2).sum()) / 3, rel=1e-5)


def test_per_pixel_weight_map_scales_gradient(tiny_sd_pipe, oracle_cls):
    torch.manual_seed(2)
    g = _guidance(tiny_sd_pipe, weighting="fantasia3d")
    _with_oracle(g, oracle_cls, torch.randn(2, 4, S, S))
    images = torch.rand(2, S, S, 4)
    t, noise = torch.tensor([300, 600]), torch.randn(2, 4, S, S)
    vis = torch.rand(2, S, S)
    plain = g(images, timesteps=t, noise=noise).grad
    weighted = g(images, timesteps=t, noise=noise, weight_map=visibility_weight_map(vis)).grad
    torch.testing.assert_close(weighted, plain * visibility_weight_map(vis).unsqueeze(1))
    # a map at image resolution is area-averaged onto the latent grid
    big = visibility_weight_map(vis).repeat_interleave(4, 1).repeat_interleave(4, 2)
    torch.testing.assert_close(g(images, timesteps=t, noise=noise, weight_map=big).grad, weighted)


def test_visibility_weight_formula():
    v = torch.tensor([0.0, 0.25, 0.49, 0.5, 0.75, 1.0])
    expected = torch.tensor([20.0, 20 - 38 * 0.25, 20 - 38 * 0.49, 0.1, 0.05, 0.0])
    torch.testing.assert_close(visibility_weight_map(v), expected)


def test_oracle_sds_drives_image_to_target(tiny_sd_pipe, oracle_cls):
    torch.manual_seed(3)
    g = _guidance(tiny_sd_pipe, weighting="dreamfusion", min_step_percent=0.02, max_step_percent=0.98)
    target_image = torch.rand(1, S, S, 4)
    _with_oracle(g, oracle_cls, target_image.permute(0, 3, 1, 2) * 2 - 1)
    image = torch.nn.Parameter(torch.full((1, S, S, 4), 0.5))
    opt = torch.optim.Adam([image], lr=0.02)
    start = float((image.detach() - target_image).abs().max())
    for step in range(300):
        opt.zero_grad()
        g(image, step=step).loss.backward()
        opt.step()
    err = float((image.detach() - target_image).abs().max())
    assert start > 0.3 and err < 0.02, (start, err)


def test_classifier_free_guidance_uses_prompt(tiny_sd_pipe):
    g = _guidance(tiny_sd_pipe)
    x = torch.randn(1, 4, S, S)
    t = torch.tensor([500])
    cond, uncond = g.encode_prompts(["a chair"]), g.encode_prompts([""])
    e1 = g.predict_noise(x, t, cond, uncond, 1.0)
    e0 = g.predict_noise(x, t, cond, uncond, 0.0)
    e3 = g.predict_noise(x, t, cond, uncond, 3.0)
    assert (e1 - e0).abs().max() > 1e-6  # the prompt changes the prediction
    torch.testing.assert_close(e3, e0 + 3 * (e1 - e0), rtol=1e-4, atol=1e-5)


def test_text_embeddings_cached_and_view_dependent(tiny_sd_pipe):
    g = _guidance(tiny_sd_pipe)
    prompts = g.view_prompts("a chair", torch.tensor([10.0, 10.0, 10.0, 75.0]), torch.tensor([0.0, 90.0, 200.0, 0.0]), 4)
    assert prompts == ["a chair, front view", "a chair, side view", "a chair, back view", "a chair, overhead view"]
    emb = g.encode_prompts(prompts)
    assert emb.shape == (4, 16, 16)
    assert not torch.allclose(emb[0], emb[2])
    assert g.encode_prompts(["a chair, front view"]).data_ptr() != emb.data_ptr()
    assert len(g._embedding_cache) == 4


def test_encode_mode_gradients_reach_rgb(tiny_sd_pipe):
    g = _guidance(tiny_sd_pipe, latent_mode="encode")
    rgb = torch.rand(2, 48, 48, 3, requires_grad=True)  # resized to 64x64 before the VAE
    out = g(rgb, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.latents.shape == (2, 4, S, S)
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def test_timestep_schedule_and_clip(tiny_sd_pipe, oracle_cls):
    g = _guidance(tiny_sd_pipe, min_step_percent=[2500, 0.2, 0.02, 5000], max_step_percent=[2500, 0.98, 0.4, 5000],
                  grad_clip=0.01)
    assert g.step_range(0) == (200, 980)
    assert g.step_range(3750) == (110, 690)
    assert g.step_range(10_000) == (20, 400)
    _with_oracle(g, oracle_cls, torch.randn(64, 4, S, S))
    out = g(torch.rand(64, S, S, 4), step=10_000)
    assert out.timesteps.min() >= 20 and out.timesteps.max() <= 400
    assert out.grad.abs().max() <= 0.01 + 1e-7


def test_nan_guards(tiny_sd_pipe, oracle_cls):
    g = _guidance(tiny_sd_pipe)
    bad = torch.rand(1, S, S, 4)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError) as err:
        g(bad)
    assert "\n" not in str(err.value)
    target = torch.zeros(1, 4, S, S)
    target[0, 0, 0, 0] = float("inf")
    _with_oracle(g, oracle_cls, target)
    out = g(torch.rand(1, S, S, 4))
    assert torch.isfinite(out.grad).all() and out.logs["nonfinite_grad"] >= 1


def test_nonfinite_unet_output_is_zeroed_once_and_raises_when_it_persists(tiny_sd_pipe, monkeypatch, caplog):
    """Issue: nan_to_num zeroed every NaN step, so the NaN guard never fired and training ran on zeros."""
    g = _guidance(tiny_sd_pipe)
    assert g.config.max_nonfinite_steps == 3  # documented default
    real_forward = g.unet.forward
    broken = {"on": True}

    def forward(*args, **kwargs):  # the real tiny UNet, its noise prediction NaN while broken
        out = real_forward(*args, **kwargs)
        return SimpleNamespace(sample=torch.full_like(out.sample, float("nan")) if broken["on"] else out.sample)

    monkeypatch.setattr(g.unet, "forward", forward)
    images = torch.rand(1, S, S, 4, requires_grad=True)
    gen = torch.Generator().manual_seed(0)

    caplog.set_level("WARNING", logger="layerforge.guidance")
    out = g(images, step=0, generator=gen)  # one bad step: zeroed (threestudio) and logged
    out.loss.backward()
    assert out.logs["nonfinite_eps"] == 4 * S * S and out.logs["nonfinite_streak"] == 1
    assert float(out.grad.abs().max()) == 0.0 and float(images.grad.abs().max()) == 0.0
    assert any("NaN/Inf at step 0" in r.getMessage() for r in caplog.records)
    assert g(images, step=1, generator=gen).logs["nonfinite_streak"] == 2
    broken["on"] = False  # a clean step resets the count
    clean = g(images, step=2, generator=gen)
    assert clean.logs["nonfinite_streak"] == 0 and clean.logs["nonfinite_eps"] == 0 and clean.grad.abs().max() > 0
    broken["on"] = True
    g(images, step=3, generator=gen)
    g(images, step=4, generator=gen)
    with pytest.raises(NonFiniteError) as err:
        g(images, step=5, generator=gen)  # the third bad step in a row
    msg = str(err.value)
    assert "\n" not in msg and "3 steps in a row" in msg and "step 5" in msg
    assert "guidance.dtype=float32" in msg and "max_nonfinite_steps" in msg


def test_max_nonfinite_steps_is_configurable(tiny_sd_pipe, oracle_cls):
    g = _guidance(tiny_sd_pipe, max_nonfinite_steps=1)
    target = torch.zeros(1, 4, S, S)
    target[0, 0, 0, 0] = float("inf")  # eps_hat is -inf at one latent pixel
    _with_oracle(g, oracle_cls, target)
    with pytest.raises(NonFiniteError, match="1 step in a row"):
        g(torch.rand(1, S, S, 4))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="guidance.max_nonfinite_steps"):
            SDSConfig(max_nonfinite_steps=bad)


def test_config_errors():
    with pytest.raises(ConfigError, match="guidance.weighting"):
        SDSGuidance({"weighting": "sjc"}, pipe=object())
    with pytest.raises(ConfigError, match="unknown key guidance.guidance_scal"):
        SDSGuidance({"guidance_scal": 7.5}, pipe=object())
    with pytest.raises(ConfigError, match="min_step_percent"):
        SDSGuidance({"min_step_percent": [1, 2]}, pipe=object())


def test_schedule_value():
    assert schedule_value(0.5, 10) == 0.5
    spec = [2500, 0.98, 0.40, 5000]
    assert schedule_value(spec, 0) == 0.98 and schedule_value(spec, 2500) == 0.98
    assert math.isclose(schedule_value(spec, 3750), 0.69)
    assert schedule_value(spec, 5000) == 0.40 and schedule_value(spec, 9999) == 0.40
    assert schedule_value([0.0, 1.0, 10], 5) == 0.5
    assert schedule_value([0, 100, 200, 10], 5) == 150 and isinstance(schedule_value([0, 100, 200, 10], 5), int)


def test_v_prediction_models_are_converted_to_eps(tiny_sd_pipe, oracle_cls):
    g = _guidance(tiny_sd_pipe, weighting="uniform")
    target = torch.randn(2, 4, S, S)
    oracle = oracle_cls(target, g.alphas_cumprod)

    class VOracle(torch.nn.Module):  # v = sqrt(abar) eps - sqrt(1 - abar) x0 for the same exact prior
        dtype = torch.float32

        def forward(self, x_t, t, encoder_hidden_states=None, **_):
            a = g.alphas_cumprod[t].view(-1, 1, 1, 1)
            x0 = target.repeat(2, 1, 1, 1)
            return type("Out", (), {"sample": a.sqrt() * oracle.expected_eps(x_t, t) - (1 - a).sqrt() * x0})()

    images, t, noise = torch.rand(2, S, S, 4), torch.tensor([100, 800]), torch.randn(2, 4, S, S)
    g.unet = oracle
    eps_grad = g(images, timesteps=t, noise=noise).grad
    g.unet, g.prediction_type = VOracle(), "v_prediction"
    torch.testing.assert_close(g(images, timesteps=t, noise=noise).grad, eps_grad, rtol=1e-4, atol=1e-5)


def _spy_vae(monkeypatch, vae, name: str) -> list[torch.Tensor]:
    """Record the tensor each ``vae.<name>`` call receives (encode) or returns (decode)."""
    seen: list[torch.Tensor] = []
    real = getattr(vae, name)

    def call(x, *args, **kwargs):
        out = real(x, *args, **kwargs)
        seen.append((x if name == "encode" else out.sample).detach().clone())
        return out

    monkeypatch.setattr(vae, name, call)
    return seen


def test_encode_mode_feeds_the_vae_srgb(tiny_sd_pipe, oracle_cls, monkeypatch):
    """Contract: encode-mode images are linear; the VAE receives their sRGB encoding in [-1, 1]
    (before the fix it received the linear values as if they were sRGB)."""
    g = _guidance(tiny_sd_pipe, latent_mode="encode")
    _with_oracle(g, oracle_cls, torch.zeros(2, 4, S, S))
    seen = _spy_vae(monkeypatch, g.vae, "encode")
    codes = torch.randint(0, 256, (2, 8 * S, 8 * S, 3), generator=torch.Generator().manual_seed(0))
    linear = torch.from_numpy(srgb_to_linear(codes.numpy() / 255.0)).requires_grad_(True)  # VAE size: no resize
    out = g(linear, generator=torch.Generator().manual_seed(0))
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], (codes / 255.0 * 2 - 1).permute(0, 3, 1, 2).float(), rtol=0, atol=1e-5)
    out.loss.backward()  # the encoding is differentiable, also at 0 and 1
    assert torch.isfinite(linear.grad).all() and (linear.grad != 0).float().mean() > 0.5


def test_encode_mode_gradient_through_the_srgb_encoding():
    """The sRGB encoding's chain rule: d/dx of the VAE input is 2 * d srgb / d linear."""
    from layerforge.assets.types import linear_to_srgb

    x = torch.tensor([0.0, 0.002, 0.2, 0.5, 1.0], requires_grad=True)
    (linear_to_srgb(x) * 2 - 1).sum().backward()
    slope = torch.where(x.detach() <= 0.0031308, torch.tensor(12.92),
                        1.055 / 2.4 * x.detach().clamp_min(0.0031308) ** (1 / 2.4 - 1))
    torch.testing.assert_close(x.grad, 2 * slope)


def test_decode_latents_returns_linear(tiny_sd_pipe, monkeypatch):
    g = _guidance(tiny_sd_pipe, latent_mode="encode")
    seen = _spy_vae(monkeypatch, g.vae, "decode")
    latents = torch.randn(2, 4, S, S, generator=torch.Generator().manual_seed(0))
    images = g.decode_latents(latents)
    srgb = ((seen[0] + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert images.shape == (2, 8 * S, 8 * S, 3) and images.dtype == torch.float32
    torch.testing.assert_close(images, torch.from_numpy(srgb_to_linear(srgb.numpy())), rtol=0, atol=1e-5)
    assert (images - srgb).abs().max() > 1e-2


def test_direct_mode_is_not_colour_converted(tiny_sd_pipe):
    g = _guidance(tiny_sd_pipe)
    normals = torch.rand(1, S, S, 4)
    torch.testing.assert_close(g.images_to_latents(normals), normals.permute(0, 3, 1, 2) * 2 - 1)
