"""LayerPano3D layer completion: what is behind a removed layer, in colour and in depth.

Per layer (LayerPano3D): the layer's mask is dilated (50 px at 1440 px width,
:func:`scaled_radius`), the RGB behind it is inpainted (:func:`inpaint_panorama`, across the
seam) and the depth behind it is completed from the outer (farther) layer's depth around the
hole (:func:`complete_depth`: planes where the surroundings are planar, a harmonic surface
otherwise, never in front of what was removed).

Panorama convention as in :mod:`layerforge.renderers.panorama`: [H, W] equirectangular, world
+Z up, depth is RADIAL distance in metres, and the horizontal edges wrap (column W-1
neighbours column 0); the top and bottom rows do not wrap.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from scipy.sparse.linalg import spsolve
from torch import Tensor

from layerforge.errors import InputError
from layerforge.renderers.panorama import equirect_directions

__all__ = ["complete_depth", "dilate_mask", "inpaint_panorama", "scaled_radius"]

PAPER_WIDTH = 1440  # the width the paper's pixel sizes refer to
BEHIND_MARGIN = 1e-3  # a completed surface is at least this much (relative) behind the removed one
_RANSAC_ITERS = 256
_MIN_EXPLAINED = 0.5  # planes explaining less of the ring than this -> harmonic fill alone
_FRONTMOST = 0.9  # a plane must be the max of the planes on this share of its own inliers
_MAX_DEPTH_RATIO = 20.0  # a filled depth is at most this many times the farthest ring depth


def _np_bool(mask: Tensor) -> np.ndarray:
    return np.asarray(mask.detach().cpu().numpy() if isinstance(mask, Tensor) else mask).astype(bool)


def dilate_mask(mask: Tensor, radius_px: int) -> Tensor:
    """Dilate ``mask`` [H, W] bool by a disk of ``radius_px`` (pixels p with some True pixel
    q, ``|p - q|^2 <= r^2``); wraps horizontally (the seam), not vertically."""
    m = _np_bool(mask)
    if m.ndim != 2:
        raise ValueError(f"need a mask [H, W], got {m.shape}")
    r = int(radius_px)
    if r <= 0 or not m.any():
        return torch.from_numpy(m.copy()).to(mask.device if isinstance(mask, Tensor) else "cpu")
    W = m.shape[1]
    padded = np.pad(m, ((0, 0), (r, r)), mode="wrap")
    dist = ndimage.distance_transform_edt(~padded)
    out = (dist <= r)[:, r:r + W]  # np.pad tiles when r > W: every wrapped copy is seen
    return torch.from_numpy(np.ascontiguousarray(out)).to(mask.device if isinstance(mask, Tensor) else "cpu")


def scaled_radius(radius_px_at_1440: int, width: int) -> int:
    """The paper's pixel radius (given at 1440 px width) at ``width``: rounded half up,
    ``floor(r * width / 1440 + 0.5)``, at least 1 when the input is > 0 (0 stays 0).
    ``scaled_radius(50, 1440) == 50``, ``scaled_radius(50, 256) == 9`` (8.89)."""
    if radius_px_at_1440 <= 0:
        return 0
    return max(1, math.floor(radius_px_at_1440 * width / PAPER_WIDTH + 0.5))


def _harmonic(values: np.ndarray, known: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Harmonic interpolation of ``values`` into ``hole`` (5-point Laplace, horizontal wrap).

    Hole pixels' 4-neighbours outside the hole are Dirichlet values where ``known``, else left
    out (zero-flux); so are the neighbours beyond the top and bottom rows. A connected part of
    the hole with no known neighbour gets the mean of all the Dirichlet values used.

    Returns [n] values at ``np.nonzero(hole)`` (row-major).
    """
    H, W = hole.shape
    hi, hj = np.nonzero(hole)
    n = hi.size
    index = np.full((H, W), -1, dtype=np.int64)
    index[hi, hj] = np.arange(n)
    diag = np.zeros(n)
    rhs = np.zeros(n)
    rows, cols = [], []
    for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        qi, qj = hi + di, (hj + dj) % W
        inside = (qi >= 0) & (qi < H)
        p = np.flatnonzero(inside)
        qi, qj = qi[inside], qj[inside]
        in_hole = hole[qi, qj]
        # neighbour inside the hole: an unknown
        rows.append(p[in_hole])
        cols.append(index[qi[in_hole], qj[in_hole]])
        diag[p[in_hole]] += 1.0
        # neighbour outside: Dirichlet where known
        kn = ~in_hole & known[qi, qj]
        np.add.at(diag, p[kn], 1.0)
        np.add.at(rhs, p[kn], values[qi[kn], qj[kn]])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    # np.add.at above handles repeated (p, q) pairs (W <= 2 wraps onto the same pixel)
    adj = sparse.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n)).tocsr()
    ncomp, comp = csgraph.connected_components(adj, directed=False)
    dirichlet = diag - np.asarray(adj.sum(axis=1)).ravel()  # the number of known neighbours
    comp_bc = np.bincount(comp, weights=dirichlet, minlength=ncomp) > 0
    has_bc = comp_bc[comp]
    if not has_bc.all():
        total = dirichlet.sum()
        fallback = rhs.sum() / total if total > 0 else float(values[known].mean())
        diag[~has_bc] += 1.0
        rhs[~has_bc] += fallback
    A = (sparse.diags(diag) - adj).tocsc()
    return np.asarray(spsolve(A, rhs)).reshape(-1)


def _refine_plane(D: np.ndarray, y: np.ndarray, w: np.ndarray, tol: float) -> np.ndarray:
    """Least squares on the inliers (relative residuals), the inlier band shrinking to 3 robust
    sigmas of the fit (not below tol / 1000): points of a neighbouring surface that fall within
    ``tol`` of the plane near their common edge do not tilt it."""
    band = tol
    for it in range(8):
        inl = np.abs(D @ w - y) <= band * y
        if inl.sum() < 3:
            break
        s = 1.0 / y[inl]
        w = np.linalg.lstsq(D[inl] * s[:, None], y[inl] * s, rcond=None)[0]
        rel = np.abs(D[inl] @ w - y[inl]) * s
        new_band = min(tol, max(3.0 * 1.4826 * float(np.median(rel)), tol * 1e-3))
        if new_band >= band and it > 0:
            break
        band = new_band
    return w


def _fit_planes(D: np.ndarray, y: np.ndarray, max_planes: int, tol: float,
                rng: np.random.Generator) -> list[np.ndarray]:
    """Sequential RANSAC of planes 1/d = w . dir on ring samples (D [m, 3] unit rays, y [m] 1/d)."""
    m = y.size
    min_inliers = max(8, math.ceil(0.02 * m))
    remaining = np.arange(m)
    planes: list[np.ndarray] = []
    for _ in range(max_planes):
        if remaining.size < min_inliers:
            break
        Dr, yr = D[remaining], y[remaining]
        pick = rng.integers(0, remaining.size, size=(_RANSAC_ITERS, 3))
        A, b = Dr[pick], yr[pick]
        ok = np.abs(np.linalg.det(A)) > 1e-9
        if not ok.any():
            break
        w = np.linalg.solve(A[ok], b[ok][..., None])[..., 0]  # [g, 3]
        rel = np.abs(Dr @ w.T - yr[:, None]) / yr[:, None]  # [r, g]
        # MSAC: truncated quadratic score, so an exact fit beats a tilted one with more inliers
        best = int(np.argmin((np.minimum(rel, tol) ** 2).sum(0)))  # first best: deterministic
        wb = _refine_plane(Dr, yr, w[best], tol)
        inl = np.abs(Dr @ wb - yr) <= tol * yr
        if inl.sum() < min_inliers:
            break
        planes.append(wb)
        remaining = remaining[~inl]
    # keep only planes that are in front (the max) where they fit: a room seen from inside
    while planes:
        P = D @ np.stack(planes, 1)  # [m, p]
        top = P.max(1)
        share = []
        for i in range(len(planes)):
            own = np.abs(P[:, i] - y) <= tol * y
            share.append(float((P[own, i] >= top[own] - tol * y[own]).mean()) if own.any() else 0.0)
        worst = int(np.argmin(share))
        if share[worst] >= _FRONTMOST:
            break
        planes.pop(worst)
    if planes:
        top = (D @ np.stack(planes, 1)).max(1)
        if (np.abs(top - y) <= tol * y).mean() < _MIN_EXPLAINED:
            planes = []
    return planes


def complete_depth(depth: Tensor, hole: Tensor, *, behind: Tensor | None = None, ring_px: int = 4,
                   max_planes: int = 3, plane_tol: float = 0.01, seed: int = 0) -> Tensor:
    """Fill the depth inside ``hole`` from the surrounding (outer-layer) depth so that a far
    surface stays planar where it is planar and smooth otherwise.

    Model: a plane ``n . x = c`` seen from the origin has inverse radial depth
    ``1/d = w . dir`` (``w = n / c``), linear in the ray direction; the inside of a convex room
    is the max of its planes' ``w_i . dir``. So: up to ``max_planes`` planes are fitted by
    sequential RANSAC (a generator seeded with ``seed``) on the ring (``dilate(hole, ring_px)``
    minus the hole, valid depth only) in the space ``1/d = w . dir`` (inliers within
    ``plane_tol`` relative), each refined by least squares on its inliers; a plane that is not
    the frontmost (the max) on 90 % of its own inliers is dropped. Inside the hole
    ``1/d = max_i w_i . dir`` is predicted, and the residual (the true 1/d of the pixels around
    the hole minus the prediction) is interpolated harmonically (5-point Laplace equation with
    Dirichlet values from the surrounding pixels, horizontal wrap, ``scipy.sparse`` spsolve) and
    added. If the planes explain fewer than 20 % of the ring (within ``plane_tol``), or where
    they predict no positive 1/d, the harmonic fill of 1/d alone is used. Filled depths are
    capped at 20x the farthest ring depth.

    Where ``behind`` (the depth of the removed occluder) is given and valid, the result is at
    least ``behind * (1 + 1e-3)``: the completed surface is behind what was removed.

    Args:
        depth: [H, W] radial depth, metres (values inside the hole are ignored).
        hole: [H, W] bool, True = to fill.
        behind: optional [H, W] radial depth of the removed occluder, metres.

    Returns:
        [H, W] depth of ``depth``'s dtype; pixels outside the hole bit-identical to ``depth``.

    Raises:
        InputError: the hole covers everything, or the ring around it has no valid depth.
    """
    if depth.dim() != 2 or tuple(hole.shape) != tuple(depth.shape):
        raise ValueError(f"need depth and hole [H, W] of one shape, got {tuple(depth.shape)} and {tuple(hole.shape)}")
    if ring_px < 1:
        raise ValueError(f"ring_px={ring_px} must be >= 1")
    H, W = depth.shape
    h = _np_bool(hole)
    out = depth.clone()
    if h.all():
        raise InputError("complete_depth: the hole covers the whole panorama", "leave some valid depth around the hole")
    if not h.any():
        return out
    d = depth.detach().cpu().double().numpy()
    valid = np.isfinite(d) & (d > 0) & ~h
    ring = _np_bool(dilate_mask(torch.from_numpy(h), ring_px)) & valid
    if not ring.any():
        raise InputError("complete_depth: no valid depth around the hole",
                         "pass finite, positive depth next to the hole (or a smaller hole)")
    inv = np.zeros_like(d)
    inv[valid] = 1.0 / d[valid]
    dirs = equirect_directions(H, W, dtype=torch.float64).numpy()
    y_ring = inv[ring]
    floor = y_ring.min() / _MAX_DEPTH_RATIO
    planes = _fit_planes(dirs[ring], y_ring, max_planes, plane_tol, np.random.default_rng(seed))

    hi, hj = np.nonzero(h)
    fill = np.full(hi.size, np.nan)
    if planes:
        pred = (dirs @ np.stack(planes, 1)).max(-1)  # [H, W]
        usable = pred > floor
        known = valid & usable
        residual = np.where(known, inv - pred, 0.0)
        fill = pred[hi, hj] + _harmonic(residual, known, h)
        fill[~usable[hi, hj]] = np.nan
    if np.isnan(fill).any():
        plain = _harmonic(inv, valid, h)
        fill = np.where(np.isnan(fill), plain, fill)
    fill = np.maximum(fill, floor)
    dfill = 1.0 / fill
    if behind is not None:
        if tuple(behind.shape) != (H, W):
            raise ValueError(f"behind {tuple(behind.shape)} must have the depth's shape {(H, W)}")
        b = behind.detach().cpu().double().numpy()[hi, hj]
        ok = np.isfinite(b) & (b > 0)
        dfill[ok] = np.maximum(dfill[ok], b[ok] * (1.0 + BEHIND_MARGIN))
    out[torch.from_numpy(h).to(out.device)] = torch.from_numpy(dfill).to(device=out.device, dtype=out.dtype)
    return out


def inpaint_panorama(inpainter, rgb: Tensor, hole: Tensor, *, prompt: str | None = None,
                     wrap_px: int | None = None) -> Tensor:
    """Inpaint across the seam: the panorama is padded horizontally with ``wrap_px``
    (default ``W // 8``) columns from the other side, the padded image is inpainted with the
    padded mask (``inpainter(image, mask, prompt=prompt)``, e.g. an
    :class:`~layerforge.models.guidance.inpaint.Inpainter`) and cropped back.

    Args:
        rgb: [H, W, 3] linear RGB.
        hole: [H, W] bool, True = to fill.

    Returns:
        [H, W, 3] of ``rgb``'s dtype; pixels outside the hole bit-identical to ``rgb`` (also
        where the inpainter dilates its mask).
    """
    if rgb.dim() != 3 or rgb.shape[2] != 3 or tuple(hole.shape) != tuple(rgb.shape[:2]):
        raise ValueError(f"need rgb [H, W, 3] and hole [H, W], got {tuple(rgb.shape)} and {tuple(hole.shape)}")
    W = rgb.shape[1]
    p = W // 8 if wrap_px is None else int(wrap_px)
    p = max(0, min(p, W))
    m = hole.to(device=rgb.device, dtype=torch.bool)
    out = rgb.clone()
    if not bool(m.any()):
        return out
    if p > 0:
        img = torch.cat([rgb[:, W - p:], rgb, rgb[:, :p]], dim=1)
        msk = torch.cat([m[:, W - p:], m, m[:, :p]], dim=1)
    else:
        img, msk = rgb, m
    filled = torch.as_tensor(inpainter(img, msk, prompt=prompt))
    filled = filled[:, p:p + W].to(device=rgb.device, dtype=rgb.dtype)
    out[m] = filled[m]
    return out
