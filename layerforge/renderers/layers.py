"""Several meshes rendered as layers: normal images, coverage and which layer is in front.

GALA compares "normal" shading (world normals as colours), coverage and a per-pixel layer
segmentation of its human and object meshes with the scan's. :func:`render_layers` rasterizes
the layers as one scene, so the composition's segmentation (which layer is in front) and each
pixel's coverage are differentiable at silhouettes through :func:`~layerforge.renderers.mesh.antialias`;
:func:`render_colours` is the unlit colour render (vertex colours, a UV texture, or a colour
field queried at interpolated points).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from layerforge.renderers.cameras import Camera
from layerforge.renderers.mesh import antialias, interpolate, rasterize, vertex_normals


@dataclasses.dataclass
class LayerImages:
    """Renders of one mesh or a composition of K layers.

    normals: [B, H, W, 3] world normals encoded (n + 1) / 2, times coverage.
    alpha: [B, H, W, 1] antialiased coverage. segmentation: [B, H, W, K] antialiased one-hot
    of the visible layer (K = 1 for a single mesh). face_id: [B, H, W] int64 of the
    concatenated faces (-1 empty).
    """

    normals: Tensor
    alpha: Tensor
    segmentation: Tensor
    face_id: Tensor


def render_layers(vertices: Sequence[Tensor], faces: Sequence[Tensor], cameras: Camera, *,
                  face_labels: Tensor | None = None, num_labels: int | None = None,
                  antialiased: bool = True) -> LayerImages:
    """Render K meshes together.

    Args:
        vertices: K tensors [V_k, 3], world metres. faces: K tensors [F_k, 3].
        cameras: B cameras.
        face_labels: optional [sum F_k] int64 label per face overriding "layer k" (e.g. a scan's
            object/human faces, labels in [0, K)); then segmentation follows the labels.
        num_labels: K of the segmentation (default: the layer count, or the labels' max + 1).
        antialiased: blend silhouettes (gradients w.r.t. vertices there).
    """
    k = num_labels or max(len(vertices), 1 if face_labels is None or not len(face_labels) else int(face_labels.max()) + 1)
    offsets, verts, fcs = 0, [], []
    for v, f in zip(vertices, faces):
        verts.append(v)
        fcs.append(f.long() + offsets)
        offsets += len(v)
    allv = torch.cat(verts)
    allf = torch.cat(fcs) if fcs else torch.zeros(0, 3, dtype=torch.long)
    if not len(allf):  # an empty layer (all-positive SDF) covers nothing
        z = torch.zeros(len(cameras), cameras.height, cameras.width, 1, dtype=allv.dtype, device=allv.device)
        return LayerImages(normals=z.expand(-1, -1, -1, 3), alpha=z, segmentation=z.expand(-1, -1, -1, k),
                           face_id=torch.full(z.shape[:3], -1, dtype=torch.long, device=z.device))
    frags = rasterize(allv, allf, cameras)
    dtype = frags.barycentrics.dtype
    n = interpolate(vertex_normals(allv, allf), frags, allf)
    n = torch.nn.functional.normalize(n, dim=-1)
    mask = frags.mask[..., None].to(dtype)
    if face_labels is None:
        face_labels = torch.cat([torch.full((len(f),), i, dtype=torch.long, device=allf.device) for i, f in enumerate(faces)])
    lab = face_labels.to(frags.face_id.device)[frags.face_id.clamp_min(0)]
    seg = torch.nn.functional.one_hot(lab, k).to(dtype) * mask
    img = torch.cat([(n + 1.0) * 0.5 * mask, mask, seg], dim=-1)
    if antialiased and len(allf):
        img = antialias(img, frags, allv, allf, cameras)
    return LayerImages(normals=img[..., :3], alpha=img[..., 3:4], segmentation=img[..., 4:], face_id=frags.face_id)


def render_colours(vertices: Tensor, faces: Tensor, cameras: Camera, *, colours: Tensor | None = None,
                   uv: Tensor | None = None, texture: Tensor | None = None, field=None,
                   field_points: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Unlit colour of a mesh: per-vertex ``colours`` [V, 3], a UV ``texture`` [Ht, Wt, 3] with
    ``uv`` [V, 2], or a colour ``field`` (points [N, 3] -> [N, 3]) queried at the interpolated
    ``field_points`` [V, 3] (e.g. canonical positions of a posed mesh).

    Returns (rgb [B, H, W, 3], alpha [B, H, W, 1] antialiased, face_id [B, H, W]).
    """
    from layerforge.renderers.mesh import sample_texture

    frags = rasterize(vertices, faces, cameras)
    mask = frags.mask
    dtype = frags.barycentrics.dtype
    if field is not None:
        pts = interpolate(field_points.to(dtype), frags, faces)
        rgb = torch.zeros(*mask.shape, 3, dtype=dtype, device=mask.device)
        if bool(mask.any()):
            rgb = rgb.masked_scatter(mask[..., None].expand_as(rgb), field(pts[mask]).to(dtype))
    elif texture is not None:
        rgb = sample_texture(texture.to(dtype), interpolate(uv.to(dtype), frags, faces))
    else:
        rgb = interpolate(colours.to(dtype), frags, faces)
    a = mask[..., None].to(dtype)
    img = antialias(torch.cat([rgb * a, a], dim=-1), frags, vertices, faces, cameras)
    return img[..., :3], img[..., 3:], frags.face_id
