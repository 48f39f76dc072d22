"""3D Gaussian splatting: one call, two backends (gsplat CUDA, torch reference).

:func:`render_gaussians` has the semantics of gsplat's ``rasterization`` (pinhole,
``rasterize_mode="classic"``, ``packed=False``) so that both backends give the same images:

- Projection (EWA): camera-space covariance ``W R S S^T R^T W^T`` pushed through the
  Jacobian of the pinhole projection; the Jacobian is evaluated at the mean with its
  ``x/z, y/z`` clamped to 1.3x the field of view (as gsplat/3DGS), and ``eps2d = 0.3`` px² is
  added to the 2D covariance diagonal (the low-pass dilation).
- Culling: Gaussians with camera depth outside ``[near, far]``, a non-positive 2D determinant,
  or a 3-sigma screen radius ``ceil(3 sqrt(lambda_max))`` entirely off screen are dropped;
  a Gaussian only touches the 16x16 pixel tiles its radius box overlaps (gsplat's tiling).
- Compositing, front to back in camera depth: ``alpha = min(0.999, o * exp(-q/2))`` where
  ``q`` is the conic's Mahalanobis distance from the pixel centre (+0.5); splats with
  ``alpha < 1/255`` are skipped, and a pixel stops before the splat that would bring its
  transmittance to ``<= 1e-4``. NOTE: gsplat 1.4/1.5 clamp at 0.999, not the 0.99 of the
  original 3DGS rasterizer; we follow gsplat (``ALPHA_MAX``).
- SH colour: ``max(eval_sh(dirs) + 0.5, 0)`` with ``dirs = mean - camera centre``.
- Depth: each splat contributes its centre's camera-space z (OpenCV +z, not the distance
  from the camera centre), in both backends (gsplat's ``depths`` are camera z too), so
  the rendered depth has the :class:`~layerforge.renderers.output.RenderOutput` meaning.

The torch backend works one strip of 16-pixel tile rows at a time with only the splats that
touch it, at most ``chunk_elems`` pixel x Gaussian pairs at once, so memory stays bounded;
it is differentiable by autograd in float32 or float64.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from torch import Tensor

from layerforge.errors import ConfigError
from layerforge.renderers.cameras import Camera
from layerforge.renderers.output import RenderOutput
from layerforge.renderers.sh import eval_sh, num_sh_bases

__all__ = [
    "ALPHA_MAX",
    "ALPHA_MIN",
    "EPS2D",
    "T_MIN",
    "TILE_SIZE",
    "quat_to_rotmat",
    "covariance_from_quat_scale",
    "project_gaussians",
    "render_gaussians",
    "gsplat_available",
    "gsplat_import_error",
    "resolve_backend",
]

log = logging.getLogger("layerforge.renderers")

ALPHA_MAX = 0.999  # gsplat's per-splat alpha clamp (rasterize_to_pixels_fwd.cu)
ALPHA_MIN = 1.0 / 255.0  # splats below this alpha are skipped
T_MIN = 1e-4  # a pixel stops before the splat that would bring T to <= T_MIN
EPS2D = 0.3  # px², low-pass dilation added to the projected covariance
TILE_SIZE = 16  # gsplat's tile size; a splat only touches tiles its radius box overlaps
_FOV_CLIP = 0.3  # Jacobian clamp margin, fraction of tan(fov/2) beyond the image edge

Backend = Literal["auto", "torch", "gsplat"]
DepthMode = Literal["ED", "D"]


# Reasons already logged by resolve_backend, so each distinct gsplat failure is logged once per process.
_FALLBACKS_LOGGED: set[str] = set()


def gsplat_import_error() -> str | None:
    """Why ``import gsplat`` fails here (``"ImportError: ..."``, first line), or None when it imports.

    Python caches a successful import; a failing one is retried on every call.
    """
    try:
        import gsplat  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import-time failure (missing, ABI, CUDA) is a reason
        first = str(err).splitlines()[0] if str(err) else ""
        return f"{type(err).__name__}: {first}" if first else type(err).__name__
    return None


def gsplat_available(device: torch.device | str) -> bool:
    """True when ``device`` is CUDA and gsplat imports."""
    if torch.device(device).type != "cuda":
        return False
    return gsplat_import_error() is None


def resolve_backend(backend: Backend, device: torch.device | str) -> Literal["torch", "gsplat"]:
    """The backend :func:`render_gaussians` uses for tensors on ``device``.

    ``"auto"`` is gsplat on CUDA when it imports, else the torch reference. On CUDA a failed
    gsplat import is a silent slowdown otherwise, so it is logged (a warning, with the reason
    and the fix), once per distinct reason per process; on CPU torch is the only path, and not logged.
    ``"torch"`` and ``"gsplat"`` are returned as given; anything else is a ConfigError.
    """
    if backend in ("torch", "gsplat"):
        return backend
    if backend != "auto":
        raise ConfigError(f"unknown Gaussian backend {backend!r}", "use 'auto', 'torch' or 'gsplat'")
    if torch.device(device).type != "cuda":
        return "torch"
    reason = gsplat_import_error()
    if reason is None:
        return "gsplat"
    if reason not in _FALLBACKS_LOGGED:
        _FALLBACKS_LOGGED.add(reason)
        log.warning("gsplat cannot be imported (%s), so Gaussians on %s render with the torch reference "
                    "(same images, much slower); install gsplat (`make setup` installs it) or pass backend='torch' "
                    "to choose it knowingly", reason, device)
    return "torch"


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] (wxyz, normalised here)."""
    q = torch.nn.functional.normalize(quats, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def covariance_from_quat_scale(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances [N, 3, 3] = R diag(s)^2 R^T from quats [N, 4] (wxyz), scales [N, 3] (metres)."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    cameras: Camera,
    *,
    eps2d: float = EPS2D,
) -> dict[str, Tensor]:
    """EWA projection of 3D Gaussians into B pinhole cameras (gsplat's ``fully_fused_projection``).

    Args:
        means: [N, 3] world centres, metres.
        quats: [N, 4] rotations, wxyz, need not be normalised.
        scales: [N, 3] standard deviations along the rotated axes, metres (activated).
        cameras: B cameras (OpenCV world-to-camera, K in pixels, pixel centres at +0.5).
        eps2d: px² added to the 2D covariance diagonal.

    Returns:
        dict with ``means2d`` [B, N, 2] image coordinates (u right, v down), ``conics``
        [B, N, 3] upper triangle (a, b, c) of the inverse 2D covariance, ``depths`` [B, N]
        camera z in metres, ``radii`` [B, N] int32 3-sigma radius in pixels (0 = culled) and
        ``valid`` [B, N] bool (radii > 0).
    """
    dtype = means.dtype
    w2c = cameras.world_to_camera.to(device=means.device, dtype=dtype)
    K = cameras.K.to(device=means.device, dtype=dtype)
    rot = w2c[:, :3, :3]  # [B, 3, 3]
    p = torch.einsum("bij,nj->bni", rot, means) + w2c[:, None, :3, 3]  # [B, N, 3]
    cov_w = covariance_from_quat_scale(quats, scales)  # [N, 3, 3]
    cov_c = torch.einsum("bij,njk,blk->bnil", rot, cov_w, rot)  # [B, N, 3, 3]

    x, y, z = p.unbind(-1)
    z_ok = (z >= cameras.near) & (z <= cameras.far)
    zs = torch.where(z_ok, z, torch.ones_like(z))  # safe divisor (culled anyway)
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    w, h = float(cameras.width), float(cameras.height)
    tan_x, tan_y = 0.5 * w / fx, 0.5 * h / fy
    # Jacobian at the mean, with the direction clamped to 1.3x the frustum (as gsplat/3DGS).
    tx = zs * torch.minimum(torch.maximum(x / zs, -(cx / fx + _FOV_CLIP * tan_x)), (w - cx) / fx + _FOV_CLIP * tan_x)
    ty = zs * torch.minimum(torch.maximum(y / zs, -(cy / fy + _FOV_CLIP * tan_y)), (h - cy) / fy + _FOV_CLIP * tan_y)
    zero = torch.zeros_like(zs)
    J = torch.stack(
        [fx / zs, zero, -fx * tx / (zs * zs), zero, fy / zs, -fy * ty / (zs * zs)], dim=-1
    ).reshape(*zs.shape, 2, 3)
    cov2 = J @ cov_c @ J.transpose(-1, -2)  # [B, N, 2, 2]
    a = cov2[..., 0, 0] + eps2d
    c = cov2[..., 1, 1] + eps2d
    b = 0.5 * (cov2[..., 0, 1] + cov2[..., 1, 0])
    det = a * c - b * b
    det_ok = det > 0
    det_s = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_s, -b / det_s, a / det_s], dim=-1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)

    with torch.no_grad():
        half_tr = 0.5 * (a + c)
        lam = half_tr + torch.sqrt(torch.clamp(half_tr * half_tr - det, min=0.01))
        radius = torch.ceil(3.0 * torch.sqrt(lam.clamp_min(0)))
        u, v = means2d.unbind(-1)
        on_screen = (u + radius > 0) & (u - radius < w) & (v + radius > 0) & (v - radius < h)
        valid = z_ok & det_ok & (radius > 0) & on_screen
        radii = torch.where(valid, radius, torch.zeros_like(radius)).to(torch.int32)
    return {"means2d": means2d, "conics": conics, "depths": z, "radii": radii, "valid": valid}


def _gaussian_colors(
    means: Tensor,
    colors: Tensor | None,
    sh_coeffs: Tensor | None,
    sh_degree: int | None,
    cameras: Camera,
) -> Tensor:
    """Per-camera colours [B, N, D]."""
    if sh_coeffs is None:
        assert colors is not None
        return colors[None].expand(len(cameras), -1, -1)
    centres = cameras.center.to(device=means.device, dtype=means.dtype)  # [B, 3]
    dirs = means[None] - centres[:, None]  # [B, N, 3]
    raw = eval_sh(int(sh_degree), dirs, sh_coeffs[None])  # [B, N, 3]
    return torch.clamp_min(raw + 0.5, 0.0)


def _rasterize_torch(
    proj: dict[str, Tensor],
    opacities: Tensor,
    colors: Tensor,
    width: int,
    height: int,
    background: Tensor | None,
    chunk_elems: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing; returns colour [B,H,W,D], alpha [B,H,W,1], accumulated depth [B,H,W,1]."""
    B = colors.shape[0]
    D = colors.shape[-1]
    dev, dtype = colors.device, colors.dtype
    vv, uu = torch.meshgrid(
        torch.arange(height, device=dev), torch.arange(width, device=dev), indexing="ij"
    )
    pix = torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=-1)  # [P, 2] integer pixel indices
    pix_c = pix.to(dtype) + 0.5
    pix_tile = torch.div(pix, TILE_SIZE, rounding_mode="floor")
    tiles_w = math.ceil(width / TILE_SIZE)
    tiles_h = math.ceil(height / TILE_SIZE)

    out_rgb, out_alpha, out_depth = [], [], []
    for bi in range(B):
        order = torch.nonzero(proj["valid"][bi], as_tuple=False).squeeze(-1)
        order = order[torch.argsort(proj["depths"][bi, order].detach(), stable=True)]
        m2 = proj["means2d"][bi, order]  # [G, 2]
        con = proj["conics"][bi, order]  # [G, 3]
        zz = proj["depths"][bi, order]  # [G]
        op = opacities[order]
        col = colors[bi, order]  # [G, D]
        with torch.no_grad():  # tile range of each splat (inclusive min, exclusive max)
            r = proj["radii"][bi, order].to(dtype) / TILE_SIZE
            t = m2.detach() / TILE_SIZE
            tmin = torch.stack(
                [torch.floor(t[:, 0] - r).clamp(0, tiles_w), torch.floor(t[:, 1] - r).clamp(0, tiles_h)], -1
            )
            tmax = torch.stack(
                [torch.ceil(t[:, 0] + r).clamp(0, tiles_w), torch.ceil(t[:, 1] + r).clamp(0, tiles_h)], -1
            )
        rgb_parts, t_parts, d_parts = [], [], []
        for ty in range(tiles_h):  # one strip of tile rows at a time: only its splats
            sel = torch.nonzero((tmin[:, 1] <= ty) & (tmax[:, 1] > ty), as_tuple=False).squeeze(-1)
            s_m2, s_con, s_z, s_op, s_col = m2[sel], con[sel], zz[sel], op[sel], col[sel]
            s_tmin, s_tmax = tmin[sel], tmax[sel]
            G = sel.numel()
            g_chunk = max(1, min(G, 4096))
            p_chunk = max(1, chunk_elems // g_chunk)
            strip_end = min(height, (ty + 1) * TILE_SIZE) * width
            for p0 in range(ty * TILE_SIZE * width, strip_end, p_chunk):
                p1 = min(p0 + p_chunk, strip_end)
                pc = pix_c[p0:p1]
                pt = pix_tile[p0:p1].to(dtype)
                T = torch.ones(pc.shape[0], device=dev, dtype=dtype)
                acc = torch.zeros(pc.shape[0], D, device=dev, dtype=dtype)
                accd = torch.zeros(pc.shape[0], device=dev, dtype=dtype)
                for g0 in range(0, G, g_chunk):
                    if not bool((T > T_MIN).any()):
                        break
                    sl = slice(g0, g0 + g_chunk)
                    dx = s_m2[None, sl, 0] - pc[:, None, 0]
                    dy = s_m2[None, sl, 1] - pc[:, None, 1]
                    ca, cb, cc = s_con[sl].unbind(-1)
                    q = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy  # [P, G]
                    # q > 20 is far below ALPHA_MIN; clamping keeps exp() out of slow denormals
                    alpha = torch.clamp_max(s_op[None, sl] * torch.exp(-q.clamp_max(20.0)), ALPHA_MAX)
                    with torch.no_grad():
                        in_tile = (
                            (pt[:, None, 0] >= s_tmin[None, sl, 0]) & (pt[:, None, 0] < s_tmax[None, sl, 0])
                            & (pt[:, None, 1] >= s_tmin[None, sl, 1]) & (pt[:, None, 1] < s_tmax[None, sl, 1])
                        )
                        keep = in_tile & (q >= 0) & (alpha >= ALPHA_MIN)
                        a0 = torch.where(keep, alpha, torch.zeros_like(alpha))
                        t_after = T[:, None] * torch.cumprod(1.0 - a0, dim=-1)
                        keep = keep & (t_after > T_MIN)  # stop before the splat that ends the pixel
                    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
                    trans = torch.cumprod(1.0 - alpha, dim=-1)
                    t_before = T[:, None] * torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], dim=-1)
                    wts = alpha * t_before  # [P, G]
                    acc = acc + wts @ s_col[sl]
                    accd = accd + wts @ s_z[sl]
                    T = T * trans[:, -1]
                rgb_parts.append(acc)
                t_parts.append(T)
                d_parts.append(accd)
        rgb = torch.cat(rgb_parts).reshape(height, width, D)
        T_all = torch.cat(t_parts).reshape(height, width, 1)
        dep = torch.cat(d_parts).reshape(height, width, 1)
        if background is not None:
            rgb = rgb + T_all * background[bi].to(dtype)
        out_rgb.append(rgb)
        out_alpha.append(1.0 - T_all)
        out_depth.append(dep)
    return torch.stack(out_rgb), torch.stack(out_alpha), torch.stack(out_depth)


def render_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor | None,
    cameras: Camera,
    *,
    sh_coeffs: Tensor | None = None,
    sh_degree: int | None = None,
    background: Tensor | None = None,
    backend: Backend = "auto",
    depth_mode: DepthMode = "ED",
    eps2d: float = EPS2D,
    chunk_elems: int = 1 << 22,
) -> RenderOutput:
    """Render 3D Gaussians into B cameras (gsplat ``rasterization`` semantics, classic mode).

    Args:
        means: [N, 3] world centres, metres (world +Z up).
        quats: [N, 4] rotations, wxyz; need not be normalised.
        scales: [N, 3] standard deviations, metres, already activated (e.g. ``exp``).
        opacities: [N] in [0, 1], already activated (e.g. ``sigmoid``).
        colors: [N, D] linear colours (already activated), or ``None`` with ``sh_coeffs``.
        cameras: B cameras: ``K`` [B, 3, 3] pixels, ``world_to_camera`` [B, 4, 4] OpenCV
            (+x right, +y down, +z forward), pixel centres at +0.5. ``near``/``far`` cull
            Gaussian centres by camera z.
        sh_coeffs: [N, K, 3] spherical-harmonic coefficients (3DGS order/signs, see
            :mod:`layerforge.renderers.sh`), used instead of ``colors``; colour is
            ``max(SH(mean - camera centre) + 0.5, 0)``.
        sh_degree: SH degree 0..3 to evaluate (needs ``K >= (sh_degree + 1)^2``); default
            the largest the coefficients allow.
        background: [D] or [B, D] colour composited behind (``rgb += (1 - alpha) * bg``);
            ``None`` is black. Depth gets no background.
        backend: ``"gsplat"`` (CUDA kernels), ``"torch"`` (reference, any device,
            differentiable) or ``"auto"`` (gsplat on CUDA when it imports, else torch;
            a CUDA fallback is logged once with gsplat's import error, see
            :func:`resolve_backend`).
        depth_mode: ``"ED"`` expected depth ``sum_i w_i z_i / max(alpha, 1e-10)`` (the
            :class:`RenderOutput` meaning: camera z, 0 where empty); ``"D"`` accumulated
            depth ``sum_i w_i z_i`` (alpha times the expected z; gsplat's render modes of the
            same names). ``w_i`` are the compositing weights, ``z_i`` the camera-space z of
            splat i's centre in metres (not its distance from the camera).
        eps2d: low-pass dilation in px² added to each projected covariance (gsplat: 0.3).
        chunk_elems: torch backend only; pixel x Gaussian pairs evaluated at once.

    Returns:
        :class:`RenderOutput` with ``rgb`` [B, H, W, D] (D = 3 with ``sh_coeffs``),
        ``alpha`` [B, H, W, 1] (accumulated opacity), ``depth`` [B, H, W, 1] (camera z per
        ``depth_mode``), ``normals`` None, and ``meta``: ``radii`` [B, N] int32 screen radius
        in pixels (0 = culled) and ``means2d`` [B, N, 2] projected centres (for
        densification; ``retain_grad`` it before ``backward`` to read screen-space gradients).
    """
    N = means.shape[0]
    if means.shape != (N, 3) or quats.shape != (N, 4) or scales.shape != (N, 3) or opacities.shape != (N,):
        raise ValueError(
            f"expected means [N,3], quats [N,4], scales [N,3], opacities [N]; got {tuple(means.shape)}, "
            f"{tuple(quats.shape)}, {tuple(scales.shape)}, {tuple(opacities.shape)}"
        )
    if (colors is None) == (sh_coeffs is None):
        raise ValueError("pass exactly one of colors [N, D] and sh_coeffs [N, K, 3]")
    if sh_coeffs is not None:
        if sh_coeffs.dim() != 3 or sh_coeffs.shape[0] != N or sh_coeffs.shape[2] != 3:
            raise ValueError(f"sh_coeffs must be [N, K, 3], got {tuple(sh_coeffs.shape)}")
        if sh_degree is None:
            sh_degree = min(3, int(math.isqrt(sh_coeffs.shape[1])) - 1)
        if num_sh_bases(sh_degree) > sh_coeffs.shape[1]:
            raise ValueError(f"sh_degree {sh_degree} needs {num_sh_bases(sh_degree)} coefficients, got {sh_coeffs.shape[1]}")
        D = 3
    else:
        assert colors is not None
        if colors.dim() != 2 or colors.shape[0] != N:
            raise ValueError(f"colors must be [N, D], got {tuple(colors.shape)}")
        D = colors.shape[1]
    if depth_mode not in ("ED", "D"):
        raise ConfigError(f"unknown depth_mode {depth_mode!r}", "use 'ED' (expected) or 'D' (accumulated)")
    B = len(cameras)
    bg = None
    if background is not None:
        bg = torch.as_tensor(background, dtype=means.dtype, device=means.device)
        bg = bg.reshape(1, D).expand(B, D) if bg.dim() == 1 else bg.reshape(B, D)

    if resolve_backend(backend, means.device) == "gsplat":
        return _render_gsplat(means, quats, scales, opacities, colors, sh_coeffs, sh_degree, cameras, bg, depth_mode, eps2d)

    proj = project_gaussians(means, quats, scales, cameras, eps2d=eps2d)
    cols = _gaussian_colors(means, colors, sh_coeffs, sh_degree, cameras)
    rgb, alpha, acc_depth = _rasterize_torch(proj, opacities, cols, cameras.width, cameras.height, bg, chunk_elems)
    depth = acc_depth / alpha.clamp_min(1e-10) if depth_mode == "ED" else acc_depth
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, meta={"radii": proj["radii"], "means2d": proj["means2d"]})


def _render_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor | None,
    sh_coeffs: Tensor | None,
    sh_degree: int | None,
    cameras: Camera,
    bg: Tensor | None,
    depth_mode: DepthMode,
    eps2d: float,
) -> RenderOutput:
    if means.device.type != "cuda":
        raise ConfigError(
            f"Gaussian backend 'gsplat' needs a CUDA device (tensors are on {means.device})",
            "use backend='torch' or 'auto'",
        )
    reason = gsplat_import_error()
    if reason is not None:
        raise ConfigError(
            f"Gaussian backend 'gsplat' cannot import gsplat ({reason})",
            "install gsplat (`make setup` installs it), or use backend='torch' or 'auto'",
        )
    from gsplat import rasterization

    cam = cameras.to(device=means.device, dtype=means.dtype)
    feats = sh_coeffs if sh_coeffs is not None else colors
    out, alpha, meta = rasterization(
        means, quats, scales, opacities, feats,
        viewmats=cam.world_to_camera, Ks=cam.K, width=cam.width, height=cam.height,
        near_plane=cam.near, far_plane=cam.far, eps2d=eps2d,
        sh_degree=sh_degree if sh_coeffs is not None else None,
        packed=False, backgrounds=bg, render_mode="RGB+ED" if depth_mode == "ED" else "RGB+D",
    )
    return RenderOutput(
        rgb=out[..., :-1],
        alpha=alpha,
        depth=out[..., -1:],
        meta={"radii": meta["radii"], "means2d": meta["means2d"]},
    )
