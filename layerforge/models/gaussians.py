"""3D Gaussians as a learnable, resizable representation, and gsplat's densification as a policy.

:class:`GaussianModel` holds the raw parameters gsplat's strategies expect, by name, in a
``ParameterDict`` (``means`` [N, 3] m, ``scales`` [N, 3] log-metres, ``quats`` [N, 4] wxyz,
``opacities`` [N] logits, ``sh0`` [N, 1, 3] and ``shN`` [N, K-1, 3] SH coefficients). Its
``load_state_dict`` adopts the checkpoint's sizes, so a densified model resumes.
:class:`GsplatPolicy` runs any gsplat ``Strategy`` (``DefaultStrategy``, ``MCMCStrategy``) in
the optimisation policy life cycle (:class:`~layerforge.models.optimisation.Policy`), its running state
checkpointed with the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from layerforge.models.optimisation import ParamGroup
from layerforge.models.schedules import ScheduleValue

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


class GaussianModel(nn.Module):
    """N Gaussians with SH colour of degree ``sh_degree`` (raw, unactivated parameters).

    Args:
        means: [N, 3] world centres, metres.
        scales: [N, 3] standard deviations, metres (stored as their log).
        colors: [N, 3] linear RGB in [0, 1] (stored as the SH DC term).
        opacities: [N] in (0, 1) (stored as logits).
        sh_degree: SH degree 0..3 (``shN`` holds the (degree + 1)^2 - 1 higher bands, zero).
    """

    SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi)): colour = SH_C0 * sh0 + 0.5 (3DGS)

    def __init__(self, means: Tensor, scales: Tensor, colors: Tensor, opacities: Tensor, sh_degree: int = 0) -> None:
        super().__init__()
        n = means.shape[0]
        quats = torch.zeros(n, 4, dtype=means.dtype, device=means.device)
        quats[:, 0] = 1.0
        k = (sh_degree + 1) ** 2
        self.sh_degree = sh_degree
        self.params = nn.ParameterDict({
            "means": nn.Parameter(means.clone()),
            "scales": nn.Parameter(torch.log(scales)),
            "quats": nn.Parameter(quats),
            "opacities": nn.Parameter(torch.logit(opacities)),
            "sh0": nn.Parameter(((colors - 0.5) / self.SH_C0)[:, None, :].clone()),
            "shN": nn.Parameter(torch.zeros(n, k - 1, 3, dtype=means.dtype, device=means.device)),
        })

    def __len__(self) -> int:
        return self.params["means"].shape[0]

    def activated(self) -> dict[str, Tensor]:
        """``means`` [N, 3], ``quats`` [N, 4] (unit), ``scales`` [N, 3] m, ``opacities`` [N],
        ``sh_coeffs`` [N, K, 3]: the arguments :func:`layerforge.renderers.render_gaussians` takes."""
        p = self.params
        return {
            "means": p["means"],
            "quats": p["quats"] / p["quats"].norm(dim=-1, keepdim=True).clamp_min(1e-12),
            "scales": torch.exp(p["scales"]),
            "opacities": torch.sigmoid(p["opacities"]),
            "sh_coeffs": torch.cat([p["sh0"], p["shN"]], dim=1),
        }

    def param_groups(self, lr: Mapping[str, ScheduleValue], eps: float = 1e-15) -> list[ParamGroup]:
        """One group per parameter (gsplat's strategies need one optimiser per name), lr per name.

        ``eps`` 1e-15: 3DGS's Adam epsilon (gaussian-splatting train.py), kept by gsplat.
        """
        return [ParamGroup(name, (lambda name=name: [self.params[name]]), lr[name], eps=eps) for name in PARAM_NAMES]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load parameters of any N (a densified checkpoint), replacing the Parameters."""
        prefix = "params."
        for key, value in state_dict.items():
            name = key[len(prefix):] if key.startswith(prefix) else key
            if name not in self.params:
                if strict:
                    raise KeyError(f"unexpected key {key} in GaussianModel state")
                continue
            self.params[name] = nn.Parameter(value.detach().clone().to(self.params[name].device))
        return None


class GsplatPolicy:
    """A gsplat ``Strategy`` (densify, prune, reset opacity) as an optimisation policy.

    The loss terms put the rasterizer's ``info`` (``means2d`` with grad retained, ``radii``,
    ``width``, ``height``, ``n_cameras``) into the step's info dict under ``"gsplat"``.

    Args:
        strategy: e.g. ``gsplat.strategy.DefaultStrategy(refine_start_iter=500, refine_every=100,
            grow_grad2d=2e-4)`` (LayerPano3D's densification).
        scene_scale: gsplat's scene scale (metres), which its size thresholds are relative to.
        first_iteration: the strategy sees ``step + first_iteration``. gsplat's trainer counts from
            0, so its ``step % reset_every == 0`` clamps every opacity at the very first step; 3DGS
            (and LayerPano3D) count iterations from 1 and never reset at the start: pass 1 for them.
    """

    def __init__(self, strategy: Any, scene_scale: float = 1.0, first_iteration: int = 0) -> None:
        self.strategy = strategy
        self.first_iteration = int(first_iteration)
        self.state = strategy.initialize_state(scene_scale=scene_scale)
        self._checked = False

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = dict(state)

    def step_pre_backward(self, step: int, representation: nn.Module, optimizers: Mapping[str, torch.optim.Optimizer],
                          info: dict[str, Any]) -> None:
        if not self._checked:  # gsplat's own check: one optimiser per named parameter, the names it needs
            self.strategy.check_sanity(representation.params, dict(optimizers))
            self._checked = True
        self.strategy.step_pre_backward(representation.params, dict(optimizers), self.state,
                                        step + self.first_iteration, info["gsplat"])

    def step_post_backward(self, step: int, representation: nn.Module, optimizers: Mapping[str, torch.optim.Optimizer],
                           info: dict[str, Any]) -> None:
        self.strategy.step_post_backward(representation.params, dict(optimizers), self.state,
                                         step + self.first_iteration, info["gsplat"], packed=False)
