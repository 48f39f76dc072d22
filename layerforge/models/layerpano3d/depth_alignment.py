"""Panorama depth from a perspective monocular depth model: tangent views, joint affine alignment, blend.

LayerPano3D (via 360MonoDepth) cuts the panorama into 20 icosahedral tangent images, runs a
monocular depth model on each, aligns the per-view predictions with a C++/Ceres solver and
blends them. Here the same is pure torch/scipy:

1. :func:`tangent_cameras`: square perspective views at the origin looking at the 20
   icosahedron face centres (or the 6 cube faces), wide enough that neighbours overlap;
2. one estimator call per view (:func:`estimate_panorama_depth`);
3. :func:`align_views`: one ``(scale, shift)`` per view, solved jointly as a sparse linear least
   squares problem so that every pair of views agrees where both see the same panorama pixel;
4. :func:`blend_views`: the aligned views resampled to the equirectangular grid and feathered
   together into one radial depth panorama.

Conventions are :mod:`layerforge.renderers.panorama`'s: world +Z up, depth panoramas hold the
RADIAL distance along each ray. A view's camera z of a panorama pixel is
``radial * cos``, with ``cos`` the cosine between the pixel's ray and the view's optical axis
(:func:`view_geometry`).

What the alignment can and cannot see. Relative models predict ``p = a / z + b``
("inverse_depth": DPT, MiDaS, relative Depth Anything; affine-invariant in inverse camera z)
or ``p = a z + b`` ("depth"), with unknown ``a, b`` per image. Two views see the same point at
the same radial distance but at different camera z (different ``cos``), so

- a global scale of all views is unobservable from overlaps (every residual scales with it):
  it is fixed by the gauge ``s_0 = 1`` (view 0's scale);
- a shift is NOT a free gauge: a constant added to every view's inverse camera z adds
  ``shift * cos_i`` to view i's inverse radial depth, which differs between views where they
  overlap. The only consistent solution has every aligned view equal to ``c / z`` (or ``c z``)
  with zero shift, so all shifts, view 0's included, are solved for. (Fixing ``t_0 = 0`` as
  well would pin view 0's own model shift ``b_0`` into the result and leave inconsistent
  overlaps, even on exact data.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import scipy.linalg
import scipy.ndimage
import scipy.sparse
import torch
import torch.nn.functional as F
from torch import Tensor

from layerforge.errors import InputError
from layerforge.renderers.cameras import Camera, intrinsics_from_fov, look_at
from layerforge.renderers.panorama import equirect_directions, equirect_to_perspective

__all__ = [
    "CUBEMAP_FOV_DEG",
    "ICOSAHEDRON_FOV_DEG",
    "Alignment",
    "Layout",
    "Prediction",
    "align_views",
    "blend_views",
    "estimate_panorama_depth",
    "icosahedron_face_centres",
    "room_prior_depth",
    "scale_to_camera_height",
    "tangent_cameras",
    "view_geometry",
]

Layout = Literal["icosahedron", "cubemap"]
Prediction = Literal["inverse_depth", "depth"]

# Icosahedron faces have a circumradius of 37.38 deg (face centre to its corners) and
# neighbouring face centres are 41.81 deg apart. An 80 deg square view reaches at least 40 deg
# from its axis in every direction (its inscribed circle), so it covers its whole face at any
# roll, and two neighbours share a band 80 - 41.8 = 38 deg wide along the line joining their
# centres: every direction is seen by 2 to 5 views (measured on a 256 x 512 grid).
ICOSAHEDRON_FOV_DEG = 80.0
# Cube faces end 45 deg from their axis; 100 deg views reach 50 deg, so neighbouring faces
# share a 10 deg band across every cube edge (corners, 54.7 deg off-axis, are inside the
# 59.3 deg half-diagonal). Every direction is seen by 1 to 3 views, 18.5 % of the sphere by >= 2.
# Its +-Z views look straight at the floor / ceiling: when their overlap bands see only that flat
# plane, their scale and shift are inseparable (align_views refuses); the icosahedron has no
# view facing a horizontal plane.
CUBEMAP_FOV_DEG = 100.0

# A view whose predictions are more than this fraction NaN / inf / masked out is refused.
MAX_INVALID_FRACTION = 0.5
# Robust re-solves of the alignment: residuals beyond this many robust sigmas are dropped.
_TRIM_SIGMAS = 3.0
_TRIM_ROUNDS = 20
# ... but residuals below this fraction of the typical aligned value are never dropped (exact data)
_TRIM_FLOOR = 1e-5


@dataclasses.dataclass
class Alignment:
    """Per-view affine of the predictions, from :func:`align_views`.

    Attributes:
        scale: [B] ``s_i`` (``s_0 = 1``, the gauge), float64.
        shift: [B] ``t_i``, float64; view i's aligned prediction is ``s_i p_i + t_i``.
        rms: rms disagreement of the aligned views over their overlaps (area-weighted, over the
            samples kept), in the alignment space: inverse radial depth for "inverse_depth",
            radial depth for "depth", in units of view 0's prediction.
        pairs: overlap samples (view pairs x panorama pixels) used in the final solve.
    """

    scale: Tensor
    shift: Tensor
    rms: float
    pairs: int


# --- cameras ------------------------------------------------------------------------------------


def icosahedron_face_centres() -> Tensor:
    """Unit directions [20, 3] (float64) of the icosahedron face centres, one vertex at +Z.

    The icosahedron has vertices at both poles and two rings of 5 at latitude
    ``+-atan(1/2)`` (26.57 deg), the lower ring rotated by 36 deg. Its faces are 5 around each
    pole (centres at latitude +-52.62 deg) and a band of 10 (centres at +-10.81 deg). Sorted by
    latitude (top first), then longitude.
    """
    lat = math.atan(0.5)
    lon_up = torch.arange(5, dtype=torch.float64) * (2 * math.pi / 5)
    lon_lo = lon_up + math.pi / 5
    ring = [
        torch.stack([math.cos(lat) * lon.cos(), math.cos(lat) * lon.sin(), torch.full_like(lon, z)], -1)
        for lon, z in ((lon_up, math.sin(lat)), (lon_lo, -math.sin(lat)))
    ]
    verts = torch.cat([torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64), ring[0], ring[1],
                       torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)])
    # faces: triples of mutually adjacent vertices (adjacent = the shortest vertex distance)
    dist = torch.cdist(verts, verts)
    edge = dist[dist > 1e-9].min()
    adj = (dist - edge).abs() < 1e-6
    faces = [(i, j, k) for i in range(12) for j in range(i + 1, 12) for k in range(j + 1, 12)
             if adj[i, j] and adj[j, k] and adj[i, k]]
    centres = torch.nn.functional.normalize(torch.stack([verts[list(f)].sum(0) for f in faces]), dim=-1)
    lat_c = torch.asin(centres[:, 2].clamp(-1, 1))
    lon_c = torch.remainder(torch.atan2(centres[:, 1], centres[:, 0]), 2 * math.pi)
    order = sorted(range(len(faces)), key=lambda i: (-round(float(lat_c[i]), 6), float(lon_c[i])))
    return centres[order]


_CUBE_AXES = ((1, 0, 0), (0, 1, 0), (-1, 0, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))


def tangent_cameras(layout: Layout, size: int, fov_deg: float | None = None) -> Camera:
    """Square perspective cameras (size x size px) at the origin looking at the 20 icosahedron
    face centres (:func:`icosahedron_face_centres` order) or the 6 cube faces (+X, +Y, -X, -Y,
    +Z, -Z), image up along world +Z where defined.

    Args:
        layout: "icosahedron" or "cubemap".
        size: view width = height in pixels.
        fov_deg: field of view (horizontal = vertical), degrees; default
            :data:`ICOSAHEDRON_FOV_DEG` / :data:`CUBEMAP_FOV_DEG`.

    Returns:
        A float32 Camera batch of 20 or 6 views.
    """
    if layout == "icosahedron":
        fwd = icosahedron_face_centres()
        fov = ICOSAHEDRON_FOV_DEG if fov_deg is None else float(fov_deg)
    elif layout == "cubemap":
        fwd = torch.tensor(_CUBE_AXES, dtype=torch.float64)
        fov = CUBEMAP_FOV_DEG if fov_deg is None else float(fov_deg)
    else:
        raise InputError(f"unknown tangent layout {layout!r}", "use 'icosahedron' or 'cubemap'")
    if not 0.0 < fov < 180.0 or int(size) < 2:
        raise InputError(f"tangent views need 0 < fov_deg < 180 and size >= 2, got {fov} and {size}",
                         "pass a field of view such as 80 (icosahedron) or 100 (cubemap)")
    zero = torch.zeros_like(fwd)
    w2c = look_at(zero, fwd)
    K = intrinsics_from_fov(torch.full((len(fwd),), fov, dtype=torch.float64), size, size, dtype=torch.float64)
    return Camera(K, w2c, int(size), int(size)).to(dtype=torch.float32)


# --- sampling the views on the panorama grid ---------------------------------------------------


def _projection(cameras: Camera, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """uv [B, N, 2] (view pixels), inside [B, N], cos [B, N], edge [B, N] for the N = H*W panorama
    pixels; float64. Only the cameras' rotations matter (the panorama is at infinity)."""
    cams = cameras.to(device=device, dtype=torch.float64)
    d = equirect_directions(height, width, dtype=torch.float64, device=device).reshape(-1, 3)
    rot = cams.world_to_camera[:, :3, :3]
    pc = torch.einsum("bij,nj->bni", rot, d)  # unit rays in each camera frame
    z = pc[..., 2]
    zs = torch.where(z > 1e-9, z, torch.ones_like(z))
    pix = torch.einsum("bij,bnj->bni", cams.K, pc / zs[..., None])
    u, v = pix[..., 0], pix[..., 1]
    w, h = cams.width, cams.height
    inside = (z > 1e-9) & (u >= 0) & (u <= w) & (v >= 0) & (v <= h)
    # feather: product of the distances to the nearer vertical / horizontal border, 1 at the
    # centre, 0 on the border
    eu = (torch.minimum(u, w - u) / (0.5 * w)).clamp(0, 1)
    ev = (torch.minimum(v, h - v) / (0.5 * h)).clamp(0, 1)
    edge = torch.where(inside, eu * ev, torch.zeros_like(eu))
    return torch.stack([u, v], -1), inside, z, edge


def view_geometry(cameras: Camera, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Where each view sees the panorama.

    Args:
        cameras: B views at the panorama centre (only their rotation is used).
        height, width: panorama size in pixels.

    Returns:
        mask [B, H, W] bool (the panorama pixel's ray falls inside view b's image) and
        cos [B, H, W] float64, the cosine between that ray and view b's optical axis (negative
        behind the camera), so a point at radial distance r has camera z ``r * cos``.
    """
    _, inside, cos, _ = _projection(cameras, height, width, cameras.device)
    B = len(cameras)
    return inside.reshape(B, height, width), cos.reshape(B, height, width)


def _check_predictions(predictions: Tensor, cameras: Camera, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """float64 predictions [B, h, w] (0 where unusable) and the usable mask [B, h, w]."""
    B, h, w = len(cameras), cameras.height, cameras.width
    if not isinstance(predictions, Tensor) or predictions.shape != (B, h, w):
        shape = tuple(predictions.shape) if isinstance(predictions, Tensor) else type(predictions).__name__
        raise InputError(f"predictions must be [{B}, {h}, {w}] (one {h}x{w} map per view), got {shape}",
                         "pass one prediction per tangent camera at the cameras' size")
    pred = predictions.detach().to(torch.float64)
    ok = torch.isfinite(pred)
    if valid is not None:
        if valid.shape != (B, h, w):
            raise InputError(f"valid must be [{B}, {h}, {w}] like predictions, got {tuple(valid.shape)}",
                             "pass one bool mask per view or None")
        ok = ok & valid.to(device=pred.device).bool()
    bad = 1.0 - ok.double().mean((1, 2))
    worst = int(bad.argmax())
    if float(bad[worst]) > MAX_INVALID_FRACTION:
        raise InputError(f"view {worst}: {float(bad[worst]):.0%} of its depth predictions are NaN/inf or masked "
                         f"(more than {MAX_INVALID_FRACTION:.0%})",
                         "check the depth model's output for that view")
    return torch.where(ok, pred, torch.zeros_like(pred)), ok


def _sample_views(pred: Tensor, ok: Tensor, cameras: Camera, height: int, width: int):
    """Bilinear samples of each view at the panorama pixels: values [B, N], usable [B, N] (inside
    the view's outermost pixel centres and all four bilinear taps valid), cos [B, N], edge
    feather [B, N]."""
    _, h, w = pred.shape
    uv, inside, cos, edge = _projection(cameras, height, width, pred.device)
    grid = torch.stack([2.0 * uv[..., 0] / w - 1.0, 2.0 * uv[..., 1] / h - 1.0], -1)
    grid = torch.where(inside[..., None], grid, torch.zeros_like(grid))[:, None]  # [B, 1, N, 2]
    vals = F.grid_sample(pred[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0, 0]
    okf = F.grid_sample(ok[:, None].double(), grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0, 0]
    # the bilinear footprint must lie on pixel centres: no border-clamped extrapolation in the
    # outer half pixel
    u, v = uv.unbind(-1)
    interior = (u >= 0.5) & (u <= w - 0.5) & (v >= 0.5) & (v <= h - 0.5)
    usable = inside & interior & (okf > 1.0 - 1e-9)
    return torch.where(usable, vals, torch.zeros_like(vals)), usable, cos, edge, uv


def _sharpen_edges(img: Tensor, uv: Tensor, vals: Tensor, usable: Tensor, jump: float) -> Tensor:
    """Bilinear samples ``vals`` [B, N] of images ``img`` [B, h, w] at ``uv`` [B, N, 2] replaced by
    the nearest pixel where the four taps differ by more than ``jump`` (relative): a depth
    edge, where a bilinear mix would be a point floating between the two surfaces."""
    _, h, w = img.shape
    mx = F.max_pool2d(img[:, None], 2, stride=1)[:, 0].flatten(1)  # [B, (h-1)(w-1)] 2x2 windows
    mn = -F.max_pool2d(-img[:, None], 2, stride=1)[:, 0].flatten(1)
    j0 = torch.floor(uv[..., 0] - 0.5).clamp(0, w - 2).long()
    i0 = torch.floor(uv[..., 1] - 0.5).clamp(0, h - 2).long()
    idx = i0 * (w - 1) + j0
    hi, lo = mx.gather(1, idx), mn.gather(1, idx)
    spread = (hi - lo) / torch.maximum(hi.abs(), lo.abs()).clamp_min(1e-300)
    edge = usable & (spread > jump)
    if not bool(edge.any()):
        return vals
    jn = torch.floor(uv[..., 0]).clamp(0, w - 1).long()
    in_ = torch.floor(uv[..., 1]).clamp(0, h - 1).long()
    nearest = img.flatten(1).gather(1, in_ * w + jn)
    return torch.where(edge, nearest, vals)


def _gain(cos: Tensor, prediction: str) -> Tensor:
    """Factor from aligned camera-z space to the alignment space: inverse radial depth
    ``cos * (1/z)`` for inverse_depth, radial depth ``z / cos`` for depth."""
    if prediction == "inverse_depth":
        return cos
    if prediction == "depth":
        return 1.0 / cos.clamp_min(1e-9)
    raise InputError(f"unknown prediction kind {prediction!r}", "use 'inverse_depth' or 'depth'")


# --- alignment ---------------------------------------------------------------------------------


def align_views(
    predictions: Tensor,
    cameras: Camera,
    height: int,
    width: int,
    *,
    prediction: Prediction = "inverse_depth",
    max_samples: int = 200_000,
    valid: Tensor | None = None,
    noise_model: Literal["relative", "none"] = "relative",
) -> Alignment:
    """Jointly solve one ``(scale s_i, shift t_i)`` per view so overlapping views agree.

    Each view is sampled (bilinear) at the panorama pixels it sees. For every panorama pixel seen
    by >= 2 views and every pair (i, j) of them, one residual, linear in the unknowns:

    - ``prediction="inverse_depth"`` (DPT / MiDaS / relative Depth Anything, affine-invariant
      in inverse camera z): view i's aligned inverse camera z is ``s_i p_i + t_i``, its inverse
      RADIAL depth ``cos_i (s_i p_i + t_i)``; residual ``cos_i (s_i p_i + t_i) - cos_j (s_j p_j + t_j)``;
    - ``prediction="depth"`` (metric or relative depth models): radial depth
      ``(s_i p_i + t_i) / cos_i``, residual likewise.

    Residuals are weighted by the pixel's solid angle (cos latitude); at most ``max_samples``
    of them (a fixed random subset) form the sparse system ``A x`` (4 non-zeros a row,
    ``x = (s, t)``, 2B unknowns), minimised through its normal equations and re-solved (up to
    20 times, until the kept set settles) without the residuals beyond 3 robust sigmas: depth
    discontinuities and creases, where a bilinear sample mixes two surfaces.

    ``noise_model="relative"`` (default) takes the predictions as noisy: pinning ``s_0 = 1`` in
    a plain least squares biases the other scales low (errors in variables: noise on ``p_i``
    is multiplied by ``s_i``, so smaller scales pay less noise), by about ``noise^2 / var(p)``
    over the overlaps, which is large because ``p`` varies little there (1 % noise gave 2 %
    scale errors on a box room). The shifts are eliminated and the scales taken as the
    smallest generalised eigenvector of the reduced normal matrix against its diagonal (what
    relative noise adds), then rescaled to ``s_0 = 1`` (0.6 % on the same data).
    ``noise_model="none"`` is the plain least squares with ``s_0 = 1`` pinned.

    Gauge: the overlaps fix the views only relative to each other; multiplying every
    ``(s_i, t_i)`` by one factor multiplies every residual by it, so the global scale is
    unobservable (and the unconstrained minimum is the trivial all-zero solution). ``s_0 = 1``
    fixes it. A common shift is NOT unobservable (it changes inverse radial depth by
    ``t cos_i``, which differs between overlapping views; see the module docstring), so every
    ``t_i``, view 0's included, is solved: the aligned views are ``c / z`` (``c z``) with one
    common ``c`` (= view 0's model scale) and no shift.

    Args:
        predictions: [B, h, w] per-view model output (relative units), B = len(cameras).
        cameras: the B views (h x w px) at the panorama centre, e.g. :func:`tangent_cameras`.
        height, width: panorama grid the views are compared on, pixels.
        prediction: what the model predicts, "inverse_depth" or "depth".
        max_samples: most overlap residuals used.
        valid: optional [B, h, w] bool, False for pixels to ignore (NaN/inf are always ignored).
        noise_model: "relative" (noisy predictions, consistent eigen solve) or "none".

    Returns:
        The :class:`Alignment`.

    Raises:
        InputError: wrong shapes, a view with too many NaN predictions, no overlap at all, a view
            without any overlap with the others, or views that fall apart in separate groups.
    """
    B = len(cameras)
    if noise_model not in ("relative", "none"):
        raise InputError(f"unknown noise_model {noise_model!r}", "use 'relative' or 'none'")
    if B < 2:
        raise InputError(f"align_views needs >= 2 overlapping views, got {B}", "use tangent_cameras(...) views")
    pred, ok = _check_predictions(predictions, cameras, valid)
    vals, usable, cos, _, _ = _sample_views(pred, ok, cameras, height, width)
    g = _gain(cos, prediction)
    coef_s, coef_t = (g * vals).cpu(), g.cpu()
    usable = usable.cpu()
    lat = (0.5 - (torch.arange(height, dtype=torch.float64) + 0.5) / height) * math.pi
    area = lat.cos()[:, None].expand(height, width).reshape(-1)

    m = usable.double()
    overlap = m @ m.T
    pairs = [(i, j) for i in range(B) for j in range(i + 1, B) if overlap[i, j] > 0]
    total = int(sum(overlap[i, j] for i, j in pairs))
    if total == 0:
        raise InputError("the views share no panorama pixel with valid predictions (empty overlap)",
                         "use wider tangent views (fov_deg) or check the predictions for NaN")
    keep_frac = min(1.0, max_samples / total)
    gen = torch.Generator().manual_seed(0)
    rows_i, rows_j, pix = [], [], []
    for i, j in pairs:
        idx = torch.nonzero(usable[i] & usable[j]).reshape(-1)
        if keep_frac < 1.0:
            n = max(1, round(len(idx) * keep_frac))
            idx = idx[torch.randperm(len(idx), generator=gen)[:n]]
        rows_i.append(torch.full_like(idx, i))
        rows_j.append(torch.full_like(idx, j))
        pix.append(idx)
    vi, vj, px = torch.cat(rows_i), torch.cat(rows_j), torch.cat(pix)
    R = len(px)
    # columns: s_0..s_{B-1}, t_0..t_{B-1}; residual row = A @ x
    rows = np.repeat(np.arange(R), 4)
    cols = torch.stack([vi, B + vi, vj, B + vj], 1).reshape(-1).numpy()
    ci_s, ci_t = coef_s[vi, px].numpy(), coef_t[vi, px].numpy()
    data = torch.stack([coef_s[vi, px], coef_t[vi, px], -coef_s[vj, px], -coef_t[vj, px]], 1).reshape(-1).numpy()
    A = scipy.sparse.csr_matrix((data, (rows, cols)), shape=(R, 2 * B)).tocsc()
    w_area = area[px].numpy()
    vi_np = vi.numpy()

    per_view = np.bincount(np.concatenate([vi_np, vj.numpy()]), minlength=B)
    if (per_view == 0).any():
        view = int(np.nonzero(per_view == 0)[0][0])
        raise InputError(f"view {view} shares no valid overlap with the other views",
                         "use wider tangent views (fov_deg) or check that view's predictions")
    keep = np.ones(R, dtype=bool)
    x = None
    for _ in range(_TRIM_ROUNDS):
        x_new = _solve(A, w_area * keep, B, noise_model)
        if x_new is None:
            if x is None:
                raise InputError("the views' overlaps do not tie all views together (a singular alignment)",
                                 "use the icosahedron/cubemap tangent_cameras or wider views")
            break  # trimming disconnected a view: keep the previous solve
        x = x_new
        r = A @ x
        sigma = 1.4826 * float(np.median(np.abs(r[keep])))
        typical = float(np.median(np.abs(ci_s * x[vi_np] + ci_t * x[B + vi_np]))) or 1.0
        new_keep = np.abs(r) <= max(_TRIM_SIGMAS * sigma, _TRIM_FLOOR * typical)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    r = A @ x
    wk = w_area * keep
    rms = float(np.sqrt((wk * r * r).sum() / max(wk.sum(), 1e-300)))
    return Alignment(scale=torch.from_numpy(x[:B].copy()), shift=torch.from_numpy(x[B:].copy()),
                     rms=rms, pairs=int(keep.sum()))


def _solve(A: scipy.sparse.csc_matrix, w: np.ndarray, B: int, noise_model: str) -> np.ndarray | None:
    """Minimise sum w (A x)^2 over x = (s, t) [2B] with s_0 = 1; None if the problem is singular.

    "none": plain least squares with s_0 = 1 pinned. "relative": the shifts are eliminated
    (Schur complement) and the scales are the smallest generalised eigenvector of
    ``N_s v = lambda diag(N_ss) v``, rescaled to s_0 = 1; ``diag(N_ss)`` (the sum of w (g p)^2
    per view) is what relative noise on the predictions adds to the objective, so this
    minimum is not pulled towards small scales (the errors-in-variables bias of pinning s_0).
    """
    sw = np.sqrt(w)
    Aw = scipy.sparse.diags(sw) @ A
    N = (Aw.T @ Aw).toarray()
    d = np.sqrt(np.diag(N))
    if np.any(d <= 0):
        return None
    Ns = N / d[:, None] / d[None, :]  # Jacobi scaling: unit diagonal
    if noise_model == "none":
        Nf = Ns[1:, 1:]
        eig = np.linalg.eigvalsh(Nf)
        if eig[0] <= 1e-12 * eig[-1]:
            return None
        y = scipy.linalg.solve(Nf, -Ns[1:, 0], assume_a="pos")
        return np.concatenate([[1.0], y]) / d * d[0]
    Ntt, Nts, Nss = Ns[B:, B:], Ns[B:, :B], Ns[:B, :B]
    eig_t = np.linalg.eigvalsh(Ntt)
    if eig_t[0] <= 1e-12 * eig_t[-1]:
        return None
    M = Nss - Nts.T @ scipy.linalg.solve(Ntt, Nts, assume_a="pos")
    M = 0.5 * (M + M.T)
    lam, vec = scipy.linalg.eigh(M)  # scaled space: diag(N_ss) is the identity
    if lam[1] <= 1e-10 * max(lam[-1], 1e-300):
        # a second free direction: a view whose overlaps see a single fronto-parallel plane (its
        # prediction is constant there, so its scale and shift trade off), or views in groups
        view = int(np.argmax(np.abs(vec[:, 1] - vec[:, 0] * (vec[:, 0] @ vec[:, 1]))))
        raise InputError(f"view {view}'s scale and shift cannot be told apart from its overlaps (it sees one "
                         "fronto-parallel plane there, e.g. a cubemap nadir view on a flat floor, or it is cut off)",
                         "use the icosahedron layout or wider views")
    v = vec[:, 0]
    if abs(v[0]) < 1e-9 * np.abs(v).max():
        return None
    ys = v / v[0]
    yt = -scipy.linalg.solve(Ntt, Nts @ ys, assume_a="pos")
    y = np.concatenate([ys, yt])
    return y / d * d[0]


# --- blending ----------------------------------------------------------------------------------


def _fill_nan(depth: Tensor) -> Tensor:
    """NaN pixels of a panorama [H, W] take the value of the nearest finite pixel (seam wraps)."""
    bad = ~torch.isfinite(depth)
    if not bool(bad.any()):
        return depth
    if bool(bad.all()):
        raise InputError("the blended panorama depth has no positive finite pixel",
                         "check the depth predictions (all views non-positive after alignment)")
    W = depth.shape[1]
    pad = W // 2
    arr = depth.cpu().numpy()
    wrapped = np.concatenate([arr[:, -pad:], arr, arr[:, :pad]], 1) if pad else arr
    _, (ii, jj) = scipy.ndimage.distance_transform_edt(~np.isfinite(wrapped), return_indices=True)
    filled = wrapped[ii, jj][:, pad:pad + W]
    return torch.from_numpy(np.ascontiguousarray(filled)).to(depth.device)


def blend_views(
    predictions: Tensor,
    cameras: Camera,
    alignment: Alignment,
    height: int,
    width: int,
    *,
    prediction: Prediction = "inverse_depth",
    feather: float = 1.0,
    edge_jump: float | None = 0.1,
    valid: Tensor | None = None,
) -> Tensor:
    """Radial depth panorama from the aligned views.

    Each view's aligned prediction ``s_i p_i + t_i`` is sampled (bilinear) at the panorama
    pixels it sees, turned into the alignment space (inverse radial depth ``cos (s p + t)`` for
    "inverse_depth", radial depth ``(s p + t) / cos`` for "depth"), and averaged with weights
    ``edge ** feather``, where ``edge`` is the product of the normalised distances to the
    view's nearer vertical and horizontal border (1 at the image centre, 0 on the border), so
    seams fade out. Inverse depth is inverted after blending. Pixels with a non-positive or
    invalid blend are filled from the nearest valid pixel: the result has no NaN.

    Args:
        predictions: [B, h, w] per-view model output, as given to :func:`align_views`.
        cameras: the B views at the panorama centre.
        alignment: :func:`align_views`' result (or any per-view scale [B] / shift [B]).
        height, width: panorama size, pixels.
        prediction: "inverse_depth" or "depth", as for the alignment.
        feather: exponent of the border fall-off (0: plain average of the views).
        edge_jump: where a view's four bilinear taps (aligned) differ by more than this fraction
            (a depth edge), that view is sampled at its nearest pixel instead, so silhouettes stay
            sharp rather than blending into points between the surfaces; None: always bilinear.
        valid: optional [B, h, w] bool, False for pixels to ignore.

    Returns:
        [H, W] radial depth (in the units the alignment fixed: view 0's model scale), the dtype
        of ``predictions`` when floating point, else float32.
    """
    pred, ok = _check_predictions(predictions, cameras, valid)
    B = len(cameras)
    s = torch.as_tensor(alignment.scale, dtype=torch.float64, device=pred.device).reshape(-1)
    t = torch.as_tensor(alignment.shift, dtype=torch.float64, device=pred.device).reshape(-1)
    if s.shape != (B,) or t.shape != (B,):
        raise InputError(f"alignment has {s.numel()} scales / {t.numel()} shifts for {B} views",
                         "pass the Alignment of the same views")
    aligned = torch.where(ok, s[:, None, None] * pred + t[:, None, None], torch.zeros_like(pred))
    vals, usable, cos, edge, uv = _sample_views(aligned, ok, cameras, height, width)
    if edge_jump is not None:
        vals = _sharpen_edges(aligned, uv, vals, usable, float(edge_jump))
    q = _gain(cos, prediction) * vals
    w = torch.where(usable, edge.clamp_min(1e-12) ** float(feather), torch.zeros_like(edge))
    den = w.sum(0)
    blended = torch.where(den > 0, (w * q).sum(0) / den.clamp_min(1e-300), torch.full_like(den, float("nan")))
    good = torch.isfinite(blended) & (blended > 0)
    safe = torch.where(good, blended, torch.ones_like(blended))
    depth = 1.0 / safe if prediction == "inverse_depth" else safe
    depth = torch.where(good, depth, torch.full_like(depth, float("nan"))).reshape(height, width)
    out_dtype = predictions.dtype if torch.is_floating_point(predictions) else torch.float32
    return _fill_nan(depth).to(out_dtype)


# --- the pipeline --------------------------------------------------------------------------------


def estimate_panorama_depth(
    pano: Tensor,
    estimator: Callable[[Tensor], Tensor],
    *,
    layout: Layout = "icosahedron",
    view_size: int = 512,
    fov_deg: float | None = None,
    prediction: Prediction = "inverse_depth",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, Alignment]:
    """Radial depth of an equirectangular panorama from a perspective monocular depth model.

    Tangent views (:func:`tangent_cameras`, bilinear resample of the panorama), one estimator
    call per view, :func:`align_views` then :func:`blend_views` on the panorama grid.

    Args:
        pano: [H, W, 3] equirectangular image, float linear RGB in [0, 1].
        estimator: image [h, w, 3] -> [h, w] prediction (e.g.
            :class:`~layerforge.models.guidance.estimators.DepthEstimator`); a 2D output of
            another size is resized bilinearly to the view.
        layout: "icosahedron" (20 views) or "cubemap" (6).
        view_size: tangent view width = height, pixels.
        fov_deg: tangent view field of view, degrees (default per layout).
        prediction: what the estimator predicts, "inverse_depth" or "depth".
        progress: called as ``progress(i, n)`` after view i (1-based) of n.

    Returns:
        radial depth [H, W] (float32, or pano's floating dtype) up to one global scale,
        normalised to median 1, and the :class:`Alignment`.
    """
    if not isinstance(pano, Tensor) or pano.dim() != 3 or pano.shape[-1] != 3:
        shape = tuple(pano.shape) if isinstance(pano, Tensor) else type(pano).__name__
        raise InputError(f"panorama must be [H, W, 3] RGB, got {shape}", "pass an equirectangular RGB image")
    H, W = int(pano.shape[0]), int(pano.shape[1])
    img = pano if torch.is_floating_point(pano) else pano.float()
    cams = tangent_cameras(layout, view_size, fov_deg).to(device=img.device, dtype=img.dtype)
    views = equirect_to_perspective(img, cams, mode="bilinear")
    preds = []
    n = len(cams)
    for i in range(n):
        p = torch.as_tensor(estimator(views[i])).detach()
        if p.dim() == 3 and p.shape[0] == 1:
            p = p[0]
        if p.dim() != 2:
            raise InputError(f"the depth estimator returned shape {tuple(p.shape)} for a {view_size}x{view_size} view",
                             "use an estimator that returns one [h, w] map per image")
        p = p.to(device="cpu", dtype=torch.float64)
        if p.shape != (view_size, view_size):
            p = F.interpolate(p[None, None], (view_size, view_size), mode="bilinear", align_corners=False)[0, 0]
        preds.append(p)
        if progress is not None:
            progress(i + 1, n)
    pred = torch.stack(preds)
    cams64 = cams.to(device="cpu", dtype=torch.float64)
    alignment = align_views(pred, cams64, H, W, prediction=prediction)
    depth = blend_views(pred, cams64, alignment, H, W, prediction=prediction)
    depth = depth / depth.median()
    out_dtype = pano.dtype if torch.is_floating_point(pano) else torch.float32
    return depth.to(device=pano.device, dtype=out_dtype), alignment


# --- metric scale and the no-model default -----------------------------------------------------


def scale_to_camera_height(depth: Tensor, camera_height_m: float, *, nadir_deg: float = 10.0) -> tuple[Tensor, float]:
    """Metric scale of a radial depth panorama from the floor under the camera.

    Pixels within ``nadir_deg`` of straight down are assumed to see a flat floor
    ``camera_height_m`` below the camera, i.e. at radial distance
    ``camera_height_m / sin(-latitude)``. The scale is the median over them (finite, positive
    depths only) of ``camera_height_m / (depth * sin(-latitude))``.

    Args:
        depth: [H, W] radial depth panorama, any units.
        camera_height_m: camera height above the floor, metres (> 0).
        nadir_deg: cone half-angle around straight down, degrees.

    Returns:
        (depth * scale [H, W] in metres, scale).
    """
    if not isinstance(depth, Tensor) or depth.dim() != 2:
        shape = tuple(depth.shape) if isinstance(depth, Tensor) else type(depth).__name__
        raise InputError(f"depth must be an [H, W] panorama, got {shape}", "pass a radial depth panorama")
    if not camera_height_m > 0 or not 0 < nadir_deg <= 90:
        raise InputError(f"need camera_height_m > 0 and 0 < nadir_deg <= 90, got {camera_height_m}, {nadir_deg}",
                         "pass the camera height above the floor in metres")
    H = depth.shape[0]
    lat = (0.5 - (torch.arange(H, dtype=torch.float64) + 0.5) / H) * math.pi
    rows = lat <= -math.pi / 2 + math.radians(nadir_deg)
    d = depth.detach().to(device="cpu", dtype=torch.float64)[rows]
    sin_down = (-lat[rows]).sin()[:, None].expand_as(d)
    good = torch.isfinite(d) & (d > 0)
    if not bool(good.any()):
        raise InputError(f"no finite positive depth within {nadir_deg} deg of straight down",
                         "raise nadir_deg or give the metric scale another way")
    scale = float((camera_height_m / (d[good] * sin_down[good])).median())
    return depth * scale, scale


def room_prior_depth(
    height: int,
    width: int,
    *,
    camera_height_m: float,
    ceiling_height_m: float,
    wall_distance_m: float,
) -> Tensor:
    """Radial depth [H, W] (float32, metres) of the camera inside a vertical cylinder room.

    The classical default when neither a depth model nor a depth panorama is given: the floor
    is ``camera_height_m`` below the camera, the ceiling ``ceiling_height_m`` above the floor,
    the wall a vertical cylinder of radius ``wall_distance_m`` around the camera; each ray's
    depth is its nearest hit (floor, ceiling or wall). No NaN.
    """
    if not (camera_height_m > 0 and ceiling_height_m > camera_height_m and wall_distance_m > 0):
        raise InputError(
            f"room prior needs 0 < camera_height_m < ceiling_height_m and wall_distance_m > 0, got "
            f"{camera_height_m}, {ceiling_height_m}, {wall_distance_m}",
            "pass the camera height, the ceiling height above the floor and the wall distance in metres")
    d = equirect_directions(height, width, dtype=torch.float64)
    horiz = torch.sqrt(d[..., 0] ** 2 + d[..., 1] ** 2)
    inf = torch.full_like(horiz, float("inf"))
    wall = torch.where(horiz > 1e-12, wall_distance_m / horiz.clamp_min(1e-12), inf)
    dz = d[..., 2]
    floor = torch.where(dz < -1e-12, camera_height_m / (-dz).clamp_min(1e-12), inf)
    ceil = torch.where(dz > 1e-12, (ceiling_height_m - camera_height_m) / dz.clamp_min(1e-12), inf)
    return torch.minimum(torch.minimum(wall, floor), ceil).to(torch.float32)
