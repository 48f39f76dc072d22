"""Volume rendering of a :class:`~layerforge.models.fields.base.Field` into a ``RenderOutput``.

Built on the primitives of :mod:`layerforge.renderers.volume` (stratified and importance
sampling, density weights, K-object compositing). Rays are clipped to the field's ``aabb``
(and the camera's near/far), sampled, the field is queried at the interval midpoints, and
the result is composited. :func:`render_rays` works on any bundle of rays (training batches
of random pixels); :func:`render_field` renders whole images chunk by chunk, so memory is
bounded by ``chunk_rays`` when gradients are off (with gradients on, autograd keeps every
chunk's graph for the backward pass, as any renderer must).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from layerforge.renderers.cameras import Camera, generate_rays
from layerforge.renderers.output import RenderOutput
from layerforge.renderers.volume import (
    composite,
    composite_objects,
    expected_depth,
    midpoints,
    render_output_from_rays,
    sample_pdf,
    sample_stratified,
    weights_from_density,
)

from .base import Field, FieldOutput, ray_aabb

__all__ = ["SamplerConfig", "render_rays", "render_field", "DEFAULT_CHUNK_RAYS"]

# Rays per chunk in render_field: 8192 rays x 64 samples = 2^19 field queries per chunk.
DEFAULT_CHUNK_RAYS = 8192


@dataclass
class SamplerConfig:
    """How rays are sampled.

    Attributes:
        num_samples: S stratified intervals per ray (UDC-NeRF coarse pass: 64).
        num_importance: M extra intervals drawn from the coarse weights (UDC-NeRF fine: 64);
            the coarse pass runs without gradients and only places samples.
        perturb: jitter the samples (training); ``False`` is deterministic (evaluation).
        near, far: clip distances along the (unit) rays, metres; ``None`` uses the camera's.
            Rays are always clipped to the field's box as well.
    """

    num_samples: int = 64
    num_importance: int = 0
    perturb: bool = False
    near: float | None = None
    far: float | None = None

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.num_importance < 0:
            raise ValueError(f"SamplerConfig needs num_samples >= 1 and num_importance >= 0, got {self}")


def _query(field: Field, points: Tensor, dirs: Tensor, normals: bool) -> tuple[FieldOutput, Tensor | None]:
    """Field outputs at points [R, S, 3] and, with ``normals``, unit normals [R, S, 3]."""
    if not normals:
        return field(points, dirs), None
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        pts = points if points.requires_grad else points.detach().requires_grad_(True)
        out = field(pts, dirs)
        # SDF: n = grad d; density: n = -grad sigma (nerfstudio's "pred_normals" from density).
        value = out.sdf if out.sdf is not None else -out.density
        (g,) = torch.autograd.grad(value, pts, torch.ones_like(value), create_graph=keep_graph)
    return out, F.normalize(g, dim=-1)


def render_rays(
    field: Field,
    origins: Tensor,
    directions: Tensor,
    sampler: SamplerConfig = SamplerConfig(),
    *,
    near: Tensor | float | None = None,
    far: Tensor | float | None = None,
    background: Tensor | None = None,
    generator: torch.Generator | None = None,
    compute_normals: bool = False,
) -> dict[str, Tensor]:
    """Render R rays through a field.

    Args:
        field: any :class:`Field` (single, density-sum or SDF-min composed).
        origins: [R, 3] world ray origins, metres.
        directions: [R, 3] **unit** world directions.
        sampler: sampling settings (its ``near``/``far`` override the arguments below).
        near, far: [R] or scalar clip distances (metres) besides the field's box; default 0 / inf.
        background: [3] or [R, 3] colour behind the field; ``None`` = black.
        generator: RNG for ``sampler.perturb``.
        compute_normals: also return rendered normals (autograd of the SDF / density).

    Returns:
        dict: ``rgb`` [R, 3]; ``alpha`` [R, 1] accumulated opacity; ``distance`` [R, 1]
        expected distance along the ray (``sum w t / sum w``, 0 where empty);
        ``weights`` [R, S'] and ``edges`` [R, S'+1]; ``normals`` [R, 3] (unit, 0 where empty)
        with ``compute_normals``; for composed fields ``object_alpha`` [R, K]: density-sum
        fields give each object's share of the accumulated opacity (sums to ``alpha``),
        SDF-min fields ObjectSDF++'s occlusion-aware opacity ``sum_i T_i (1 - exp(-sigma_ik delta_i))``
        with the scene transmittance ``T_i``.
    """
    t_near, t_far, _ = ray_aabb(origins, directions, field.aabb)
    lo = sampler.near if sampler.near is not None else near
    hi = sampler.far if sampler.far is not None else far
    if lo is not None:
        t_near = torch.maximum(t_near, torch.as_tensor(lo, dtype=t_near.dtype, device=t_near.device))
    if hi is not None:
        t_far = torch.minimum(t_far, torch.as_tensor(hi, dtype=t_far.dtype, device=t_far.device))
    t_far = torch.maximum(t_far, t_near)  # rays that miss get zero-length intervals (zero weight)

    edges = sample_stratified(t_near, t_far, sampler.num_samples, perturb=sampler.perturb, generator=generator)
    if sampler.num_importance > 0:
        with torch.no_grad():
            t, deltas = midpoints(edges)
            pts = origins[:, None] + directions[:, None] * t[..., None]
            dens = field(pts, directions[:, None].expand_as(pts)).density[..., 0]
            w_coarse, _ = weights_from_density(dens, deltas)
        edges = sample_pdf(edges, w_coarse, sampler.num_importance, perturb=sampler.perturb, generator=generator)

    t, deltas = midpoints(edges)
    pts = origins[:, None] + directions[:, None] * t[..., None]  # [R, S, 3]
    out, normals = _query(field, pts, directions[:, None].expand_as(pts), compute_normals)

    result: dict[str, Tensor] = {}
    if field.composition == "sum" and out.object_density is not None:
        comp = composite_objects(out.object_density, out.object_rgb, edges, background=background)
        w, rgb = comp["weights"], comp["rgb"]
        result["object_alpha"] = comp["object_opacity"]
    else:
        w, trans = weights_from_density(out.density[..., 0], deltas)
        rgb = composite(w, out.rgb, background)
        if field.composition == "min" and out.object_density is not None:
            obj_alpha = 1.0 - torch.exp(-out.object_density * deltas[..., None])  # [R, S, K]
            result["object_alpha"] = (trans[..., None] * obj_alpha).sum(-2)
    acc = w.sum(-1, keepdim=True)
    dist = expected_depth(w, edges, "ED")
    dist = torch.where(acc > 0, dist, torch.zeros_like(dist))
    result.update(rgb=rgb, alpha=acc, distance=dist, weights=w, edges=edges)
    if normals is not None:
        n = composite(w, normals)
        nonzero = n.norm(dim=-1, keepdim=True) > 1e-12
        result["normals"] = torch.where(nonzero, F.normalize(n, dim=-1), torch.zeros_like(n))
    return result


def render_field(
    field: Field,
    cameras: Camera,
    sampler: SamplerConfig = SamplerConfig(),
    *,
    chunk_rays: int = DEFAULT_CHUNK_RAYS,
    background: Tensor | None = None,
    generator: torch.Generator | None = None,
    compute_normals: bool = False,
) -> RenderOutput:
    """Render B images of a field, ``chunk_rays`` rays at a time.

    Args:
        field: any :class:`Field`; its parameters' device is used (cameras are moved there).
        cameras: B cameras of H x W (their ``near``/``far`` clip the rays unless ``sampler``
            sets its own).
        sampler: :class:`SamplerConfig`.
        chunk_rays: rays per field pass (memory ~ chunk_rays x samples x field width).
        background: [3] colour behind the field; ``None`` = black.
        generator: RNG for ``sampler.perturb`` (chunked and unchunked renders then draw
            different jitter; with ``perturb=False`` they agree).
        compute_normals: fill ``normals`` (world, unit; 0 where empty).

    Returns:
        :class:`RenderOutput`: ``rgb`` [B, H, W, 3], ``alpha`` [B, H, W, 1] accumulated
        opacity, ``depth`` [B, H, W, 1] the opacity-normalised expected camera-space z
        (distance along the unit ray times its cosine with the camera's +z axis; 0 where
        empty), ``normals`` [B, H, W, 3] or None, and for composed fields
        ``extras["object_alpha"]`` [B, H, W, K] (see :func:`render_rays`).
    """
    if chunk_rays < 1:
        raise ValueError(f"chunk_rays must be >= 1, got {chunk_rays}")
    p = next(field.parameters(), None)
    device = p.device if p is not None else field.aabb.device
    dtype = p.dtype if p is not None else torch.float32
    cams = cameras.to(device=device, dtype=dtype)
    origins, dirs = generate_rays(cams, normalize=True)  # [B, H, W, 3]
    forward = cams.camera_to_world[:, :3, 2]  # OpenCV +z (viewing direction) in world, [B, 3]
    cos = (dirs * forward[:, None, None, :]).sum(-1, keepdim=True)  # [B, H, W, 1], > 0 in view
    o, d, c = origins.reshape(-1, 3), dirs.reshape(-1, 3), cos.reshape(-1, 1)
    bg = None if background is None else torch.as_tensor(background, dtype=dtype, device=device)

    keys = ("rgb", "alpha", "distance", "object_alpha", "normals")
    parts: dict[str, list[Tensor]] = {k: [] for k in keys}
    for s in range(0, o.shape[0], chunk_rays):
        e = s + chunk_rays
        # Distances are clipped to the camera's range in camera z, i.e. t cos <= far.
        r = render_rays(
            field, o[s:e], d[s:e], sampler, near=cams.near / c[s:e, 0], far=cams.far / c[s:e, 0],
            background=bg, generator=generator, compute_normals=compute_normals,
        )
        for k in keys:
            if k in r:
                parts[k].append(r[k])
    rays = {("depth" if k == "distance" else k): torch.cat(v) for k, v in parts.items() if v}
    # ray distance -> camera z (t times the cosine to the optical axis), once, in renderers/volume
    return render_output_from_rays(rays, cams, directions=d)
