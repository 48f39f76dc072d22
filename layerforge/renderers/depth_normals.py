"""Camera-frame surface normals from a camera-z depth map.

Conventions (``renderers/cameras.py``): the OpenCV camera frame (+x right, +y down, +z forward),
``K`` in pixels, the centre of pixel row ``i``, column ``j`` at image point ``(j + 0.5, i + 0.5)``.
Depth is camera z in metres (what :func:`~layerforge.renderers.mesh.rasterize`,
``RenderOutput.depth`` and ``CameraSet.depths`` hold), 0 = unknown.

Each pixel is back-projected to its camera-frame point ``P = z * K^-1 (u, v, 1)``; the normal is
the cross product of the central differences ``P[i+1, j] - P[i-1, j]`` and
``P[i, j+1] - P[i, j-1]``, oriented to face the camera (``n . P < 0``). Exact for a plane;
second-order accurate on a smooth surface.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MAX_INCIDENCE_DEG", "camera_points_from_depth", "normals_from_depth"]

# A depth step between a pixel and one of its 4 neighbours larger than a surface seen at this
# angle between ray and normal would make, |dz| > tan(angle) * z / f (z/f: the lateral size of one
# pixel at depth z), counts as a discontinuity (an occlusion edge), not a surface. 80 deg cuts a
# 2.3 cm step at 2 m with f = 500 px, and a sphere's outer 1.5 % of radius at its silhouette.
MAX_INCIDENCE_DEG = 80.0


def _intrinsics(depth: Tensor, K: Tensor, dtype: torch.dtype) -> Tensor:
    if depth.dim() != 4 or depth.shape[-1] != 1:
        raise ValueError(f"depth must be [N, H, W, 1], got {tuple(depth.shape)}")
    n = depth.shape[0]
    k = K.to(device=depth.device, dtype=dtype)
    if k.shape == (3, 3):
        k = k.expand(n, 3, 3)
    if tuple(k.shape) != (n, 3, 3):
        raise ValueError(f"K must be [N, 3, 3] or [3, 3] for {n} depth maps, got {tuple(K.shape)}")
    return k


def _work_dtype(depth: Tensor) -> torch.dtype:
    return torch.float64 if depth.dtype == torch.float64 else torch.float32


def camera_points_from_depth(depth: Tensor, K: Tensor) -> Tensor:
    """Back-project every pixel to its camera-frame point.

    Args:
        depth: [N, H, W, 1] camera z in metres.
        K: [N, 3, 3] (or [3, 3], shared) intrinsics in pixels.

    Returns:
        [N, H, W, 3] points ``z * K^-1 (j + 0.5, i + 0.5, 1)``, OpenCV camera frame (float32, or
        float64 for float64 depth). A pixel with depth 0 maps to the camera centre.
    """
    dtype = _work_dtype(depth)
    k = _intrinsics(depth, K, dtype)
    _, h, w, _ = depth.shape
    v, u = torch.meshgrid(torch.arange(h, dtype=dtype, device=depth.device) + 0.5,
                          torch.arange(w, dtype=dtype, device=depth.device) + 0.5, indexing="ij")
    fx, fy = k[:, 0, 0, None, None], k[:, 1, 1, None, None]
    cx, cy = k[:, 0, 2, None, None], k[:, 1, 2, None, None]
    s = k[:, 0, 1, None, None]  # skew (usually 0), as in generate_rays
    y = (v - cy) / fy
    x = (u - cx - s * y) / fx
    rays = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [N, H, W, 3], camera z = 1
    return rays * depth.to(dtype)


def normals_from_depth(depth: Tensor, K: Tensor, *, max_incidence_deg: float = MAX_INCIDENCE_DEG) -> Tensor:
    """Unit surface normals of a depth map, in each view's camera frame, facing the camera.

    Args:
        depth: [N, H, W, 1] camera z in metres; 0 (or non-finite) = unknown. Any positive
            scale works (normals do not change when all depths are multiplied by one factor).
        K: [N, 3, 3] (or [3, 3], shared) intrinsics in pixels, for this image size.
        max_incidence_deg: a neighbour whose depth differs from the pixel's by more than
            ``tan(max_incidence_deg) * z / f`` (fx across, fy down) marks a depth
            discontinuity (:data:`MAX_INCIDENCE_DEG`, 80 by default).

    Returns:
        [N, H, W, 3] unit normals, OpenCV camera frame (+x right, +y down, +z forward), with
        ``n . ray < 0``; float32 (float64 for float64 depth). The zero vector where the pixel
        or any of its 4 neighbours is unknown, across a discontinuity, and on the 1-pixel image
        border (central differences need both neighbours). Differentiable in ``depth``.
    """
    dtype = _work_dtype(depth)
    k = _intrinsics(depth, K, dtype)
    n, h, w, _ = depth.shape
    if h < 3 or w < 3:
        return torch.zeros(n, h, w, 3, dtype=dtype, device=depth.device)
    z = depth[..., 0].to(dtype)
    known = torch.isfinite(z) & (z > 0)
    z = torch.where(known, z, torch.zeros_like(z))
    p = camera_points_from_depth(z[..., None], k)
    d_u = p[:, 1:-1, 2:] - p[:, 1:-1, :-2]  # along +u (right), [N, H-2, W-2, 3]
    d_v = p[:, 2:, 1:-1] - p[:, :-2, 1:-1]  # along +v (down)
    nrm = torch.linalg.cross(d_v, d_u, dim=-1)  # faces the camera for any surface in front of it
    centre = p[:, 1:-1, 1:-1]
    nrm = torch.where((nrm * centre).sum(-1, keepdim=True) > 0, -nrm, nrm)

    zc = z[:, 1:-1, 1:-1]
    tan = math.tan(math.radians(max_incidence_deg))
    lim_u = tan * zc / k[:, 0, 0, None, None]
    lim_v = tan * zc / k[:, 1, 1, None, None]
    ok = known[:, 1:-1, 1:-1]
    for rows, cols, lim in ((slice(1, -1), slice(2, None), lim_u), (slice(1, -1), slice(None, -2), lim_u),
                            (slice(2, None), slice(1, -1), lim_v), (slice(None, -2), slice(1, -1), lim_v)):
        ok = ok & known[:, rows, cols] & ((z[:, rows, cols] - zc).abs() <= lim)
    length = nrm.norm(dim=-1, keepdim=True)
    ok = ok[..., None] & (length > 0)
    unit = nrm / torch.where(ok, length, torch.ones_like(length))
    inner = torch.where(ok, unit, torch.zeros_like(unit))
    return F.pad(inner, (0, 0, 1, 1, 1, 1))
