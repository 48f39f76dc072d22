"""Checks on everything read from disk: one-line :class:`InputError` naming the file and problem.

Readers call these so a bad input (empty, NaN, flat, absurdly large, a texture that is not
where the MTL says) stops with a message a user can act on, not a traceback deep inside a
pipeline stage.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from layerforge.assets.types import GaussianCloud, LayeredAsset, Mesh
from layerforge.errors import InputError

MAX_VERTICES = 50_000_000
MAX_EXTENT_M = 10_000.0  # larger than any object or room we decompose: almost surely millimetres


def check_file(path: str | os.PathLike[str], suffixes: tuple[str, ...] | None = None) -> Path:
    """``path`` as a Path if it is an existing, non-empty file with one of ``suffixes`` (lower-case, with dot)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file", "check the path")
    if not p.is_file():
        raise InputError(f"{p}: is a folder, not a file", "pass the mesh file itself")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty", "re-export it")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise InputError(f"{p}: unsupported format {p.suffix or '(no suffix)'}", f"use one of {', '.join(suffixes)}")
    return p


def check_texture_files(refs: list[Path], source: str | os.PathLike[str]) -> None:
    """InputError if any referenced texture file is missing."""
    missing = [str(r) for r in refs if not Path(r).is_file()]
    if missing:
        raise InputError(f"{source}: missing texture file(s) {', '.join(missing)}", "copy them next to the file or fix the paths")


def validate_mesh(
    mesh: Mesh,
    source: str | os.PathLike[str],
    *,
    allow_flat: bool = False,
    max_vertices: int = MAX_VERTICES,
    max_extent: float = MAX_EXTENT_M,
) -> Mesh:
    """Return ``mesh`` if usable, else raise InputError "<source>: <problem>; <fix>".

    Checks: vertices and faces present, finite positions/normals/UVs, not more than
    ``max_vertices``, positive total area, a bounding box with volume (unless
    ``allow_flat``) and no side longer than ``max_extent`` metres.
    """
    if len(mesh.vertices) == 0 or len(mesh.faces) == 0:
        raise InputError(f"{source}: mesh is empty ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces)", "export a mesh with triangles")
    if len(mesh.vertices) > max_vertices:
        raise InputError(f"{source}: mesh has {len(mesh.vertices)} vertices (limit {max_vertices})", "decimate it first")
    for name in ("vertices", "normals", "uvs", "colors"):
        arr = getattr(mesh, name)
        if arr is not None and not np.isfinite(arr).all():
            raise InputError(f"{source}: mesh {name} contain NaN/Inf", "repair or re-export the mesh")
    lo, hi = mesh.bounds()
    extent = (hi - lo).astype(np.float64)
    if extent.max() > max_extent:
        raise InputError(
            f"{source}: mesh is absurdly large ({extent.max():.4g} m across)",
            "scale it to metres (is it in millimetres?)",
        )
    if triangle_areas(mesh).sum() <= 0.0:
        raise InputError(f"{source}: mesh is degenerate (zero total area)", "export a mesh with non-degenerate triangles")
    if not allow_flat and np.prod(extent) <= 0.0:
        raise InputError(f"{source}: mesh is degenerate (flat bounding box {extent.round(6).tolist()} m)", "pass a 3D mesh, not a plane or line")
    return mesh


def validate_cloud(cloud: GaussianCloud, source: str | os.PathLike[str]) -> GaussianCloud:
    """Return ``cloud`` if non-empty and finite, else raise InputError."""
    if len(cloud) == 0:
        raise InputError(f"{source}: no Gaussians", "export a non-empty splat")
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        if not np.isfinite(getattr(cloud, name)).all():
            raise InputError(f"{source}: Gaussian {name} contain NaN/Inf", "re-export the splat from a finite model")
    return cloud


def validate_asset(asset: LayeredAsset, source: str | os.PathLike[str], **limits: float) -> LayeredAsset:
    """Validate each part (flat parts allowed, e.g. a floor) and the asset as a whole (must not be flat)."""
    if not asset.parts:
        raise InputError(f"{source}: no meshes or Gaussians found", "export the file with geometry")
    for part in asset.parts:
        where = f"{source} (part {part.name!r})"
        if isinstance(part.geometry, Mesh):
            validate_mesh(part.geometry, where, allow_flat=True, **limits)  # type: ignore[arg-type]
        else:
            validate_cloud(part.geometry, where)
    if any(isinstance(p.geometry, Mesh) for p in asset.parts):
        lo, hi = asset.merged_mesh().bounds()
        if np.prod((hi - lo).astype(np.float64)) <= 0.0:
            raise InputError(f"{source}: asset is degenerate (flat bounding box)", "pass a 3D asset, not a plane")
    return asset


def triangle_areas(mesh: Mesh) -> np.ndarray:
    """[F] float64 triangle areas, square metres."""
    v = mesh.vertices.astype(np.float64)[mesh.faces]
    return 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)
