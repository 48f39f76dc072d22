"""Preview images of assets: a few orbit views of every mesh part, shaded in its colour.

Used by every pipeline's export stage (``previews/`` and ``export/preview.png``).
"""

from __future__ import annotations

import numpy as np
import torch

from layerforge.assets.types import LayeredAsset, Mesh
from layerforge.renderers.cameras import orbit_cameras
from layerforge.renderers.mesh import render_mesh


def _part_colors(asset: LayeredAsset) -> list[np.ndarray]:
    """[3] linear colour per mesh part: its material's base colour, else mean vertex colour, else grey."""
    colors = []
    for part in asset.parts:
        mesh = part.geometry
        if not isinstance(mesh, Mesh):
            continue
        if mesh.material is not None:
            colors.append(mesh.material.base_color[:3])
        elif mesh.colors is not None:
            colors.append(mesh.colors[:, :3].mean(0))
        else:
            colors.append(np.full(3, 0.7, np.float32))
    return colors


def render_asset_views(
    asset: LayeredAsset,
    size: int = 256,
    azimuths_deg: tuple[float, ...] = (30.0, 120.0),
    elevation_deg: float = 20.0,
    fov_deg: float = 35.0,
    center: np.ndarray | None = None,
    radius: float | None = None,
    background: float = 1.0,
) -> np.ndarray:
    """Render orbit views of all mesh parts of ``asset`` in world coordinates.

    Args:
        asset: parts to draw; each mesh part is flat-coloured (see :func:`_part_colors`).
        size: square image side, pixels.
        azimuths_deg: one view per azimuth (degrees around +Z, 0 on the +X side).
        elevation_deg: degrees above the XY plane.
        fov_deg: vertical field of view, degrees.
        center: [3] point looked at (metres); default the asset's bounding-box centre.
        radius: radius to frame (metres); default half the bounding-box diagonal. Pass the
            same ``center``/``radius`` to compare two assets at the same scale.
        background: grey level of empty pixels.

    Returns:
        [size, size * len(azimuths_deg), 3] float32 linear RGB in [0, 1].
    """
    meshes = [(p.geometry.transformed(p.transform), c) for p, c in zip((q for q in asset.parts if q.is_mesh), _part_colors(asset))]
    verts = np.concatenate([m.vertices for m, _ in meshes])
    faces = np.concatenate([m.faces + o for (m, _), o in zip(meshes, np.cumsum([0] + [len(m.vertices) for m, _ in meshes[:-1]]))])
    colors = np.concatenate([np.broadcast_to(c, (len(m.vertices), 3)) for m, c in meshes])
    lo, hi = verts.min(0), verts.max(0)
    center = (lo + hi) / 2 if center is None else np.asarray(center, np.float32)
    radius = float(np.linalg.norm(hi - lo) / 2) if radius is None else float(radius)
    distance = radius / np.sin(np.deg2rad(fov_deg) / 2) * 1.05
    n = len(azimuths_deg)
    cams = orbit_cameras(
        torch.full((n,), elevation_deg), torch.tensor(azimuths_deg), distance, fov_deg, size, size, target=center.tolist()
    )
    with torch.no_grad():
        out = render_mesh(
            torch.from_numpy(verts).float(),
            torch.from_numpy(faces).long(),
            cams,
            vertex_colors=torch.from_numpy(np.ascontiguousarray(colors)).float(),
            background=background,
            antialias_edges=False,
        )
    rgb = out.rgb.clamp(0, 1).numpy()  # [n, H, W, 3]
    return np.concatenate(list(rgb), axis=1).astype(np.float32)


def side_by_side(*images: np.ndarray, gap: int = 4, background: float = 1.0) -> np.ndarray:
    """Stack [H, W_i, 3] images vertically with ``gap`` pixels between them (same width required)."""
    width = max(im.shape[1] for im in images)
    rows = []
    for i, im in enumerate(images):
        pad = np.full((im.shape[0], width - im.shape[1], 3), background, np.float32)
        rows.append(np.concatenate([im, pad], axis=1))
        if i < len(images) - 1:
            rows.append(np.full((gap, width, 3), background, np.float32))
    return np.concatenate(rows, axis=0)
