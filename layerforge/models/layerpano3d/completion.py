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
_WELL_EXPLAINED = 0.95  # below this share the plane fill is checked against the harmonic fill
_MAX_DISAGREEMENT = 1.5  # ... and dropped if they differ by more than this factor anywhere
_FRONTMOST = 0.9  # a plane must be the max of the planes on this share of its own inliers
_MAX_DEPTH_RATIO = 20.0  # a filled depth is at most this many times the farthest ring depth
# A plane fill reaching farther than this times the hole's farthest ring depth extrapolates planes
# into a surface the ring never saw (a hole hiding a whole wall: the other walls' max runs off to
# infinity there); the smooth fill is used for that hole instead. A hidden box corner is at most
# ~1.3x farther than the ring around it, so 1.5 leaves real corners to the planes.
_MAX_BEYOND_RING = 1.5


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
                rng: np.random.Generator) -> tuple[list[np.ndarray], float]:
    """Sequential RANSAC of planes 1/d = w . dir on ring samples (D [m, 3] unit rays, y [m] 1/d).

    Returns the planes (none when they explain less than half the ring) and the share of the
    ring their max explains within ``tol``."""
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
    explained = 0.0
    if planes:
        top = (D @ np.stack(planes, 1)).max(1)
        explained = float((np.abs(top - y) <= tol * y).mean())
        if explained < _MIN_EXPLAINED:
            planes = []
    return planes, explained


def _wrapped_labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of ``mask`` with the horizontal wrap: labels 1..n (0 outside),
    numbered by their first pixel in raster order."""
    lab, n = ndimage.label(mask)
    if n == 0:
        return lab, 0
    parent = np.arange(n + 1)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    seam = mask[:, 0] & mask[:, -1]
    for a, b in zip(lab[seam, 0].tolist(), lab[seam, -1].tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n + 1)])
    merged = roots[lab]
    first = {}
    for v in merged.ravel()[np.flatnonzero(merged.ravel())].tolist():
        first.setdefault(v, len(first) + 1)
    relabel = np.zeros(n + 1, dtype=np.int64)
    for v, k in first.items():
        relabel[v] = k
    return relabel[merged], len(first)


def _nearest_label(labels: np.ndarray, reach: int) -> np.ndarray:
    """For every pixel, the label of the nearest labelled pixel (Euclidean, horizontal wrap);
    pixels farther than ``reach`` get 0."""
    W = labels.shape[1]
    p = min(max(int(reach), 1), W)
    padded = np.pad(labels, ((0, 0), (p, p)), mode="wrap")
    dist, (ii, jj) = ndimage.distance_transform_edt(padded == 0, return_indices=True)
    near = padded[ii, jj]
    near[dist > reach] = 0
    return near[:, p:p + W]


def _fill_component(comp: np.ndarray, ring: np.ndarray, inv: np.ndarray, valid: np.ndarray,
                    dirs: np.ndarray, floor: float, max_planes: int, tol: float,
                    rng: np.random.Generator) -> np.ndarray:
    """1/d inside one connected hole ``comp`` from its ``ring``: planes + harmonic residual, or
    the harmonic fill alone. Returns the values at ``np.nonzero(comp)``."""
    hi, hj = np.nonzero(comp)
    planes, explained = _fit_planes(dirs[ring], inv[ring], max_planes, tol, rng)
    fill = np.full(hi.size, np.nan)
    if planes:
        pred = (dirs @ np.stack(planes, 1)).max(-1)  # [H, W]
        usable = pred > floor
        known = valid & usable
        residual = np.where(known, inv - pred, 0.0)
        fill = pred[hi, hj] + _harmonic(residual, known, comp)
        fill[~usable[hi, hj]] = np.nan
        farthest_ring = 1.0 / inv[ring].min()
        with np.errstate(divide="ignore", invalid="ignore"):
            if np.nanmax(np.where(fill > 0, 1.0 / fill, np.inf)) > _MAX_BEYOND_RING * farthest_ring:
                fill[:] = np.nan
    if np.isnan(fill).any() or (planes and explained < _WELL_EXPLAINED):
        plain = _harmonic(inv, valid, comp)
        if planes and explained < _WELL_EXPLAINED:
            # part of the ring is not on the planes (e.g. a fourth wall beyond max_planes): a
            # plane fill far from the smooth one is an extrapolation gone wrong, not geometry
            ratio = np.where(np.isnan(fill), 1.0, fill / plain)
            if ratio.max() > _MAX_DISAGREEMENT or ratio.min() < 1.0 / _MAX_DISAGREEMENT:
                fill[:] = np.nan
        fill = np.where(np.isnan(fill), plain, fill)
    return fill


def complete_depth(depth: Tensor, hole: Tensor, *, behind: Tensor | None = None, ring_px: int = 4,
                   max_planes: int = 4, plane_tol: float = 0.01, seed: int = 0) -> Tensor:
    """Fill the depth inside ``hole`` from the surrounding (outer-layer) depth so that a far
    surface stays planar where it is planar and smooth otherwise.

    Every connected part of the hole (4-connected, across the seam) is completed on its own,
    from the ring pixels nearest to it. Model: a plane ``n . x = c`` seen from the origin has inverse radial depth
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
    they predict no positive 1/d, the harmonic fill of 1/d alone is used; so it is when the
    planes leave more than 5 % of the ring unexplained and their fill differs from the harmonic
    one by more than a factor 1.5 somewhere (a surface missing from the fit, e.g. a fourth wall
    beyond ``max_planes``: its extrapolation would be far off), and when the plane fill reaches
    farther than 1.5x the hole's farthest ring depth (a hole that hides a whole wall: the planes
    that remain never meet there). Filled depths are capped at 20x the farthest ring depth.

    (Half the ring, not the ~20 % first planned: a single tangent plane explains 25-38 % of
    the ring of a smooth curved surface within 1 %, and extrapolating it gave 10 % errors where
    the harmonic fill gives 0.4 %.)

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
    floor = inv[ring].min() / _MAX_DEPTH_RATIO
    hi, hj = np.nonzero(h)
    fill = np.full((H, W), np.nan)
    comps, ncomp = _wrapped_labels(h)
    ring_comp = _nearest_label(comps, ring_px)  # the hole component each ring pixel belongs to
    for c in range(1, ncomp + 1):
        comp = comps == c
        ring_c = ring & (ring_comp == c)
        if not ring_c.any():
            continue  # no valid depth around this part: the harmonic fill below, from all rings
        rng = np.random.default_rng([seed, int(comp.sum())])  # invariant to rolling the panorama
        fill[comp] = _fill_component(comp, ring_c, inv, valid, dirs, floor, max_planes, plane_tol, rng)
    rest = np.isnan(fill) & h
    if rest.any():
        fill[rest] = _harmonic(inv, valid, rest)
    fill = fill[hi, hj]
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
