"""Meshes from fields: marching cubes of one object's density (or SDF) inside its bounds.

Used to turn per-object radiance or SDF fields into per-object deliverables (UDC-NeRF has no
mesh export; DP-Recon extracts each object by marching cubes). Coordinates are those of the
field (the optimisation frame); the pipeline maps them to the world with its SceneFrame.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from layerforge.assets.types import Mesh
from layerforge.errors import OutputError

DEFAULT_CHUNK = 1 << 16  # points per field query


def _grid_values(fn: Callable[[Tensor], Tensor], lo: np.ndarray, hi: np.ndarray, resolution: int, chunk: int,
                 device: torch.device | str) -> np.ndarray:
    axes = [np.linspace(lo[i], hi[i], resolution) for i in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    out = np.empty(len(pts), np.float32)
    with torch.no_grad():
        for s in range(0, len(pts), chunk):
            p = torch.as_tensor(pts[s:s + chunk], dtype=torch.float32, device=device)
            out[s:s + chunk] = fn(p).reshape(-1).float().cpu().numpy()
    return out.reshape(resolution, resolution, resolution)


def extract_level_set(
    fn: Callable[[Tensor], Tensor],
    lo: np.ndarray | list[float],
    hi: np.ndarray | list[float],
    *,
    resolution: int,
    level: float,
    inside: str = "above",
    keep: str = "largest",
    color: Callable[[Tensor], Tensor] | None = None,
    chunk: int = DEFAULT_CHUNK,
    device: torch.device | str = "cpu",
) -> Mesh:
    """A watertight-where-possible triangle mesh of ``{x : fn(x) = level}`` inside the box [lo, hi].

    Args:
        fn: [P, 3] points (metres, field frame) -> [P] or [P, 1] values (density 1/m, or SDF m).
        lo, hi: [3] corners of the box to search.
        resolution: grid samples per axis.
        level: iso-value (a density threshold, or 0 for an SDF).
        inside: ``"above"`` (density: inside where fn > level) or ``"below"`` (SDF).
        keep: ``"largest"`` connected component by area, or ``"all"``.
        color: optional [P, 3] points -> [P, 3] linear RGB for vertex colours.

    Raises:
        OutputError: the level set is empty in the box (nothing to extract).
    """
    from skimage.measure import marching_cubes

    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    values = _grid_values(fn, lo, hi, resolution, chunk, device)
    if inside == "below":
        values, level = -values, -level
    if not (values.max() > level > values.min()):
        raise OutputError(f"the field never crosses level {level:g} in its box (values {values.min():.3g}..{values.max():.3g})",
                          "lower the extraction threshold or train longer")
    spacing = (hi - lo) / (resolution - 1)
    verts, faces, _, _ = marching_cubes(values, level=level, spacing=tuple(spacing))
    verts = verts + lo
    faces = faces[:, ::-1].copy()  # skimage winds towards increasing values: make normals point outwards
    if keep == "largest":
        verts, faces = _largest_component(verts, faces)
    colors = None
    if color is not None:
        with torch.no_grad():
            rgb = color(torch.as_tensor(verts, dtype=torch.float32, device=device)).float().cpu().numpy()
        colors = np.concatenate([np.clip(rgb, 0, 1), np.ones((len(rgb), 1), np.float32)], 1)
    return Mesh(verts.astype(np.float32), faces.astype(np.int64), colors=colors)


def _largest_component(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    parts = trimesh.Trimesh(verts, faces, process=False).split(only_watertight=False)
    if len(parts) <= 1:
        return verts, faces
    best = max(parts, key=lambda m: m.area)
    return np.asarray(best.vertices), np.asarray(best.faces)
