"""One BSP-Net optimisation step and the pieces a training/fit loop needs.

The loop itself (progress, checkpoints, schedules over phases and resolutions) belongs to
the ``bsp`` pipeline; this module only knows tensors.

A *batch* is a dict:
- ``points`` [B, N, 3] float32 in [-0.5, 0.5]^3, ``values`` [B, N] float32 (1 inside);
- and ``voxels`` [B, 1, 64, 64, 64] float32 (encoder model) or ``shape_idx`` [B] long
  (auto-decoder model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from layerforge.errors import NonFiniteError
from layerforge.models.bsp.data import PreparedShape
from layerforge.models.bsp.losses import phase_loss
from layerforge.models.bsp.network import BSPNet
from layerforge.models.optimisation import ParamGroup

# BSP-Net paper / modelAE.py: Adam, learning rate 1e-4, beta1 0.5.
PAPER_LR = 1e-4
PAPER_BETA1 = 0.5


def param_groups(model: BSPNet, lr: float = PAPER_LR, lr_tw: float | None = None, beta1: float = PAPER_BETA1) -> list[ParamGroup]:
    """BSP-Net's parameters as two groups for :func:`layerforge.pipelines.optimise.optimise`.

    ``main`` (codes, encoder, plane decoder) at ``lr`` and ``tw`` (T and W) at ``lr_tw``
    (default ``lr``); Adam betas (beta1, 0.999), as :func:`make_optimizer`.
    """
    tw = [model.T, model.W]
    rest = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in tw)]
    betas = (beta1, 0.999)
    return [ParamGroup("main", rest, lr, betas=betas), ParamGroup("tw", tw, lr if lr_tw is None else lr_tw, betas=betas)]


class PhaseLoss:
    """BSP-Net's loss of one training phase (0..4) as an optimisation loss term.

    Returns the phase's total and logs each of its terms (``recon``, ``W``, ``T``, ``overlap``).
    """

    weight = 1.0

    def __init__(self, phase: int) -> None:
        self.phase = phase
        self.name = f"phase{phase}"

    def __call__(self, model: BSPNet, batch: Mapping[str, torch.Tensor], step: int, info: dict[str, Any]) -> torch.Tensor:
        out = model(batch["points"], voxels=batch.get("voxels"), shape_idx=batch.get("shape_idx"), phase=self.phase)
        terms = phase_loss(self.phase, out.h2, out.h3, batch["values"], model.T, model.W)
        info["log"].update({k: v.detach() for k, v in terms.items() if k != "total"})
        return terms["total"]


class PointBatches:
    """Sampler of point/value batches: ``n_points`` pairs for ``per_batch`` random shapes a step.

    Args:
        data: :func:`stack_prepared` of the shapes at one resolution (on the target device).
        n_points: pairs per shape and step.
        per_batch: shapes per step (all shapes, in order, when >= their number).
        with_voxels: include the voxels (encoder models).
    """

    def __init__(self, data: Mapping[str, torch.Tensor], n_points: int, per_batch: int, with_voxels: bool) -> None:
        self.data = data
        self.n_points = n_points
        self.n_shapes = data["values"].shape[0]
        self.per_batch = min(per_batch, self.n_shapes)
        self.with_voxels = with_voxels

    def sample(self, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randperm(self.n_shapes, generator=generator)[: self.per_batch] if self.per_batch < self.n_shapes else None
        device = self.data["values"].device
        batch = fit_points(self.data, self.n_points, generator, shape_idx=idx, with_voxels=self.with_voxels)
        return {k: v.to(device) for k, v in batch.items()}


def make_optimizer(model: BSPNet, cfg: Mapping[str, Any] | None = None) -> torch.optim.Adam:
    """Adam over all parameters.

    ``cfg`` keys: ``lr`` (default 1e-4, the paper's), ``beta1`` (0.5), and ``lr_tw`` (default
    ``lr``): the learning rate of T and W alone. Fit mode raises ``lr`` for the codes and the
    plane decoder but keeps T and W slow: at a high rate L_T zeroes the negative entries of T
    before the planes adapt, h1 T exceeds 1 everywhere and every convex dies (h2 = 0).
    """
    cfg = cfg or {}
    lr = float(cfg.get("lr", PAPER_LR))
    lr_tw = float(cfg.get("lr_tw", lr))
    tw = [model.T, model.W]
    rest = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in tw)]
    groups = [{"params": rest, "lr": lr}, {"params": tw, "lr": lr_tw}]
    return torch.optim.Adam(groups, lr=lr, betas=(float(cfg.get("beta1", PAPER_BETA1)), 0.999))


def train_step(
    model: BSPNet, optimizer: torch.optim.Optimizer, batch: Mapping[str, torch.Tensor], phase: int
) -> dict[str, float]:
    """One optimiser step on ``batch`` with the phase's loss; returns every loss term as float.

    Raises:
        NonFiniteError: the loss became NaN or infinite (the step is not applied).
    """
    model.train()
    info: dict[str, Any] = {"log": {}}
    total = PhaseLoss(phase)(model, batch, 0, info)
    terms = {**info["log"], "total": total}
    if not torch.isfinite(total):
        raise NonFiniteError(f"BSP-Net phase {phase} loss is {total.item()}", "lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in terms.items()}


def stack_prepared(shapes: Sequence[PreparedShape], res: int) -> dict[str, torch.Tensor]:
    """Stack prepared shapes' point/value pairs at one resolution.

    Returns:
        ``points`` [S, N_res, 3], ``values`` [S, N_res], ``voxels`` [S, 1, 64, 64, 64] float32.
    """
    return {
        "points": torch.from_numpy(np.stack([s.points[res] for s in shapes])).float(),
        "values": torch.from_numpy(np.stack([s.values[res] for s in shapes])).float(),
        "voxels": torch.from_numpy(np.stack([s.voxels for s in shapes])[:, None]).float(),
    }


def fit_points(
    data: Mapping[str, torch.Tensor],
    n_points: int,
    generator: torch.Generator,
    shape_idx: torch.Tensor | None = None,
    with_voxels: bool = False,
) -> dict[str, torch.Tensor]:
    """Draw a batch: ``n_points`` random pairs (without repetition) for each chosen shape.

    Args:
        data: output of :func:`stack_prepared` (``points`` [S, N, 3], ``values`` [S, N]).
        n_points: pairs per shape (<= N).
        generator: torch generator (determinism).
        shape_idx: [B] long indices of the shapes; default all S shapes.
        with_voxels: include ``voxels`` [B, 1, 64, 64, 64] (encoder model).

    Returns:
        a batch dict for :func:`train_step`, with ``shape_idx`` always present.
    """
    S, N = data["values"].shape
    idx = torch.arange(S) if shape_idx is None else shape_idx
    n_points = min(n_points, N)
    pick = torch.stack([torch.randperm(N, generator=generator)[:n_points] for _ in range(len(idx))])
    batch = {
        "points": torch.gather(data["points"][idx], 1, pick[..., None].expand(-1, -1, 3)),
        "values": torch.gather(data["values"][idx], 1, pick),
        "shape_idx": idx,
    }
    if with_voxels:
        batch["voxels"] = data["voxels"][idx]
    return batch


def grid_points(res: int) -> torch.Tensor:
    """[res^3, 3] float32 cell centres (c + 0.5) / res - 0.5, x slowest."""
    c = (torch.arange(res, dtype=torch.float32) + 0.5) / res - 0.5
    return torch.stack(torch.meshgrid(c, c, c, indexing="ij"), dim=-1).reshape(-1, 3)


@torch.no_grad()
def shape_planes(
    model: BSPNet, voxels: torch.Tensor | None = None, shape_idx: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One shape's planes [p, 4] (a, b, c, d; inside where <= 0) and T [p, c], as float64 numpy.

    Pass ``voxels`` [1, 1, 64, 64, 64] (encoder) or ``shape_idx`` (auto-decoder).
    """
    idx = None if shape_idx is None else torch.tensor([shape_idx])
    planes = model.planes(model.code(voxels, idx))[0].T
    return planes.double().numpy(), model.T.detach().double().numpy()
