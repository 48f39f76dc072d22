"""UDC-NeRF's loss terms (``models/losses.py`` of W-Ted/UDC-NeRF) as LossTerm objects.

Every term reads a batch of :class:`~.sampling.BalancedRayBatches`: ``origins`` /
``directions`` [R, 3], ``rgb`` [R, 3] linear, ``instance`` [R] long (0 background, k object
k, -1 ignore), ``pseudo_background`` [R, 3] (inpainted background colour) and ``seed``; the
terms of one step share one model forward (:func:`udc_forward`, cached as ``info["udc"]``).
Rays with instance -1 are left out of every term (the paper's ``valid_mask``).

Weights (config/toydesk2.yml ``loss:``) and forms, per term's docstring:

====================  ===================================  ======
term                  paper class                          weight
====================  ===================================  ======
scene_rgb             ColorLoss_Guidance (coarse + fine)   10
component_rgb         ColorLoss_Unmasked                   30
pseudo_background     ColorLoss_Unmasked_Ps                1
instance_rgb          ColorLoss_Fused                      10
merged_rgb            ColorLoss_Merged                     10
component_opacity     OpacityLoss (fg 1 / bg 0.05)         10
bg_suppression        RegLoss_ModiSigma (target 1e-5)      0.001
====================  ===================================  ======
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from layerforge.models.optimisation import PaperTerm, batch_generator
from layerforge.models.schedules import ScheduleValue

from .model import UDCNeRF

__all__ = [
    "udc_forward",
    "SceneRGBLoss",
    "ComponentRGBLoss",
    "PseudoBackgroundLoss",
    "InstanceRGBLoss",
    "MergedRGBLoss",
    "ComponentOpacityLoss",
    "BackgroundSuppressionLoss",
    "paper_terms",
    "PAPER_WEIGHTS",
    "OPACITY_FG_WEIGHT",
    "OPACITY_BG_WEIGHT",
    "SUPPRESSION_TARGET",
]

# config/toydesk2.yml, loss section.
PAPER_WEIGHTS = {
    "scene_rgb": 10.0,  # color_loss_guidance_weight
    "component_rgb": 30.0,  # color_loss_unmasked_weight
    "pseudo_background": 1.0,  # color_loss_unmasked_ps_weight
    "instance_rgb": 10.0,  # color_loss_fused_weight
    "merged_rgb": 10.0,  # color_loss_merged_weight
    "component_opacity": 10.0,  # opacity_loss_weight
    "bg_suppression": 0.001,  # reg_loss_modisigam_weight
}
# toydesk2.yml ``mask_rebalance_strategy: fg_bg_reweight``, fg_weight 1.0, bg_weight 0.05
# (a foreground component's opacity: weight 1 inside its mask, 0.05 outside).
OPACITY_FG_WEIGHT = 1.0
OPACITY_BG_WEIGHT = 0.05
# losses.py RegLoss_ModiSigma: ``self.target = 1e-5``.
SUPPRESSION_TARGET = 1e-5


UDC_SALT = 17  # batch_generator salt of the shared model forward


def udc_forward(model: UDCNeRF, batch: dict[str, Any], info: dict[str, Any]) -> dict[str, Tensor]:
    """The batch's rays through ``model`` once per step (randomness from the batch seed)."""
    if "udc" not in info:
        info["udc"] = model(batch["origins"], batch["directions"], batch_generator(batch, UDC_SALT))
    return info["udc"]


def _valid(batch: dict[str, Any]) -> Tensor:
    return batch["instance"] >= 0


def _onehot(batch: dict[str, Any], components: int) -> Tensor:
    """[R, C] float one-hot of the instance ids (rows of ignored rays are zero)."""
    ids = batch["instance"]
    return F.one_hot(ids.clamp(0, components - 1), components).float() * (ids >= 0)[:, None].float()


class _Term(PaperTerm):
    """A UDC-NeRF term (weights: :data:`PAPER_WEIGHTS`)."""

    paper_weights = PAPER_WEIGHTS


class SceneRGBLoss(_Term):
    """``mse(coarse scene rgb) + mse(fine scene rgb)`` against the observed colour."""

    key = "scene_rgb"

    def loss(self, model: UDCNeRF, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        out, v = udc_forward(model, batch, info), _valid(batch)
        gt = batch["rgb"][v]
        return F.mse_loss(out["coarse_rgb"][v], gt) + F.mse_loss(out["rgb"][v], gt)


class ComponentRGBLoss(_Term):
    """Each component's render against the colour masked to its instance.

    ``mean_{r, c, k} m_rk (m_rk gt_rc - rgb_rkc)^2`` over all R x 3 x (K+1) entries (so the
    mean counts pixels outside a mask as zero error, as the paper's ``.mean()``).
    """

    key = "component_rgb"

    def loss(self, model: UDCNeRF, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        out, v = udc_forward(model, batch, info), _valid(batch)
        rgb = out["components_rgb"][v]  # [R, C, 3]
        m = _onehot(batch, model.cfg.components)[v][..., None]  # [R, C, 1]
        return (m * (m * batch["rgb"][v][:, None] - rgb) ** 2)[:, : model.cfg.components].mean()


class PseudoBackgroundLoss(_Term):
    """The background component against the inpainted colour inside the object masks.

    ``mean_{r, c} o_r (o_r ps_rc - rgb_r0c)^2``, ``o_r`` = 1 where the pixel is not
    background (the paper's ``~instance_mask[:, 0]``).
    """

    key = "pseudo_background"

    def loss(self, model: UDCNeRF, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        out, v = udc_forward(model, batch, info), _valid(batch)
        o = (batch["instance"][v] != 0).float()[:, None]
        return (o * (o * batch["pseudo_background"][v] - out["components_rgb"][v][:, 0]) ** 2).mean()


class InstanceRGBLoss(_Term):
    """``mse`` of the instance composition (the Gumbel one-hot field) against the colour."""

    key = "instance_rgb"

    def loss(self, model: UDCNeRF, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        out, v = udc_forward(model, batch, info), _valid(batch)
        return F.mse_loss(out["instance_rgb"][v], batch["rgb"][v])


class MergedRGBLoss(_Term):
    """``mse`` of the merged field ((scene + instance) / 2) against the colour."""

    key = "merged_rgb"

    def loss(self, model: UDCNeRF, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        out, v = udc_forward(model, batch, info), _valid(batch)
        return F.mse_loss(out["merged_rgb"][v], batch["rgb"][v])


class ComponentOpacityLoss(_Term):
    """Per-component opacity against the instance masks (``OpacityLoss``).

    Foreground k: ``mean_{r, k>=1} w_rk (clamp(a_rk, 0, 1) - m_rk)^2`` with ``w`` =
    :data:`OPACITY_FG_WEIGHT` inside the mask, :data:`OPACITY_BG_WEIGHT` outside. Background:
    ``mean_r m_r0 (clamp(a_r0, 0, 1) - 1)^2``, only on background pixels (the paper zeroes the
    background weight's minimum, i.e. everywhere an object covers the background).
    """

    key = "component_opacity"

    def loss(self, model: UDCNeRF, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        out, v = udc_forward(model, batch, info), _valid(batch)
        c = model.cfg.components
        a = out["component_alpha"][v][:, :c, 0].clamp(0.0, 1.0)  # [R, C]
        m = _onehot(batch, c)[v]
        w_fg = torch.where(m[:, 1:] > 0, OPACITY_FG_WEIGHT, OPACITY_BG_WEIGHT)
        fg = (w_fg * (a[:, 1:] - m[:, 1:]) ** 2).mean()
        bg = (m[:, 0] * (a[:, 0] - m[:, 0]) ** 2).mean()
        return fg + bg


class BackgroundSuppressionLoss(_Term):
    """``mean (relu(sigma_bg) - 1e-5)^2`` over the sample points where a foreground won the blocking draw."""

    key = "bg_suppression"

    def loss(self, model: UDCNeRF, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        out = udc_forward(model, batch, info)
        sig = out["bg_sigma"][out["blocked"] & _valid(batch)[:, None]]
        if sig.numel() == 0:
            return out["bg_sigma"].sum() * 0.0
        info["log"]["blocked_fraction"] = float(out["blocked"].float().mean())
        return ((torch.relu(sig) - SUPPRESSION_TARGET) ** 2).mean()


def paper_terms(weights: dict[str, ScheduleValue] | None = None) -> list[_Term]:
    """All seven terms at the paper's weights (``weights`` overrides by term name)."""
    w = dict(weights or {})
    return [cls(w.get(cls.key)) for cls in (SceneRGBLoss, ComponentRGBLoss, PseudoBackgroundLoss, InstanceRGBLoss,
                                            MergedRGBLoss, ComponentOpacityLoss, BackgroundSuppressionLoss)]
