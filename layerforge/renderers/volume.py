"""Volume rendering along rays: sampling, compositing, K-object composition, SDF -> density.

Samples along a ray are *intervals*: ``edges`` [R, S+1] are sorted distances along each ray
(metres when directions are unit length) and interval ``i`` spans ``[edges[i], edges[i+1]]``;
fields are queried at the midpoints (:func:`midpoints`) and treated as constant over the
interval (the usual NeRF quadrature). ``R`` is any number of rays (flatten [B, H, W] first).

Compositing: ``alpha_i = 1 - exp(-sigma_i delta_i)``, ``T_i = exp(-sum_{j<i} sigma_j delta_j)``,
``w_i = T_i alpha_i``; colour ``sum_i w_i c_i + (1 - sum_i w_i) * background``; a ray's
``alpha`` (accumulated opacity) is ``sum_i w_i``.

Depth along a ray is the **ray parameter t** (the distance from the origin when directions
are unit length, as :func:`~layerforge.renderers.cameras.generate_rays` gives by default), not
camera z. :func:`render_output_from_rays` turns the per-ray outputs of full camera images
into a :class:`~layerforge.renderers.output.RenderOutput` with camera-z depth
(``z = t (d . forward)``, ``forward`` the camera's +z axis in world).

Plain torch on purpose: nerfstudio's samplers and renderers compute the same quantities
but need its ``RayBundle``/``Frustums`` containers and a ~1 s import; the tests check our
weights against nerfstudio's where it is installed.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from layerforge.errors import InputError
from layerforge.renderers.cameras import Camera, generate_rays
from layerforge.renderers.output import RenderOutput

__all__ = [
    "midpoints",
    "sample_stratified",
    "sample_pdf",
    "weights_from_density",
    "weights_from_alpha",
    "composite",
    "expected_depth",
    "volume_render",
    "composite_objects",
    "render_output_from_rays",
    "volsdf_density",
    "neus_density",
    "neus_alpha",
]

DepthMode = Literal["ED", "D"]


def midpoints(edges: Tensor) -> tuple[Tensor, Tensor]:
    """Interval midpoints and lengths [R, S] from edges [R, S+1]."""
    return 0.5 * (edges[..., 1:] + edges[..., :-1]), edges[..., 1:] - edges[..., :-1]


def sample_stratified(
    near: Tensor,
    far: Tensor,
    num_samples: int,
    *,
    perturb: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Stratified intervals between ``near`` and ``far``.

    Args:
        near, far: [R] distances along each ray (``near < far``).
        num_samples: S, intervals per ray.
        perturb: jitter every interior edge uniformly within half a bin either side
            (training-time stratified sampling); ``False`` gives S equal intervals.
        generator: RNG for the jitter (drawn on ``near``'s device).

    Returns:
        edges [R, S+1], sorted, first ``near`` and last ``far``.
    """
    u = torch.linspace(0.0, 1.0, num_samples + 1, device=near.device, dtype=near.dtype)
    u = u.expand(near.shape[0], num_samples + 1)
    if perturb and num_samples > 1:
        half = 0.5 / num_samples
        jitter = (torch.rand(u.shape, generator=generator, device=near.device, dtype=near.dtype) - 0.5) * 2 * half
        jitter[:, 0] = 0.0
        jitter[:, -1] = 0.0
        u = u + jitter
    return near[:, None] + (far - near)[:, None] * u


def sample_pdf(
    edges: Tensor,
    weights: Tensor,
    num_samples: int,
    *,
    perturb: bool = False,
    merge: bool = True,
    generator: torch.Generator | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Importance (inverse-CDF) sampling of new intervals from coarse weights.

    The coarse weights define a piecewise-constant PDF over the coarse intervals (``eps`` is
    added to every weight so empty rays sample uniformly). ``num_samples + 1`` new edges are
    drawn at CDF levels ``linspace(0, 1)`` (or jittered within their strata with ``perturb``).

    Args:
        edges: [R, S+1] coarse edges. weights: [R, S] coarse weights (detached here).
        num_samples: M, new intervals per ray.
        merge: also keep the coarse edges (returns [R, S+M+2]); else [R, M+1].

    Returns:
        sorted edges, no gradient.
    """
    edges = edges.detach()
    w = weights.detach() + eps
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1).clamp_max(1.0)  # [R, S+1]
    cdf[:, -1] = 1.0
    n = num_samples + 1
    u = torch.linspace(0.0, 1.0, n, device=edges.device, dtype=edges.dtype).expand(edges.shape[0], n)
    if perturb:
        step = 1.0 / num_samples
        u = (u + (torch.rand(u.shape, generator=generator, device=edges.device, dtype=edges.dtype) - 0.5) * step).clamp(0, 1)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    lo = (idx - 1).clamp(0, edges.shape[1] - 2)
    hi = lo + 1
    c_lo, c_hi = cdf.gather(1, lo), cdf.gather(1, hi)
    e_lo, e_hi = edges.gather(1, lo), edges.gather(1, hi)
    frac = ((u - c_lo) / (c_hi - c_lo).clamp_min(1e-12)).clamp(0, 1)
    new = e_lo + frac * (e_hi - e_lo)
    if merge:
        new = torch.cat([edges, new], -1)
    return torch.sort(new, -1).values


def weights_from_density(densities: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """Compositing weights and transmittance [R, S] from densities and interval lengths [R, S].

    ``T_i = exp(-sum_{j<i} sigma_j delta_j)`` (transmittance *before* interval i),
    ``w_i = T_i (1 - exp(-sigma_i delta_i))``.
    """
    tau = densities * deltas
    alpha = 1.0 - torch.exp(-tau)
    trans = torch.exp(-torch.cat([torch.zeros_like(tau[..., :1]), torch.cumsum(tau[..., :-1], -1)], -1))
    return trans * alpha, trans


def weights_from_alpha(alphas: Tensor) -> tuple[Tensor, Tensor]:
    """Weights and transmittance [R, S] from per-interval opacities alpha [R, S] (e.g. NeuS)."""
    keep = torch.cumprod(1.0 - alphas + 1e-10, -1)
    trans = torch.cat([torch.ones_like(keep[..., :1]), keep[..., :-1]], -1)
    return trans * alphas, trans


def composite(weights: Tensor, values: Tensor, background: Tensor | None = None) -> Tensor:
    """``sum_i w_i v_i`` [R, C] for weights [R, S] and values [R, S, C]; background [C] or [R, C]."""
    out = (weights[..., None] * values).sum(-2)
    if background is not None:
        out = out + (1.0 - weights.sum(-1, keepdim=True)) * background
    return out


def expected_depth(weights: Tensor, edges: Tensor, mode: DepthMode = "ED") -> Tensor:
    """Depth [R, 1] along the ray at the interval midpoints.

    ``"ED"``: expected depth ``sum w_i t_i / max(sum w_i, 1e-10)``; ``"D"``: accumulated
    depth ``sum w_i t_i`` (the names of gsplat's render modes). ``t`` is the ray parameter:
    the distance along the ray for unit directions, camera z only if the directions have unit
    camera z (``generate_rays(normalize=False)``); :func:`render_output_from_rays` converts.
    """
    t, _ = midpoints(edges)
    d = (weights * t).sum(-1, keepdim=True)
    if mode == "ED":
        return d / weights.sum(-1, keepdim=True).clamp_min(1e-10)
    if mode != "D":
        raise ValueError(f"depth mode must be 'ED' or 'D', got {mode!r}")
    return d


def volume_render(
    densities: Tensor,
    colors: Tensor,
    edges: Tensor,
    *,
    background: Tensor | None = None,
    depth_mode: DepthMode = "ED",
) -> dict[str, Tensor]:
    """Render rays through one field.

    Args:
        densities: [R, S] non-negative (activated) densities at the interval midpoints, 1/m.
        colors: [R, S, C] linear colours at the midpoints.
        edges: [R, S+1] sorted interval edges along the rays, metres.
        background: [C] or [R, C] colour behind the last interval; ``None`` = black.
        depth_mode: ``"ED"`` expected or ``"D"`` accumulated depth (:func:`expected_depth`).

    Returns:
        dict, per ray: ``rgb`` [R, C], ``alpha`` [R, 1] (accumulated opacity ``sum_i w_i``),
        ``depth`` [R, 1] along the ray in units of ``edges`` (ray distance for unit
        directions, **not** camera z: see :func:`render_output_from_rays`), ``weights``
        [R, S], ``transmittance`` [R, S].
    """
    _, deltas = midpoints(edges)
    w, trans = weights_from_density(densities, deltas)
    return {
        "rgb": composite(w, colors, background),
        "alpha": w.sum(-1, keepdim=True),
        "depth": expected_depth(w, edges, depth_mode),
        "weights": w,
        "transmittance": trans,
    }


def composite_objects(
    densities: Tensor,
    colors: Tensor,
    edges: Tensor,
    *,
    visibility: Tensor | None = None,
    background: Tensor | None = None,
    depth_mode: DepthMode = "ED",
    render_each: bool = False,
) -> dict[str, Tensor]:
    """Composite K object fields sampled on shared intervals into one image.

    Densities add, ``sigma = sum_k sigma_k``; colours mix density-weighted,
    ``c = sum_k sigma_k c_k / sigma``. Object ``k``'s share of each weight is
    ``w_ik = w_i sigma_ik / sigma_i``, so ``rgb = sum_ik w_ik c_ik`` (no division where
    sigma = 0) and the per-object opacities sum to the total opacity ``alpha``.

    Args:
        densities: [R, S, K] per-object densities (activated), 1/m. Object 0 is usually the
            background field.
        colors: [R, S, K, C] per-object colours.
        edges: [R, S+1] shared interval edges.
        visibility: [K] multipliers on each object's density (1 keeps, 0 removes an object,
            for editing); ``None`` keeps all.
        background: [C] or [R, C] colour behind everything.
        depth_mode: ``"ED"`` or ``"D"`` (:func:`expected_depth`).
        render_each: also render every object alone (as if the others were removed).

    Returns:
        dict, per ray: ``rgb`` [R, C], ``alpha`` [R, 1] (accumulated opacity), ``depth``
        [R, 1] (along the ray, as :func:`volume_render`), ``weights`` [R, S],
        ``object_weights`` [R, S, K] (per-object weight shares), ``object_opacity`` [R, K]
        (per-object opacity/mask map inside the composite, sums to ``alpha``), and
        with ``render_each``: ``object_rgb`` [R, K, C], ``object_alpha`` [R, K],
        ``object_depth`` [R, K] (along the ray) of each object rendered alone (colour
        without background).
    """
    if visibility is not None:
        densities = densities * visibility.to(densities)
    sigma = densities.sum(-1)  # [R, S]
    _, deltas = midpoints(edges)
    w, _ = weights_from_density(sigma, deltas)
    share = densities / sigma.clamp_min(1e-12)[..., None]
    share = torch.where(sigma[..., None] > 0, share, torch.zeros_like(share))
    ow = w[..., None] * share  # [R, S, K]
    rgb = (ow[..., None] * colors).sum((-3, -2))
    if background is not None:
        rgb = rgb + (1.0 - w.sum(-1, keepdim=True)) * background
    out = {
        "rgb": rgb,
        "alpha": w.sum(-1, keepdim=True),
        "depth": expected_depth(w, edges, depth_mode),
        "weights": w,
        "object_weights": ow,
        "object_opacity": ow.sum(-2),
    }
    if render_each:
        dk = densities.movedim(-1, 0)  # [K, R, S]
        wk, _ = weights_from_density(dk, deltas[None])
        t, _ = midpoints(edges)
        acc_k = wk.sum(-1)  # [K, R]
        out["object_rgb"] = (wk[..., None] * colors.movedim(2, 0)).sum(-2).movedim(0, 1)  # [R, K, C]
        out["object_alpha"] = acc_k.T
        dep = (wk * t[None]).sum(-1)
        if depth_mode == "ED":
            dep = dep / acc_k.clamp_min(1e-10)
        out["object_depth"] = dep.T
    return out


# Per-ray outputs that are distances along the ray; render_output_from_rays makes them camera z.
_RAY_DEPTH_KEYS = ("depth", "object_depth")


def render_output_from_rays(
    ray_outputs: dict[str, Tensor],
    cameras: Camera,
    directions: Tensor | None = None,
) -> RenderOutput:
    """Per-ray outputs of B full camera images -> :class:`RenderOutput` with camera-z depth.

    The rays must be every pixel of every camera in :func:`generate_rays` order (R = B H W,
    batch-major, then rows, then columns), e.g. ``generate_rays(cameras)`` flattened to
    [R, 3]. Depth (the ray parameter ``t``) becomes camera z, ``z = t (d . forward)`` with
    ``d`` the direction the ray was marched along and ``forward`` the camera's +z axis in
    world; for unit ``d`` that is the distance times the cosine to the optical axis, for
    ``generate_rays(normalize=False)`` directions ``d . forward = 1`` and t already is z.
    The expected depth converts exactly (the factor is constant along a ray).

    Args:
        ray_outputs: :func:`volume_render` / :func:`composite_objects` outputs, each [R, ...]:
            ``rgb`` [R, C], ``alpha`` [R, 1], ``depth`` [R, 1] (along the ray), optional
            ``normals`` [R, 3] (world, unit); every other entry goes to ``extras`` as
            [B, H, W, ...] (``weights`` [B, H, W, S], ``object_opacity`` [B, H, W, K], ...;
            ``object_depth`` is converted to camera z like ``depth``).
        cameras: the B cameras (H x W) the rays came from.
        directions: [R, 3] or [B, H, W, 3] world directions the rays were marched along;
            default the unit directions of ``generate_rays(cameras)``.

    Returns:
        :class:`RenderOutput` [B, H, W, ...]; depth 0 where ``alpha`` is 0.
    """
    b, h, w = len(cameras), cameras.height, cameras.width
    r = b * h * w
    for key in ("rgb", "alpha", "depth"):
        if key not in ray_outputs:
            raise InputError(f"ray outputs have no {key!r}", "pass the dict volume_render returns")
    if ray_outputs["rgb"].shape[0] != r:
        raise InputError(
            f"{ray_outputs['rgb'].shape[0]} rays for {b} camera(s) of {h} x {w} = {r} pixels",
            "render one ray per pixel, in generate_rays order",
        )
    ref = ray_outputs["depth"]
    cams = cameras.to(device=ref.device, dtype=ref.dtype)
    if directions is None:
        _, directions = generate_rays(cams)
    d = directions.to(ref).reshape(b, h * w, 3)
    forward = cams.world_to_camera[:, 2, :3]  # [B, 3] camera +z in world (row 2 of R)
    cos = (d * forward[:, None, :]).sum(-1).reshape(r, 1)  # [R, 1]

    def image(t: Tensor) -> Tensor:
        return t.reshape(b, h, w, *t.shape[1:])

    alpha = ray_outputs["alpha"]
    depth = torch.where(alpha > 0, ray_outputs["depth"] * cos, torch.zeros_like(ref))
    extras = {}
    for key, val in ray_outputs.items():
        if key in ("rgb", "alpha", "depth", "normals"):
            continue
        extras[key] = image(val * cos if key in _RAY_DEPTH_KEYS else val)
    normals = ray_outputs.get("normals")
    return RenderOutput(
        rgb=image(ray_outputs["rgb"]),
        alpha=image(alpha),
        depth=image(depth),
        normals=None if normals is None else image(normals),
        extras=extras,
    )


def volsdf_density(sdf: Tensor, beta: Tensor | float, alpha: Tensor | float | None = None) -> Tensor:
    """VolSDF density ``alpha * Psi_beta(-sdf)``, Psi_beta the CDF of a zero-mean Laplace(beta).

    Args:
        sdf: [...] signed distances, metres, negative inside.
        beta: Laplace scale (> 0), metres; smaller = sharper surface.
        alpha: density scale; default ``1 / beta`` (as VolSDF), so density is ``1/beta``
            deep inside, ``1/(2 beta)`` on the surface and -> 0 outside.
    """
    beta_t = torch.as_tensor(beta, dtype=sdf.dtype, device=sdf.device)
    a = 1.0 / beta_t if alpha is None else torch.as_tensor(alpha, dtype=sdf.dtype, device=sdf.device)
    s = -sdf
    tail = 0.5 * torch.exp(-s.abs() / beta_t)
    return a * torch.where(s <= 0, tail, 1.0 - tail)


def neus_density(sdf: Tensor, s: Tensor | float) -> Tensor:
    """NeuS logistic density ``phi_s(f) = s e^{-s f} / (1 + e^{-s f})^2`` (peak ``s/4`` at f = 0).

    This is the S-density of the NeuS paper; it is *not* an unbiased volume density (use
    :func:`neus_alpha` for NeuS rendering).
    """
    sig = torch.sigmoid(sdf * s)
    return s * sig * (1.0 - sig)


def neus_alpha(sdf_start: Tensor, sdf_end: Tensor, s: Tensor | float) -> Tensor:
    """NeuS discrete opacity of an interval from the SDF at its two ends.

    ``alpha = max((Phi_s(f_start) - Phi_s(f_end)) / Phi_s(f_start), 0)`` with
    ``Phi_s = sigmoid(s f)``; feed the result to :func:`weights_from_alpha`.

    Args:
        sdf_start, sdf_end: [R, S] signed distances at interval starts and ends, metres.
        s: inverse standard deviation of the logistic (> 0), 1/m.
    """
    p = torch.sigmoid(sdf_start * s)
    n = torch.sigmoid(sdf_end * s)
    return ((p - n + 1e-5) / (p + 1e-5)).clamp(0.0, 1.0)
