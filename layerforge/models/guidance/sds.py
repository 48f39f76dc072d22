"""Score Distillation Sampling (SDS) with a Stable Diffusion 1.x/2.x prior.

Per step, for latents x (from a rendered image, through the VAE or used directly):
t ~ U[t_min, t_max], eps ~ N(0, I), x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps, the UNet
predicts eps_hat with classifier-free guidance, and the SDS gradient on x is
``g = w(t) (eps_hat - eps)`` (times an optional per-pixel weight map, then NaN-guarded and
clipped). It is applied through the surrogate loss ``0.5 * ||x - sg(x - g)||^2 / B``, whose
gradient with respect to x is exactly ``g / B`` (the batch mean of per-sample SDS).

NaN guard: a step whose noise prediction eps_hat or gradient g holds NaN/Inf has those
values zeroed (threestudio's ``nan_to_num``), logged, and counted; after
``SDSConfig.max_nonfinite_steps`` such steps in a row the guard raises
:class:`~layerforge.errors.NonFiniteError` instead of letting the optimisation run on with a
prior that has stopped answering (typically fp16 overflow in the UNet).

Colour contract: RGB images handed in (``latent_mode: encode``) and handed back
(:meth:`SDSGuidance.decode_latents`) are linear in [0, 1], like every image in our code; the VAE
was trained on sRGB in [-1, 1], so :meth:`SDSGuidance.encode_images` sRGB-encodes right before
``vae.encode`` (differentiably) and ``decode_latents`` decodes to linear right after
``vae.decode``. ``latent_mode: direct`` images (normals, masks) are data, not colour: no
conversion.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from layerforge.assets.types import linear_to_srgb, srgb_to_linear
from layerforge.errors import ConfigError, NonFiniteError
from layerforge.models.guidance.loading import (
    LoadOptions,
    config_from_mapping,
    load_pipeline,
)
from layerforge.models.schedules import ScheduleValue, schedule_value, validate_schedule

log = logging.getLogger("layerforge.guidance")

WEIGHTINGS = ("dreamfusion", "uniform", "fantasia3d")
# Consecutive non-finite SDS steps tolerated before raising. One bad step (an fp16 overflow at
# an extreme t) is noise that threestudio zeroes and moves past; three in a row means the
# prior keeps failing, and every further step would train on a zero gradient.
DEFAULT_MAX_NONFINITE_STEPS = 3


def sds_weighting(alphas_cumprod_t: torch.Tensor, weighting: str) -> torch.Tensor:
    """w(t) from abar_t ([B], any float dtype).

    dreamfusion: 1 - abar (DreamFusion, GALA); uniform: 1;
    fantasia3d: sqrt(abar) (1 - abar) (Fantasia3D, DP-Recon geometry).
    """
    if weighting == "dreamfusion":
        return 1.0 - alphas_cumprod_t
    if weighting == "uniform":
        return torch.ones_like(alphas_cumprod_t)
    if weighting == "fantasia3d":
        return alphas_cumprod_t.sqrt() * (1.0 - alphas_cumprod_t)
    raise ConfigError(f"guidance.weighting={weighting!r} is unknown", f"use one of {', '.join(WEIGHTINGS)}")


# DP-Recon's geometry-stage SDS weighting (code/threestudio/models/guidance/
# stable_diffusion_guidance.py compute_grad_sds, with code/geometry.yaml): pixels at or above
# visibility 0.5 weigh at most 0.1, pixels below from 1 up to 20 (the guidance class's own
# default is 30; geometry.yaml sets 20).
SDS_VIS_THRESHOLD = 0.5
SDS_VIS_REGION_MAX = 0.1
SDS_NONE_VIS_REGION_MAX = 20.0


def visibility_weight_map(visibility: torch.Tensor) -> torch.Tensor:
    """DP-Recon's visibility-guided per-pixel SDS weight.

    ``visibility``: any shape, rendered visibility in [0, 1] (1 = well seen by input views).
    Returns the same shape and dtype: ``0.1 (1 - (v - 0.5) / 0.5)`` for v >= 0.5 (well-observed
    pixels get at most 0.1, falling to 0 at v = 1) and ``20 - 38 v`` for v < 0.5 (unseen pixels
    get up to 20, so the prior fills in what the views never saw). Discontinuous at 0.5 (1 from
    below, 0.1 at and above), as the authors'.
    """
    v = visibility
    seen = SDS_VIS_REGION_MAX * (1.0 - (v - SDS_VIS_THRESHOLD) / (1.0 - SDS_VIS_THRESHOLD))
    unseen = SDS_NONE_VIS_REGION_MAX - v / SDS_VIS_THRESHOLD * (SDS_NONE_VIS_REGION_MAX - 1.0)
    return torch.where(v >= SDS_VIS_THRESHOLD, seen, unseen)


def sds_surrogate_loss(latents: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Scalar loss whose gradient w.r.t. ``latents`` ([B, C, h, w]) is ``grad / B``."""
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents, target, reduction="sum") / latents.shape[0]


@dataclasses.dataclass
class SDSConfig(LoadOptions):
    """Options of :class:`SDSGuidance` (Hydra: ``configs/guidance/*.yaml``).

    Schedule values (``[start_step, start_val, end_val, end_step]``, see
    :mod:`layerforge.models.schedules`) are allowed for every scalar that anneals.
    """

    pretrained_model_name_or_path: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    view_dependent_prompting: bool = True
    front_threshold_deg: float = 45.0  # |azimuth| below: "front view"
    back_threshold_deg: float = 45.0  # |azimuth| above 180 - this: "back view"
    overhead_threshold_deg: float = 60.0  # elevation above: "overhead view"
    guidance_scale: ScheduleValue = 100.0
    min_step_percent: ScheduleValue = 0.02
    max_step_percent: ScheduleValue = 0.98
    weighting: str = "dreamfusion"
    grad_clip: ScheduleValue | None = None
    latent_mode: str = "encode"  # encode: RGB through the VAE; direct: 4-channel image is the latent
    latent_size: int = 64
    # Calls in a row whose eps_hat or gradient held NaN/Inf before NonFiniteError; fewer are
    # zeroed and logged (see the module docstring).
    max_nonfinite_steps: int = DEFAULT_MAX_NONFINITE_STEPS

    def __post_init__(self) -> None:
        for name in ("guidance_scale", "min_step_percent", "max_step_percent"):
            validate_schedule(getattr(self, name), f"guidance.{name}")
        if isinstance(self.max_nonfinite_steps, bool) or not isinstance(self.max_nonfinite_steps, int) \
                or self.max_nonfinite_steps < 1:
            raise ConfigError(f"guidance.max_nonfinite_steps={self.max_nonfinite_steps!r} is invalid",
                              f"use a whole number >= 1 (default {DEFAULT_MAX_NONFINITE_STEPS})")
        if self.grad_clip is not None:
            validate_schedule(self.grad_clip, "guidance.grad_clip")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"guidance.weighting={self.weighting!r} is unknown", f"use one of {', '.join(WEIGHTINGS)}")
        if self.latent_mode not in ("encode", "direct"):
            raise ConfigError(f"guidance.latent_mode={self.latent_mode!r} is unknown", "use encode or direct")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | Any | None) -> "SDSConfig":
        return config_from_mapping(cls, cfg)



@dataclasses.dataclass
class SDSOutput:
    """What one SDS evaluation returns.

    ``loss``: scalar, differentiable; d loss / d latents = grad / B.
    ``grad``: [B, 4, h, w] detached SDS gradient w(t)(eps_hat - eps) (after map, guard, clip).
    ``latents``: [B, 4, h, w] the (differentiable) latents the loss was taken on.
    ``timesteps``: [B] int64; ``weights``: [B] w(t).
    ``logs``: scalars to log (loss, grad norm, t, w, step range; ``nonfinite_eps`` and
    ``nonfinite_grad``: NaN/Inf values found in eps_hat and in the gradient this step, zeroed;
    ``nonfinite_streak``: consecutive steps with any, see ``SDSConfig.max_nonfinite_steps``).
    """

    loss: torch.Tensor
    grad: torch.Tensor
    latents: torch.Tensor
    timesteps: torch.Tensor
    weights: torch.Tensor
    logs: dict[str, float]


class SDSGuidance:
    """SDS with a Stable-Diffusion-style prior (UNet2DConditionModel + VAE + CLIP text encoder).

    Build with :meth:`from_config` (loads through :func:`load_pipeline`) or pass an already
    loaded diffusers pipeline (anything with ``unet``, ``vae``, ``text_encoder``,
    ``tokenizer``, ``scheduler``). The prior's weights are frozen; gradients flow only into the
    images (or latents) handed to :meth:`__call__`.

    State: :attr:`nonfinite_streak` counts the calls in a row whose noise prediction or
    gradient held NaN/Inf (reset by a clean call); it reaching ``max_nonfinite_steps`` raises.
    """

    config_class = SDSConfig

    def __init__(self, config: SDSConfig | Mapping[str, Any] | None, pipe: Any | None = None) -> None:
        self.config = config if isinstance(config, self.config_class) else self.config_class.from_mapping(config)
        if pipe is None:
            pipe = load_pipeline(self.config.pretrained_model_name_or_path, options=self.config.load_options())
        self.pipe = pipe
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.text_encoder = pipe.text_encoder
        self.tokenizer = pipe.tokenizer
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        sched = pipe.scheduler
        self.prediction_type = sched.config.get("prediction_type", "epsilon")
        if getattr(sched, "alphas_cumprod", None) is not None:
            abar = torch.as_tensor(sched.alphas_cumprod)
        else:
            abar = torch.cumprod(1.0 - torch.as_tensor(sched.betas), 0)
        self.alphas_cumprod = abar.to(self.device, torch.float32)
        self.num_train_timesteps = int(abar.shape[0])
        self._embedding_cache: dict[str, torch.Tensor] = {}
        self.nonfinite_streak = 0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Any) -> "SDSGuidance":
        return cls(cls.config_class.from_mapping(cfg))

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings [N, L, D] (L = tokenizer max length) for ``prompts``; cached per string."""
        missing = sorted({p for p in prompts if p not in self._embedding_cache})
        if missing:
            tokens = self.tokenizer(list(missing), padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
            emb = self.text_encoder(tokens.input_ids.to(self.text_encoder.device))[0]
            for p, e in zip(missing, emb):
                self._embedding_cache[p] = e.to(self.device, self.dtype)
        return torch.stack([self._embedding_cache[p] for p in prompts])

    def view_prompts(self, prompt: str, elevation_deg: torch.Tensor | None, azimuth_deg: torch.Tensor | None,
                     batch_size: int) -> list[str]:
        """Per-sample prompts with ", front view" / ", side view" / ", back view" / ", overhead view".

        Azimuth in degrees, 0 = camera in front of the object, any range (wrapped to
        (-180, 180]); elevation in degrees, positive above the horizon.
        """
        cfg = self.config
        if not cfg.view_dependent_prompting or elevation_deg is None or azimuth_deg is None:
            return [prompt] * batch_size
        az = (azimuth_deg.detach().float().cpu().reshape(-1) + 180.0) % 360.0 - 180.0
        el = elevation_deg.detach().float().cpu().reshape(-1)
        out = []
        for a, e in zip(az.tolist(), el.tolist()):
            if e > cfg.overhead_threshold_deg:
                view = "overhead"
            elif abs(a) < cfg.front_threshold_deg:
                view = "front"
            elif abs(a) > 180.0 - cfg.back_threshold_deg:
                view = "back"
            else:
                view = "side"
            out.append(f"{prompt}, {view} view")
        if len(out) != batch_size:
            raise ConfigError(f"got {len(out)} camera angles for a batch of {batch_size}", "pass one angle per image")
        return out

    # --------------------------------------------------------------- latents
    def encode_images(self, rgb: torch.Tensor) -> torch.Tensor:
        """VAE latents [B, 4, s, s] (scaled) of ``rgb`` [B, 3, H, W] linear RGB in [0, 1]; differentiable.

        The images are resized (bilinear, in linear space) to ``latent_size * vae_scale_factor``
        first, then sRGB-encoded and mapped to the VAE's [-1, 1].
        """
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = self.config.latent_size * factor
        x = rgb
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        x = (linear_to_srgb(x) * 2.0 - 1.0).to(self.vae.dtype)  # the model boundary: sRGB in [-1, 1]
        posterior = self.vae.encode(x).latent_dist
        return (posterior.sample() * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [B, H, W, 3] float32 linear RGB in [0, 1] from scaled latents [B, 4, h, w] (for previews)."""
        x = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        srgb = ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)
        return srgb_to_linear(srgb)  # the VAE decodes sRGB

    def images_to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] images -> [B, 4, s, s] float32 latents.

        encode mode: C = 3, linear RGB in [0, 1], sRGB-encoded and through the VAE
            (:meth:`encode_images`).
        direct mode: C = 4 (e.g. normal in [0, 1] + mask), resized to s x s and mapped to [-1, 1]
            as is, no colour conversion (DP-Recon / GALA geometry SDS).
        """
        if images.ndim != 4:
            raise ValueError(f"images must be [B, H, W, C], got shape {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float()
        s = self.config.latent_size
        if self.config.latent_mode == "direct":
            if x.shape[1] != 4:
                raise ValueError(f"latent_mode=direct needs 4-channel images, got {x.shape[1]}")
            if x.shape[-2:] != (s, s):
                x = F.interpolate(x, (s, s), mode="bilinear", align_corners=False)
            return x * 2.0 - 1.0
        if x.shape[1] != 3:
            raise ValueError(f"latent_mode=encode needs RGB images, got {x.shape[1]} channels")
        return self.encode_images(x)

    # ----------------------------------------------------------------- noise
    def _model_eps(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        """Raw UNet output for the stacked [cond; uncond] batch (subclasses add conditioning)."""
        return self.unet(x, t, encoder_hidden_states=emb).sample

    @torch.no_grad()
    def predict_noise(self, latents_noisy: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                      guidance_scale: float, extra: dict[str, Any] | None = None) -> torch.Tensor:
        """Classifier-free-guided eps_hat [B, 4, h, w] float32 for x_t [B, 4, h, w] at timesteps t [B]."""
        x_in = torch.cat([latents_noisy, latents_noisy]).to(self.dtype)
        t_in = torch.cat([t, t])
        out = self._model_eps(x_in, t_in, torch.cat([cond, uncond]), extra or {}).float()
        if self.prediction_type == "v_prediction":
            abar = self.alphas_cumprod[t_in].view(-1, 1, 1, 1)
            out = abar.sqrt() * out + (1.0 - abar).sqrt() * torch.cat([latents_noisy, latents_noisy]).float()
        eps_cond, eps_uncond = out.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    def step_range(self, step: int) -> tuple[int, int]:
        """(min_step, max_step) integer timesteps at training step ``step``."""
        lo = schedule_value(self.config.min_step_percent, step)
        hi = schedule_value(self.config.max_step_percent, step)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"guidance step range [{lo}, {hi}] at step {step} is invalid",
                              "keep 0 <= min_step_percent <= max_step_percent <= 1")
        n = self.num_train_timesteps
        return int(round(n * lo)), min(int(round(n * hi)), n - 1)

    def __call__(
        self,
        images: torch.Tensor,
        *,
        step: int = 0,
        elevation_deg: torch.Tensor | None = None,
        azimuth_deg: torch.Tensor | None = None,
        weight_map: torch.Tensor | None = None,
        prompt: str | None = None,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **extra: Any,
    ) -> SDSOutput:
        """SDS loss for a batch of rendered images.

        images: [B, H, W, C] (see :meth:`images_to_latents`: linear RGB in encode mode), requires grad.
        step: training step, for the schedules (t range, guidance scale, clip).
        elevation_deg, azimuth_deg: [B] camera angles for view-dependent prompts (optional).
        weight_map: [B, H', W'] or [B, H', W', 1] per-pixel weights (e.g.
            :func:`visibility_weight_map`); resized to the latent grid (area average when
            shrinking) unless already that size.
        prompt: overrides ``config.prompt``.
        timesteps [B] int / noise [B, 4, h, w]: fixed instead of sampled (tests, ablations).
        """
        if not torch.isfinite(images).all():
            raise NonFiniteError("SDS input images contain NaN/Inf",
                                 "lower the learning rate or check the renderer output before guidance")
        cfg = self.config
        latents = self.images_to_latents(images)
        b = latents.shape[0]
        min_step, max_step = self.step_range(step)
        if timesteps is None:
            timesteps = torch.randint(min_step, max_step + 1, (b,), generator=generator,
                                      device=generator.device if generator is not None else "cpu")
        timesteps = timesteps.to(self.device, torch.long)
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator,
                                device=generator.device if generator is not None else "cpu")
        noise = noise.to(self.device, torch.float32)
        abar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        with torch.no_grad():
            latents_noisy = abar.sqrt() * latents.detach() + (1.0 - abar).sqrt() * noise
            prompts = self.view_prompts(cfg.prompt if prompt is None else prompt, elevation_deg, azimuth_deg, b)
            cond = self.encode_prompts(prompts)
            uncond = self.encode_prompts([cfg.negative_prompt] * b)
            eps_hat = self.predict_noise(latents_noisy, timesteps, cond, uncond,
                                         float(schedule_value(cfg.guidance_scale, step)), extra)
            w = sds_weighting(abar.view(-1), cfg.weighting)
            nonfinite_eps = int((~torch.isfinite(eps_hat)).sum())
            grad = w.view(-1, 1, 1, 1) * (eps_hat - noise)
            if weight_map is not None:
                grad = grad * self._latent_weight_map(weight_map, latents.shape)
            nonfinite = int((~torch.isfinite(grad)).sum())
            self._guard_nonfinite(nonfinite_eps, nonfinite, step)
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            if cfg.grad_clip is not None:
                clip = float(schedule_value(cfg.grad_clip, step))
                grad = grad.clamp(-clip, clip)
        loss = sds_surrogate_loss(latents, grad)
        logs = {
            "loss_sds": float(loss.detach()),
            "grad_norm": float(grad.norm()),
            "t_mean": float(timesteps.float().mean()),
            "w_mean": float(w.mean()),
            "min_step": float(min_step),
            "max_step": float(max_step),
            "nonfinite_eps": float(nonfinite_eps),
            "nonfinite_grad": float(nonfinite),
            "nonfinite_streak": float(self.nonfinite_streak),
        }
        return SDSOutput(loss=loss, grad=grad, latents=latents, timesteps=timesteps, weights=w, logs=logs)

    def _guard_nonfinite(self, nonfinite_eps: int, nonfinite_grad: int, step: int) -> None:
        """Count a step with NaN/Inf in eps_hat or the gradient; raise after too many in a row.

        A clean step resets :attr:`nonfinite_streak`. A bad one is logged (its values are zeroed
        by the caller); the ``max_nonfinite_steps``-th bad one in a row raises NonFiniteError.
        """
        if not (nonfinite_eps or nonfinite_grad):
            self.nonfinite_streak = 0
            return
        self.nonfinite_streak += 1
        limit = self.config.max_nonfinite_steps
        if self.nonfinite_streak >= limit:
            steps = f"{self.nonfinite_streak} step{'s' if self.nonfinite_streak > 1 else ''}"
            raise NonFiniteError(
                f"SDS noise prediction or gradient was NaN/Inf for {steps} in a row (step {step}, "
                f"{nonfinite_eps} bad values in eps_hat, {nonfinite_grad} in the gradient)",
                "run the prior in float32 (guidance.dtype=float32) or lower the learning rate "
                "(raise guidance.max_nonfinite_steps only to tolerate longer bursts)",
            )
        log.warning("SDS: NaN/Inf at step %d (%d values in eps_hat, %d in the gradient) zeroed; "
                    "%d such step(s) in a row, NonFiniteError at %d", step, nonfinite_eps, nonfinite_grad,
                    self.nonfinite_streak, limit)

    def _latent_weight_map(self, weight_map: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        m = weight_map.detach().float().to(self.device)
        if m.ndim == 4:
            m = m[..., 0]
        m = m.unsqueeze(1)
        if m.shape[-2:] != shape[-2:]:
            shrinking = m.shape[-1] > shape[-1]
            m = F.interpolate(m, shape[-2:], mode="area" if shrinking else "bilinear",
                              **({} if shrinking else {"align_corners": False}))
        return m

