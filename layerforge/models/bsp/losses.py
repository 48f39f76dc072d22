"""BSP-Net losses per training phase (all weights 1, as in the paper and modelAE.py).

Notation: v [B, N, 1] ground-truth values (1 inside), h2 [B, N, c], h3 [B, N, 1] network
outputs (see ``network.BSPOutput``), T [p, c], W [c, 1]. Every function returns a dict of
named scalar terms and ``"total"``, the value to minimise.

- Phase 0 (continuous): ``recon = mean((v - h3)^2)``, ``W = sum|W - 1|``,
  ``T = sum(max(T - 1, 0) - min(T, 0))``.
- Phase 1 (hard, binarised T): ``recon = mean((1 - v)(1 - min(h3, 1)) + v max(h3, 0))``.
- Phase 2: phase 1 plus ``overlap = -mean(h2 v M)``, M marking a point's convexes when it is
  inside (h2 < 0.01) more than one.
- Phase 3 (soft, best reconstruction): phase 1 plus ``T = sum_{T<0.01}|T| + sum_{T>=0.01}|T - 1|``.
- Phase 4: phase 3 plus the overlap term.
"""

from __future__ import annotations

import torch

from layerforge.models.bsp.network import T_THRESHOLD

# BSP-Net modelAE.py phases 2/4: a point is inside a convex when h2 < 0.01.
INSIDE_THRESHOLD = 0.01


def _values(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Values as [B, N, 1] in the dtype of ``like``."""
    v = values.to(like.dtype)
    return v if v.dim() == like.dim() else v.unsqueeze(-1)


def recon_continuous(h3: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Phase-0 reconstruction: mean squared error between occupancy h3 [B, N, 1] and v."""
    return torch.mean((_values(values, h3) - h3) ** 2)


def recon_hard(h3: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Phases >= 1 reconstruction: outside points pushed to h3 >= 1, inside to h3 <= 0."""
    v = _values(values, h3)
    return torch.mean((1 - v) * (1 - torch.clamp(h3, max=1)) + v * torch.clamp(h3, min=0))


def w_regulariser(W: torch.Tensor) -> torch.Tensor:
    """Phase-0 L_W: sum |W - 1| over the [c, 1] convex weights."""
    return torch.sum(torch.abs(W - 1))


def t_range_regulariser(T: torch.Tensor) -> torch.Tensor:
    """Phase-0 L_T: sum of how far each T entry [p, c] lies outside [0, 1]."""
    return torch.sum(torch.clamp(T - 1, min=0) - torch.clamp(T, max=0))


def t_binary_regulariser(T: torch.Tensor) -> torch.Tensor:
    """Phases 3/4 L_T: pull T entries below 0.01 to 0 and the others to 1."""
    low = (T < T_THRESHOLD).to(T.dtype)
    return torch.sum(low * torch.abs(T)) + torch.sum((1 - low) * torch.abs(T - 1))


def overlap(h2: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """L_overlap (phases 2/4): -mean(h2 v M) over [B, N, c], M = inside >1 convex."""
    inside = (h2 < INSIDE_THRESHOLD).to(h2.dtype)
    mask = inside * (inside.sum(dim=-1, keepdim=True) > 1).to(h2.dtype)
    return -torch.mean(h2 * _values(values, h2) * mask)


def phase_loss(
    phase: int, h2: torch.Tensor, h3: torch.Tensor, values: torch.Tensor, T: torch.Tensor, W: torch.Tensor
) -> dict[str, torch.Tensor]:
    """All loss terms of a phase 0..4 and their sum ``"total"``.

    Args:
        phase: 0..4.
        h2: [B, N, c] convex values; h3: [B, N, 1] shape values.
        values: [B, N] or [B, N, 1] ground truth (1 inside, 0 outside).
        T: [p, c] connections; W: [c, 1] convex weights.
    """
    if phase == 0:
        terms = {"recon": recon_continuous(h3, values), "W": w_regulariser(W), "T": t_range_regulariser(T)}
    elif phase in (1, 2, 3, 4):
        terms = {"recon": recon_hard(h3, values)}
        if phase in (3, 4):
            terms["T"] = t_binary_regulariser(T)
        if phase in (2, 4):
            terms["overlap"] = overlap(h2, values)
    else:
        raise ValueError(f"BSP-Net phase must be 0..4, got {phase}")
    terms["total"] = sum(terms.values())
    return terms
