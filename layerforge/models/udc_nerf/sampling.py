"""UDC-NeRF's ray sampler and learning-rate decay.

- :class:`BalancedRayBatches`: the paper's ``sample_type: two_category`` with
  ``forced_p: [0.7, 0.3]`` (train_udc.py ``train_dataloader``): every background pixel is
  drawn with the same probability, every foreground pixel with the same, and the two
  categories get 70% / 30% of the draws (with replacement, ``WeightedRandomSampler``). The
  foreground is the instance masks as given, not dilated (``erode_instance_mask: false``; the
  23x23 dilation applies to the inpainting masks only). We draw the exact counts per step
  (``round(0.3 R)`` foreground rays) instead of per-ray Bernoulli draws.
- :class:`PolyDecay`: the paper's ``lr_scheduler: poly``, ``lr = lr0 (1 - step/total)^2`` (a group's lr function)
  (per epoch there, per step here), as a policy, because schedule values are linear.
"""

from __future__ import annotations


import torch
from torch import Tensor

from layerforge.renderers.camera_set import CameraSet
from layerforge.renderers.cameras import generate_rays

__all__ = ["BalancedRayBatches", "PolyDecay", "FG_FRACTION", "POLY_EXPONENT"]

# config/toydesk2.yml ``forced_p: [0.7, 0.3]`` (background, foreground).
FG_FRACTION = 0.3
# default_conf.yml ``poly_exp: 2``.
POLY_EXPONENT = 2.0


class BalancedRayBatches:
    """``rays_per_step`` rays a step: 70% from background pixels, 30% from object pixels.

    Each batch: ``origins`` / ``directions`` [R, 3] (unit, world), ``rgb`` [R, 3] linear,
    ``instance`` [R] long (0 background, 1..K objects), ``pseudo_background`` [R, 3] and
    ``seed`` (an int from the step's generator). Pixels with ids outside 0..K (-1 ignore)
    are never drawn. Without any object pixel every ray is a background ray.

    Args:
        views: posed views with ``masks`` (instance ids [N, H, W]).
        pseudo_background: [N, H, W, 3] inpainted background images, linear.
        rays_per_step: R (paper 2048).
        fg_fraction: share of object rays (paper 0.3).
        objects: K.
        device: where the batch goes.
    """

    def __init__(self, views: CameraSet, pseudo_background: Tensor, rays_per_step: int,
                 fg_fraction: float = FG_FRACTION, objects: int = 1, device: torch.device | str = "cpu") -> None:
        if views.masks is None:
            raise ValueError("BalancedRayBatches needs views with instance masks")
        if tuple(pseudo_background.shape) != tuple(views.images.shape):
            raise ValueError(f"pseudo_background is {tuple(pseudo_background.shape)}, images {tuple(views.images.shape)}")
        if not 0.0 <= fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction must be in [0, 1], got {fg_fraction}")
        origins, directions = generate_rays(views.cameras)
        self.origins, self.directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
        self.rgb = views.images.reshape(-1, 3)
        self.pseudo = pseudo_background.reshape(-1, 3).to(self.rgb)
        self.ids = views.masks.reshape(-1).long()
        self.bg = torch.nonzero(self.ids == 0).reshape(-1)
        self.fg = torch.nonzero((self.ids >= 1) & (self.ids <= objects)).reshape(-1)
        if len(self.bg) + len(self.fg) == 0:
            raise ValueError("BalancedRayBatches: no pixel has an id in 0..objects")
        self.rays_per_step, self.fg_fraction = rays_per_step, fg_fraction
        self.device = torch.device(device)

    def sample(self, step: int, generator: torch.Generator) -> dict[str, Tensor | int]:
        n_fg = round(self.fg_fraction * self.rays_per_step) if len(self.fg) else 0
        if len(self.bg) == 0:
            n_fg = self.rays_per_step
        n_bg = self.rays_per_step - n_fg
        parts = []
        if n_bg:
            parts.append(self.bg[torch.randint(0, len(self.bg), (n_bg,), generator=generator)])
        if n_fg:
            parts.append(self.fg[torch.randint(0, len(self.fg), (n_fg,), generator=generator)])
        pick = torch.cat(parts)
        return {
            "origins": self.origins[pick].to(self.device),
            "directions": self.directions[pick].to(self.device),
            "rgb": self.rgb[pick].to(self.device),
            "instance": self.ids[pick].to(self.device),
            "pseudo_background": self.pseudo[pick].to(self.device),
            "seed": int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
        }


class PolyDecay:
    """The learning rate ``lr0 (1 - step / total) ** exponent`` as a function of the step
    (a :class:`~layerforge.models.optimisation.ParamGroup` ``lr``).

    Args:
        base_lr: lr0 (paper: 1e-3). total_steps: steps to zero. exponent: 2 (paper).
    """

    def __init__(self, base_lr: float, total_steps: int, exponent: float = POLY_EXPONENT) -> None:
        self.base_lr, self.total, self.exponent = base_lr, total_steps, exponent

    def __call__(self, step: int) -> float:
        return self.base_lr * max(1.0 - step / self.total, 0.0) ** self.exponent
