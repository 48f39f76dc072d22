"""Whole-image rendering of a :class:`~.model.UDCNeRF` into a ``RenderOutput``."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from layerforge.renderers.camera_set import CameraSet
from layerforge.renderers.cameras import Camera, generate_rays
from layerforge.renderers.output import RenderOutput
from layerforge.renderers.volume import render_output_from_rays

from .edits import Edit, resolve_centres
from .model import UDCNeRF

__all__ = ["render_views", "DEFAULT_CHUNK_RAYS"]

# Rays per chunk: 4096 rays x 128 fine samples = 2^19 points per network call.
DEFAULT_CHUNK_RAYS = 4096


@torch.no_grad()
def render_views(model: UDCNeRF, cameras: Camera | CameraSet, chunk_rays: int = DEFAULT_CHUNK_RAYS,
                 edits: Sequence[Edit] | None = None, generator: torch.Generator | None = None) -> RenderOutput:
    """Render every pixel of ``cameras`` (eval mode, no gradients, bounded memory per chunk).

    Args:
        model: the model (switched to eval for the call, restored after).
        cameras: B cameras (or a CameraSet's) of size H x W.
        chunk_rays: rays per forward.
        edits: object edits (rotation centres resolved from the model when missing).
        generator: ``None`` = deterministic (argmax composition, no noise).

    Returns:
        :class:`RenderOutput` [B, H, W, ...]: ``rgb`` the merged field (the paper's evaluated
        output) or, with edits, the instance composition (the scene branch cannot be edited);
        ``alpha`` / ``depth`` (camera z, m) of that same field; extras ``component_alpha``
        [B, H, W, C], ``components_rgb`` [B, H, W, C, 3], ``segmentation`` [B, H, W, C]
        (argmax = predicted instance id), ``scene_rgb``, ``instance_rgb``, ``merged_rgb``
        [B, H, W, 3]; C = K + 1 (+ duplicates).
    """
    cams = cameras.cameras if isinstance(cameras, CameraSet) else cameras
    dev = next(model.parameters()).device
    cams = cams.to(device=dev)
    edits = resolve_centres(model, list(edits)) if edits else None
    origins, directions = generate_rays(cams)
    o, d = origins.reshape(-1, 3), directions.reshape(-1, 3)
    was = model.training
    model.eval()
    keep: dict[str, list[Tensor]] = {}
    try:
        for i in range(0, o.shape[0], chunk_rays):
            out = model(o[i:i + chunk_rays], d[i:i + chunk_rays], generator, edits=edits)
            field = "instance" if edits else "merged"
            rays = {
                "rgb": out[f"{field}_rgb"],
                "alpha": out[f"{field}_alpha"],
                "depth": out["merged_depth"] if not edits else _instance_depth(out),
                "component_alpha": out["component_alpha"][..., 0],
                "components_rgb": out["components_rgb"],
                "segmentation": out["segmentation"],
                "scene_rgb": out["rgb"],
                "instance_rgb": out["instance_rgb"],
                "merged_rgb": out["merged_rgb"],
            }
            for k, v in rays.items():
                keep.setdefault(k, []).append(v)
    finally:
        model.train(was)
    return render_output_from_rays({k: torch.cat(v) for k, v in keep.items()}, cams, d)


def _instance_depth(out: dict[str, Tensor]) -> Tensor:
    """Expected ray distance [R, 1] of the instance composition (from the component sigmas and mask)."""
    from .model import DELTA_INF, render_points

    sig = (out["component_sigma"] * out["composition_mask"]).sum(-1)
    zeros = torch.zeros(*sig.shape, 3, device=sig.device, dtype=sig.dtype)
    return render_points(sig, zeros, out["t"], DELTA_INF)["depth"]
