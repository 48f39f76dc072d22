"""Equirectangular panoramas: spherical rays, resampling to/from perspective views, RGB-D lift.

Convention (world +Z up, metres). An equirectangular image of H rows x W columns covers
longitude ``[-180, 180)`` degrees across and latitude ``[-90, 90]`` degrees down:

- longitude 0 points along world +X and increases toward +Y (counter-clockwise seen from
  above); the centre column (u = W/2) looks along +X, the left edge along -X (lon +180),
  longitude grows to the *left* so the panorama is not mirrored when viewed from inside;
- latitude +90 degrees (+Z) is the top edge (v = 0), -90 the bottom edge (v = H);
- image coordinates follow the Camera convention: pixel (i, j) has centre
  ``(u, v) = (j + 0.5, i + 0.5)``; ``lon = pi - 2 pi u / W``, ``lat = pi/2 - pi v / H``;
- direction ``(cos lat cos lon, cos lat sin lon, sin lat)``.

Depth panoramas store the distance along each ray (radial, metres), not camera z.
Perspective views are :class:`~layerforge.renderers.cameras.Camera` s; only their rotation
matters for resampling (the panorama is at infinity around the camera centre).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from layerforge.renderers.cameras import Camera, generate_rays, intrinsics_from_fov, look_at, project

if TYPE_CHECKING:
    from layerforge.assets.types import Mesh

__all__ = [
    "equirect_directions",
    "equirect_rays",
    "directions_to_equirect",
    "pano_cameras",
    "equirect_to_perspective",
    "perspective_to_equirect",
    "equirect_rgbd_to_points",
    "equirect_rgbd_to_mesh",
]

Interp = Literal["bilinear", "nearest"]


def equirect_directions(
    height: int, width: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """Unit world directions [H, W, 3] through every equirectangular pixel centre."""
    v = torch.arange(height, dtype=torch.float64, device=device) + 0.5
    u = torch.arange(width, dtype=torch.float64, device=device) + 0.5
    lat = (0.5 - v / height) * math.pi
    lon = (1.0 - 2.0 * u / width) * math.pi
    lat, lon = torch.meshgrid(lat, lon, indexing="ij")
    d = torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], -1)
    return d.to(dtype)


def equirect_rays(
    height: int,
    width: int,
    center: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Rays of an equirectangular panorama taken at ``center`` [3] (world metres).

    Returns:
        origins [H, W, 3] (all ``center``) and unit directions [H, W, 3].
    """
    d = equirect_directions(height, width, dtype=dtype, device=device)
    o = torch.as_tensor(center, dtype=dtype, device=d.device).reshape(1, 1, 3).expand_as(d)
    return o, d


def directions_to_equirect(dirs: Tensor, height: int, width: int) -> Tensor:
    """Equirectangular image coordinates [..., 2] (u, v; pixel centres at +0.5) of directions [..., 3].

    Directions need not be unit length. ``u`` lies in ``[0, W]``, ``v`` in ``[0, H]``.
    """
    x, y, z = dirs.unbind(-1)
    lon = torch.atan2(y, x)
    lat = torch.atan2(z, torch.sqrt(x * x + y * y))
    u = (math.pi - lon) / (2.0 * math.pi) * width
    v = (0.5 * math.pi - lat) / math.pi * height
    return torch.stack([u, v], -1)


def pano_cameras(
    yaw_deg: float | Sequence[float] | Tensor,
    pitch_deg: float | Sequence[float] | Tensor,
    fov_deg: float | Sequence[float] | Tensor,
    width: int,
    height: int,
    *,
    center: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Camera:
    """Perspective cameras at ``center`` looking out of a panorama (world +Z up).

    Args:
        yaw_deg: [B] view longitude, degrees (0 = +X, 90 = +Y), the panorama's convention.
        pitch_deg: [B] view latitude, degrees (+ looks up).
        fov_deg: [B] vertical field of view, degrees.
        width, height: image size in pixels.
    """
    yaw, pitch, fov = (
        torch.as_tensor(x, dtype=torch.float64).reshape(-1) for x in (yaw_deg, pitch_deg, fov_deg)
    )
    yaw, pitch, fov = torch.broadcast_tensors(yaw, pitch, fov)
    y, p = torch.deg2rad(yaw), torch.deg2rad(pitch)
    fwd = torch.stack([p.cos() * y.cos(), p.cos() * y.sin(), p.sin()], -1)
    c = torch.as_tensor(center, dtype=torch.float64).reshape(1, 3)
    w2c = look_at(c.expand_as(fwd), c + fwd)
    K = intrinsics_from_fov(fov, width, height, dtype=torch.float64)
    return Camera(K, w2c, width, height).to(device=device, dtype=dtype)


def _sample_equirect(pano: Tensor, uv: Tensor, mode: Interp) -> Tensor:
    """Sample pano [B, H, W, C] at image coordinates uv [B, h, w, 2], wrapping horizontally."""
    B, H, W, _ = pano.shape
    img = pano.permute(0, 3, 1, 2)
    img = torch.cat([img[..., -1:], img, img[..., :1]], dim=-1)  # one wrapped column each side
    gx = 2.0 * (uv[..., 0] + 1.0) / (W + 2) - 1.0
    gy = 2.0 * uv[..., 1] / H - 1.0
    grid = torch.stack([gx, gy], -1).to(img.dtype)
    out = F.grid_sample(img, grid, mode=mode, padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1)


def equirect_to_perspective(pano: Tensor, cameras: Camera, *, mode: Interp = "bilinear") -> Tensor:
    """Resample an equirectangular panorama into perspective views.

    Args:
        pano: [H, W, C] or [B, H, W, C] (B = 1 or the number of cameras), any channels.
        cameras: B cameras; only their rotation is used.
        mode: ``"bilinear"`` or ``"nearest"`` (use nearest for depth/labels).

    Returns:
        [B, h, w, C] images of the cameras' size; the horizontal seam wraps.
    """
    if pano.dim() == 3:
        pano = pano[None]
    cams = cameras.to(device=pano.device)
    _, dirs = generate_rays(cams)
    uv = directions_to_equirect(dirs, pano.shape[1], pano.shape[2])
    if pano.shape[0] == 1 and len(cams) > 1:
        pano = pano.expand(len(cams), *pano.shape[1:])
    return _sample_equirect(pano, uv, mode)


def perspective_to_equirect(
    images: Tensor,
    cameras: Camera,
    height: int,
    width: int,
    *,
    mode: Interp = "bilinear",
) -> tuple[Tensor, Tensor]:
    """Resample perspective views onto the equirectangular grid, one panorama per view.

    Args:
        images: [B, h, w, C] views of ``cameras`` (image size must match).
        cameras: B cameras; the panorama is centred on each camera's centre.
        height, width: panorama size.
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        panos [B, H, W, C] (0 outside each view) and masks [B, H, W, 1] (1 where the
        panorama pixel's ray falls inside the view). Blend several views with
        ``(panos * masks).sum(0) / masks.sum(0).clamp_min(1)``.
    """
    B, h, w, _ = images.shape
    if (w, h) != (cameras.width, cameras.height):
        raise ValueError(f"images are {w}x{h} but the cameras are {cameras.width}x{cameras.height}")
    cams = cameras.to(device=images.device, dtype=images.dtype)
    d = equirect_directions(height, width, dtype=images.dtype, device=images.device).reshape(1, -1, 3)
    pts = cams.center[:, None, :] + d  # [B, HW, 3]
    uv, z = project(cams, pts)
    inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= w) & (uv[..., 1] >= 0) & (uv[..., 1] <= h)
    uv = torch.where(inside[..., None], uv, torch.zeros_like(uv))
    grid = torch.stack([2.0 * uv[..., 0] / w - 1.0, 2.0 * uv[..., 1] / h - 1.0], -1).reshape(B, height, width, 2)
    out = F.grid_sample(images.permute(0, 3, 1, 2), grid, mode=mode, padding_mode="border", align_corners=False)
    mask = inside.reshape(B, height, width, 1).to(images.dtype)
    return out.permute(0, 2, 3, 1) * mask, mask


def equirect_rgbd_to_points(
    rgb: Tensor,
    depth: Tensor,
    *,
    center: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Lift an equirectangular RGB-D panorama to a coloured point cloud.

    Args:
        rgb: [H, W, C] colours (linear, [0, 1]).
        depth: [H, W] or [H, W, 1] distance along each pixel's ray (radial), metres.
        center: [3] panorama centre in world metres.
        mask: optional [H, W] or [H, W, 1] bool; only these pixels are lifted. Pixels with
            non-finite or non-positive depth are always dropped.

    Returns:
        points [N, 3] world metres and colours [N, C], in row-major pixel order.
    """
    H, W = rgb.shape[:2]
    dep = depth.reshape(H, W)
    keep = torch.isfinite(dep) & (dep > 0)
    if mask is not None:
        keep = keep & mask.reshape(H, W).bool()
    dirs = equirect_directions(H, W, dtype=dep.dtype, device=dep.device)
    c = torch.as_tensor(center, dtype=dep.dtype, device=dep.device).reshape(1, 3)
    pts = dirs[keep] * dep[keep][:, None] + c
    return pts, rgb[keep]


def equirect_rgbd_to_mesh(
    rgb: Tensor,
    depth: Tensor,
    *,
    mask: Tensor | None = None,
    stride: int = 1,
    max_stretch: float = 0.1,
    center: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
) -> Mesh:
    """A vertex-coloured triangle mesh of an equirectangular RGB-D panorama, facing its centre.

    One vertex per ``stride``-th pixel centre in each direction (columns wrap round the seam),
    two triangles per grid cell. A triangle is kept when its three pixels are in ``mask`` with a
    valid depth and its depths differ by at most ``max_stretch`` (relative: ``max / min - 1``),
    so depth discontinuities (an object's silhouette against the wall) are cut, not bridged.
    Triangles wind counter-clockwise seen from ``center`` (their normals face the viewer inside).

    Args:
        rgb: [H, W, 3] linear colours in [0, 1] (the vertex colours).
        depth: [H, W] radial distance, metres.
        mask: optional [H, W] bool of the pixels to mesh.
        stride: pixel step between vertices.
        max_stretch: relative depth spread above which a triangle is cut.
        center: [3] the panorama centre, world metres.

    Returns:
        A :class:`~layerforge.assets.types.Mesh` (unused vertices dropped), world metres.
    """
    from layerforge.assets.types import Mesh

    H, W = depth.shape[:2]
    rows = torch.arange(0, H, stride)
    cols = torch.arange(0, W, stride)
    d = depth.reshape(H, W).double()[rows][:, cols]
    ok = torch.isfinite(d) & (d > 0)
    if mask is not None:
        ok = ok & mask.reshape(H, W).bool()[rows][:, cols]
    dirs = equirect_directions(H, W, dtype=torch.float64)[rows][:, cols]
    c = torch.as_tensor(center, dtype=torch.float64).reshape(1, 1, 3)
    pts = dirs * torch.where(ok, d, torch.ones_like(d))[..., None] + c
    h, w = d.shape
    idx = torch.arange(h * w).reshape(h, w)
    a, b = idx[:-1], idx[:-1].roll(-1, dims=1)  # (i, j), (i, j + 1), wrapping round the seam
    cc, dd = idx[1:], idx[1:].roll(-1, dims=1)
    tris = torch.cat([torch.stack([a, cc, b], -1).reshape(-1, 3), torch.stack([b, cc, dd], -1).reshape(-1, 3)])
    if w < 3:
        tris = tris[:0]
    flat_ok, flat_d, flat_p = ok.reshape(-1), d.reshape(-1), pts.reshape(-1, 3)
    keep = flat_ok[tris].all(1)
    td = torch.where(flat_ok, flat_d, torch.ones_like(flat_d))[tris]
    keep &= td.max(1).values / td.min(1).values.clamp_min(1e-12) - 1.0 <= max_stretch
    tris = tris[keep]
    p0, p1, p2 = flat_p[tris[:, 0]], flat_p[tris[:, 1]], flat_p[tris[:, 2]]
    normal = torch.cross(p1 - p0, p2 - p0, dim=-1)
    away = (normal * ((p0 + p1 + p2) / 3 - c.reshape(1, 3))).sum(-1) > 0  # facing away from the centre
    tris = torch.where(away[:, None], tris[:, [0, 2, 1]], tris)
    used, inverse = torch.unique(tris.reshape(-1), return_inverse=True)
    colours = rgb.reshape(H, W, -1)[rows][:, cols].reshape(-1, rgb.shape[-1])[used, :3]
    return Mesh(flat_p[used].float().numpy(), inverse.reshape(-1, 3).numpy(), colors=colours.float().clamp(0, 1).numpy())
