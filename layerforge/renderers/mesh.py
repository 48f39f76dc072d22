"""Differentiable triangle-mesh rendering: visibility, barycentrics, interpolation, antialias.

Only the visibility search (which face is nearest at each pixel centre) is non-differentiable
and has a kernel backend; everything after it is plain torch, so autograd gives gradients
w.r.t. vertex positions and attributes.

Conventions (see :mod:`layerforge.renderers.cameras`): world metres, OpenCV cameras, pixel
(i, j) sampled at its centre (j + 0.5, i + 0.5), images [B, H, W, C] float in [0, 1].

Visibility rules, identical in both backends (``torch`` reference, ``cuda`` kernel):

- A pixel centre is covered by a face when all three edge functions have the sign of the
  face's signed area or are zero (edges and vertices are inclusive). Both windings are drawn
  (no back-face culling); faces with zero screen area are skipped.
- Faces crossing the near plane (some vertex at camera z < ``cameras.near``, some not) are
  clipped against z = near in camera space (Sutherland-Hodgman) into one or two triangles
  before the visibility search, so rooms and panoramas seen from inside draw their walls and
  floors up to the near plane. The clipped triangles keep the original face id, and their
  barycentrics refer to the original triangle's three vertices (computed from the pixel ray
  and the original vertices), so :func:`interpolate` and gradients are unchanged. Both
  backends get the same clipped triangles (the clipping runs in torch before either search).
  Faces entirely nearer than ``near`` are dropped; pixels whose depth exceeds ``cameras.far``
  stay empty.
- The visible face is the one with the smallest perspective-correct camera depth at the
  pixel centre, ties broken by the smallest face id. Both backends evaluate the same
  float32 operations in the same order and resolve through the packed 64-bit key
  ``(float depth bits << 32) | face id`` with a minimum, so their face ids are identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from layerforge.errors import ConfigError, InputError
from layerforge.renderers.cameras import Camera, project
from layerforge.renderers.output import RenderOutput

__all__ = [
    "Fragments",
    "rasterize",
    "rasterize_clip",
    "rasterize_uv",
    "clip_near",
    "interpolate",
    "antialias",
    "sample_texture",
    "render_textured_parts",
    "face_normals",
    "vertex_normals",
    "normal_map",
    "shade_lambert",
    "render_mesh",
    "edge_neighbours",
]

_EMPTY_KEY = (1 << 63) - 1
BACKENDS = ("auto", "torch", "cuda")


@dataclass
class Fragments:
    """Per-pixel rasterization output for B views of H x W pixels.

    Attributes:
        face_id: [B, H, W] int64 index into ``faces`` of the visible face; -1 where empty.
        barycentrics: [B, H, W, 3] perspective-correct barycentric weights of the visible
            face's three vertices (sum to 1; 0 where empty), of the original face also where
            it was clipped at the near plane. Differentiable w.r.t. vertices.
        depth: [B, H, W] camera-space z of the visible surface in metres (OpenCV +z forward,
            not the distance along the ray); **0 where empty**. Differentiable.
    """

    face_id: Tensor
    barycentrics: Tensor
    depth: Tensor

    @property
    def mask(self) -> Tensor:
        """[B, H, W] bool, True where a face is visible."""
        return self.face_id >= 0


# --------------------------------------------------------------------------------------------
# Shared set-up: per-face screen data in float32, evaluated identically by both backends.
# --------------------------------------------------------------------------------------------


def _check_mesh(vertices: Tensor, faces: Tensor, cameras: Camera) -> tuple[Tensor, Tensor]:
    if vertices.dim() == 2:
        vertices = vertices[None].expand(len(cameras), -1, -1)
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise InputError(
            f"vertices must be [V, 3] or [B, V, 3], got {tuple(vertices.shape)}",
            "pass world-space xyz positions",
        )
    if vertices.shape[0] != len(cameras):
        if vertices.shape[0] == 1:
            vertices = vertices.expand(len(cameras), -1, -1)
        else:
            raise InputError(
                f"vertices batch {vertices.shape[0]} != {len(cameras)} cameras",
                "pass [V, 3] vertices or one vertex set per camera",
            )
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise InputError(f"faces must be [F, 3], got {tuple(faces.shape)}", "pass triangle indices")
    faces = faces.long()
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[1]):
        raise InputError("faces index vertices out of range", "check the face indices")
    if faces.shape[0] >= 2**31 - 1:
        raise InputError("more than 2^31 - 2 faces", "split the mesh")
    return vertices, faces


@dataclass
class _ScreenFaces:
    """Valid (batch, face) pairs with float32 screen data; everything [M] or [M, k]."""

    batch: Tensor  # [M] int64
    face: Tensor  # [M] int64
    xy: Tensor  # [M, 3, 2] float32 pixel coords of the 3 vertices
    inv_z: Tensor  # [M, 3] float32, 1 / camera z
    edge: Tensor  # [M, 3, 2] float32: edge k = v_{k+2} - v_{k+1} (opposite vertex k)
    area: Tensor  # [M] float32 signed area (x1-x0)(y2-y0) - (y1-y0)(x2-x0)
    bbox: Tensor  # [M, 4] int64 conservative pixel range j0, j1, i0, i1 (inclusive, clipped)


def _pack_faces(batch: Tensor, face: Tensor, xy: Tensor, fz: Tensor, width: int, height: int) -> _ScreenFaces:
    """Screen data of candidate triangles (xy [M, 3, 2], camera z [M, 3], all float32 and in
    front of the near plane); drops the ones that cannot cover any pixel centre."""
    w, h = width, height
    x, y = xy[..., 0], xy[..., 1]
    area = (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (y[..., 1] - y[..., 0]) * (
        x[..., 2] - x[..., 0]
    )
    j0 = torch.floor(x.amin(-1) - 0.5).clamp(-1, w)
    j1 = torch.ceil(x.amax(-1) - 0.5).clamp(-1, w)
    i0 = torch.floor(y.amin(-1) - 0.5).clamp(-1, h)
    i1 = torch.ceil(y.amax(-1) - 0.5).clamp(-1, h)
    valid = (
        torch.isfinite(xy).all(-1).all(-1)
        & (area != 0)
        & (j1 >= 0)
        & (j0 <= w - 1)
        & (i1 >= 0)
        & (i0 <= h - 1)
    )
    keep = valid.nonzero(as_tuple=True)[0]
    sel_xy = xy[keep]
    bbox = torch.stack(
        [j0[keep].clamp(0, w - 1), j1[keep].clamp(0, w - 1), i0[keep].clamp(0, h - 1), i1[keep].clamp(0, h - 1)],
        dim=-1,
    ).long()
    nxt = sel_xy[:, [2, 0, 1]] - sel_xy[:, [1, 2, 0]]
    return _ScreenFaces(
        batch=batch[keep],
        face=face[keep],
        xy=sel_xy.contiguous(),
        inv_z=(1.0 / fz[keep]).contiguous(),
        edge=nxt.contiguous(),
        area=area[keep].contiguous(),
        bbox=bbox.contiguous(),
    )


def clip_near(hom: Tensor, near: float) -> tuple[Tensor, Tensor, Tensor]:
    """Clip triangles against the plane w = ``near`` (Sutherland-Hodgman, one plane).

    Works on homogeneous image coordinates ``(u w, v w, w)`` (``w`` = camera z for a
    :class:`Camera`, ``hom = K p_cam``), which are linear in camera space, so the clipped
    polygon is the camera-space one. A triangle with one vertex in front (``w >= near``)
    becomes one triangle, with two in front a quad split into two triangles (fan from the
    polygon's first vertex); the polygon keeps the original vertex order, so the winding is
    kept. An edge's crossing point is interpolated from its front vertex towards its back
    vertex, so two faces sharing the edge get bit-identical points (no cracks).

    Args:
        hom: [C, 3, 3] the triangles' three vertices (rows), each ``(u w, v w, w)``;
            triangles wholly behind the plane give no output.
        near: the clipping plane, same unit as ``w`` (metres for cameras).

    Returns:
        ``clipped`` [T, 3, 3] vertices of the T >= C clipped triangles (same layout),
        ``source`` [T] int64 index of each one's triangle in ``hom``, and ``weights`` [T, 3, 3]
        with row k the weights of the source triangle's vertices for clipped vertex k
        (``clipped = weights @ hom[source]`` up to rounding).
    """
    c = hom.shape[0]
    dtype, device = hom.dtype, hom.device
    w = hom[..., 2]
    front = w >= near  # [C, 3]
    a, b = [0, 1, 2], [1, 2, 0]  # edge k runs from vertex k to vertex k + 1
    fa, fb = front[:, a], front[:, b]
    crosses = fa != fb  # [C, 3]
    eye = torch.eye(3, dtype=dtype, device=device)
    ia = torch.tensor(a, device=device).expand(c, 3)
    ib = torch.tensor(b, device=device).expand(c, 3)
    i_in = torch.where(fa, ia, ib)  # the edge's front vertex (when it crosses)
    i_out = torch.where(fa, ib, ia)
    h_in = hom.gather(1, i_in[..., None].expand(c, 3, 3))  # [C, 3 edges, 3]
    h_out = hom.gather(1, i_out[..., None].expand(c, 3, 3))
    w_in, w_out = h_in[..., 2], h_out[..., 2]
    denom = torch.where(crosses, w_out - w_in, torch.ones_like(w_in))  # < 0 where it crosses
    t = torch.where(crosses, (near - w_in) / denom, torch.zeros_like(w_in))  # [C, 3] in [0, 1]
    x_pos = h_in + t[..., None] * (h_out - h_in)
    x_wts = (1.0 - t)[..., None] * eye[i_in] + t[..., None] * eye[i_out]
    # Sutherland-Hodgman output, in order: vertex k if in front, then edge k's crossing point.
    slot_pos = torch.stack([hom, x_pos], dim=2).reshape(c, 6, 3)
    slot_wts = torch.stack([eye.expand(c, 3, 3), x_wts], dim=2).reshape(c, 6, 3)
    slot_ok = torch.stack([front, crosses], dim=2).reshape(c, 6)
    order = torch.argsort((~slot_ok).to(torch.int8), dim=1, stable=True)  # kept slots first, in order
    poly_pos = slot_pos.gather(1, order[..., None].expand(c, 6, 3))
    poly_wts = slot_wts.gather(1, order[..., None].expand(c, 6, 3))
    count = slot_ok.sum(1)
    quad = count == 4
    idx = torch.arange(c, device=device)
    first, second = [0, 1, 2], [0, 2, 3]
    clipped = torch.cat([poly_pos[:, first], poly_pos[quad][:, second]])
    weights = torch.cat([poly_wts[:, first], poly_wts[quad][:, second]])
    source = torch.cat([idx, idx[quad]])
    ok = count[source] >= 3  # a triangle wholly behind the plane leaves nothing
    return clipped[ok], source[ok], weights[ok]


def _screen_faces(
    hom: Tensor, pix: Tensor, z: Tensor, faces: Tensor, width: int, height: int, near: float
) -> tuple[_ScreenFaces, Tensor]:
    """Screen data of every (batch, face) pair that can cover a pixel centre.

    Faces wholly in front of ``near`` are used as they are; faces crossing it are clipped
    (:func:`clip_near`) and their one or two pieces carry the original face id.

    Returns the screen faces and ``crossing`` [B, F] bool (faces that were clipped).
    """
    pix = pix.detach().float()
    z = z.detach().float()
    xy = pix[:, faces]  # [B, F, 3, 2]
    fz = z[:, faces]  # [B, F, 3]
    front = fz >= near
    whole = front.all(-1)
    crossing = front.any(-1) & ~whole
    bi, fi = whole.nonzero(as_tuple=True)
    parts = [_pack_faces(bi, fi, xy[bi, fi], fz[bi, fi], width, height)]
    if bool(crossing.any()):
        cb, cf = crossing.nonzero(as_tuple=True)
        # clip in the vertices' dtype, then round to float32 like every other face
        clipped, src, _ = clip_near(hom.detach()[cb[:, None], faces[cf]], near)
        cz = clipped[..., 2]
        cxy = (clipped[..., :2] / cz[..., None]).float()
        parts.append(_pack_faces(cb[src], cf[src], cxy, cz.float().clamp_min(near), width, height))
    if len(parts) == 1:
        return parts[0], crossing
    return (
        _ScreenFaces(**{k: torch.cat([getattr(p, k) for p in parts]) for k in _ScreenFaces.__dataclass_fields__}),
        crossing,
    )


def _depth_keys(
    sf: _ScreenFaces, idx: Tensor, px: Tensor, py: Tensor, far: float
) -> tuple[Tensor, Tensor]:
    """Coverage and packed keys for candidate (face ``idx``, pixel centre (px, py)).

    The CUDA kernel evaluates exactly these float32 operations in this order.
    """
    x = sf.xy[idx]  # [N, 3, 2]
    e = sf.edge[idx]
    # w_k: edge function of the edge opposite vertex k, anchored at vertex k+1.
    w0 = e[:, 0, 0] * (py - x[:, 1, 1]) - e[:, 0, 1] * (px - x[:, 1, 0])
    w1 = e[:, 1, 0] * (py - x[:, 2, 1]) - e[:, 1, 1] * (px - x[:, 2, 0])
    w2 = e[:, 2, 0] * (py - x[:, 0, 1]) - e[:, 2, 1] * (px - x[:, 0, 0])
    area = sf.area[idx]
    pos = area > 0
    inside = torch.where(
        pos,
        (w0 >= 0) & (w1 >= 0) & (w2 >= 0),
        (w0 <= 0) & (w1 <= 0) & (w2 <= 0),
    )
    iz = sf.inv_z[idx]
    inv = (w0 / area) * iz[:, 0] + (w1 / area) * iz[:, 1]
    inv = inv + (w2 / area) * iz[:, 2]
    depth = 1.0 / inv
    inside = inside & (depth <= far) & (depth > 0)
    key = (depth.view(torch.int32).long() << 32) | sf.face[idx]
    return inside, key


def _visibility_torch(
    sf: _ScreenFaces, batch: int, height: int, width: int, far: float, max_candidates: int
) -> Tensor:
    """Reference z-buffer on any device.

    Faces are binned by their (conservative, clipped) pixel bounding boxes: every face
    expands to the pixel centres of its box, so work follows the covered area and not
    F x H x W. Faces are processed in chunks holding at most ``max_candidates`` (face, pixel)
    candidates (a single face larger than that is its own chunk, bounded by H x W), which
    bounds memory; each chunk scatter-mins its packed keys into one int64 z-buffer.
    """
    device = sf.xy.device
    zbuf = torch.full((batch * height * width,), _EMPTY_KEY, dtype=torch.int64, device=device)
    nx = sf.bbox[:, 1] - sf.bbox[:, 0] + 1
    ny = sf.bbox[:, 3] - sf.bbox[:, 2] + 1
    count = nx * ny
    cum = torch.cumsum(count, 0)
    start, m, done = 0, count.shape[0], 0
    while start < m:
        # faces [start, end) hold at most max_candidates candidates (at least one face).
        end = int(torch.searchsorted(cum, done + max_candidates, right=True))
        end = max(end, start + 1)
        n = count[start:end]
        idx = torch.repeat_interleave(torch.arange(start, end, device=device), n)
        offs = torch.cumsum(n, 0) - n
        local = torch.arange(idx.shape[0], device=device) - torch.repeat_interleave(offs, n)
        nxi = nx[idx]
        j = sf.bbox[idx, 0] + local % nxi
        i = sf.bbox[idx, 2] + torch.div(local, nxi, rounding_mode="floor")
        px = j.float() + 0.5
        py = i.float() + 0.5
        inside, key = _depth_keys(sf, idx, px, py, far)
        target = (sf.batch[idx] * height + i) * width + j
        zbuf.scatter_reduce_(0, target[inside], key[inside], reduce="amin")
        done = int(cum[end - 1])
        start = end
    face_id = torch.where(zbuf == _EMPTY_KEY, torch.full_like(zbuf, -1), zbuf & 0xFFFFFFFF)
    return face_id.view(batch, height, width)


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown mesh rasterizer backend {backend!r}", f"use one of {BACKENDS}")
    if backend == "auto":
        return "cuda" if device.type == "cuda" else "torch"
    if backend == "cuda" and device.type != "cuda":
        raise ConfigError(
            "mesh backend 'cuda' needs tensors on a CUDA device",
            "move vertices and cameras to cuda, or use backend='torch'",
        )
    return backend


# Twice a projected triangle's area (pixels^2) below which it counts as degenerate: marching
# cubes / tets make zero-area triangles, which the float32 visibility search may still report
# as covering a pixel; their weights would be 0 / 0.
DEGENERATE_AREA = 1e-9


def _normalised_weights(raw: Tensor) -> Tensor:
    """[P, 3] edge-function weights divided by their sum; a degenerate triangle's: (1/3, 1/3, 1/3), no NaN gradient."""
    total = raw.sum(-1, keepdim=True)
    ok = total.abs() > DEGENERATE_AREA
    safe = torch.where(ok, total, torch.ones_like(total))
    return torch.where(ok, raw / safe, torch.full_like(raw, 1.0 / 3.0))


def _barycentrics(
    hom: Tensor, pix: Tensor, z: Tensor, faces: Tensor, face_id: Tensor, crossing: Tensor
) -> tuple[Tensor, Tensor]:
    """Differentiable perspective-correct barycentrics and depth at the visible faces.

    Faces in front of the near plane use screen-space edge functions weighted by 1 / z.
    Clipped faces (``crossing`` [B, F]; some vertices behind the camera, whose projections are
    meaningless) use the pixel ray instead: with ``q = (px, py, 1)`` and the homogeneous
    vertices ``H_k = (u w, v w, w)``, ``b_k ~ det[q, H_k+1, H_k+2]`` (the ray-plane
    intersection's barycentrics, exact for any vertex depth) and depth ``sum_k b_k w_k``.
    """
    b, h, w = face_id.shape
    dtype, device = pix.dtype, pix.device
    bary = torch.zeros(b, h, w, 3, dtype=dtype, device=device)
    depth = torch.zeros(b, h, w, dtype=dtype, device=device)
    bi, ii, jj = (face_id >= 0).nonzero(as_tuple=True)
    if bi.numel() == 0:
        return bary, depth
    fid = face_id[bi, ii, jj]
    clipped = crossing[bi, fid]
    px = jj.to(dtype) + 0.5
    py = ii.to(dtype) + 0.5
    r = (~clipped).nonzero(as_tuple=True)[0]
    if r.numel():
        fv = faces[fid[r]]  # [P, 3]
        xy = pix[bi[r, None], fv]  # [P, 3, 2]
        iz = 1.0 / z[bi[r, None], fv]  # [P, 3]
        x, y = xy[..., 0], xy[..., 1]
        qx, qy = px[r], py[r]
        w0 = (x[:, 2] - x[:, 1]) * (qy - y[:, 1]) - (y[:, 2] - y[:, 1]) * (qx - x[:, 1])
        w1 = (x[:, 0] - x[:, 2]) * (qy - y[:, 2]) - (y[:, 0] - y[:, 2]) * (qx - x[:, 2])
        w2 = (x[:, 1] - x[:, 0]) * (qy - y[:, 0]) - (y[:, 1] - y[:, 0]) * (qx - x[:, 0])
        screen = torch.stack([w0, w1, w2], dim=-1)
        screen = _normalised_weights(screen)
        persp = screen * iz
        inv = persp.sum(-1, keepdim=True)
        bary = bary.index_put((bi[r], ii[r], jj[r]), persp / inv)
        depth = depth.index_put((bi[r], ii[r], jj[r]), 1.0 / inv[:, 0])
    c = clipped.nonzero(as_tuple=True)[0]
    if c.numel():
        hv = hom[bi[c, None], faces[fid[c]]]  # [P, 3, 3] rows H_k
        q = torch.stack([px[c], py[c], torch.ones_like(px[c])], dim=-1)  # [P, 3]
        det = torch.stack(
            [(q * torch.linalg.cross(hv[:, (k + 1) % 3], hv[:, (k + 2) % 3], dim=-1)).sum(-1) for k in range(3)],
            dim=-1,
        )
        bc = _normalised_weights(det)
        bary = bary.index_put((bi[c], ii[c], jj[c]), bc)
        depth = depth.index_put((bi[c], ii[c], jj[c]), (bc * hv[..., 2]).sum(-1))
    return bary, depth


def _homogeneous(cameras: Camera, vertices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Homogeneous image coordinates ``K p_cam`` [B, V, 3] and, as :func:`project`, pixels
    [B, V, 2] and camera z [B, V] of world vertices [B, V, 3]."""
    w2c = cameras.world_to_camera.to(vertices.dtype)
    p_cam = vertices @ w2c[:, :3, :3].transpose(-1, -2) + w2c[:, None, :3, 3]
    z = p_cam[..., 2]
    p_img = p_cam @ cameras.K.to(vertices.dtype).transpose(-1, -2)
    pix = p_img[..., :2] / z[..., None]
    return torch.cat([p_img[..., :2], z[..., None]], dim=-1), pix, z


def _rasterize_homogeneous(
    hom: Tensor,
    pix: Tensor,
    z: Tensor,
    faces: Tensor,
    height: int,
    width: int,
    near: float,
    far: float,
    backend: str,
    max_candidates: int,
) -> Fragments:
    """Visibility + barycentrics for vertices given as homogeneous pixel coordinates [B, V, 3]."""
    which = _resolve_backend(backend, hom.device)
    sf, crossing = _screen_faces(hom, pix, z, faces, width, height, near)
    b = hom.shape[0]
    if which == "torch":
        face_id = _visibility_torch(sf, b, height, width, far, max_candidates)
    else:
        from layerforge.renderers.mesh_cuda import visibility_cuda

        face_id = visibility_cuda(sf, b, height, width, far)
    bary, depth = _barycentrics(hom, pix, z, faces, face_id, crossing)
    return Fragments(face_id=face_id, barycentrics=bary, depth=depth)


def rasterize(
    vertices: Tensor,
    faces: Tensor,
    cameras: Camera,
    backend: str = "auto",
    *,
    max_candidates: int = 1 << 21,
) -> Fragments:
    """Find the visible triangle and its barycentrics at every pixel centre.

    Faces crossing the camera's near plane are clipped there (see the module docstring), so
    geometry around and behind the camera (a room seen from inside) is drawn correctly.

    Args:
        vertices: world positions [V, 3] (shared by all views) or [B, V, 3], metres. Any
            float dtype; gradients flow into ``barycentrics`` and ``depth``.
        faces: [F, 3] integer vertex indices (either winding; both sides are drawn).
        cameras: B cameras (OpenCV world-to-camera, K in pixels), all H x W.
        backend: ``"torch"`` (reference; any device), ``"cuda"`` (project kernel, CUDA
            tensors) or ``"auto"`` (``cuda`` on CUDA tensors, else ``torch``).
        max_candidates: torch backend memory bound: (face, pixel) candidates per chunk.

    Returns:
        :class:`Fragments` with face_id [B, H, W] (-1 empty), barycentrics [B, H, W, 3]
        (of the original face's vertices, also for clipped faces) and depth [B, H, W] (camera
        z, 0 where empty). Visibility is decided in float32; barycentrics and depth are
        computed in the dtype of ``vertices``.
    """
    vertices, faces = _check_mesh(vertices, faces, cameras)
    cams = cameras.to(device=vertices.device, dtype=vertices.dtype)
    hom, pix, z = _homogeneous(cams, vertices)
    return _rasterize_homogeneous(
        hom, pix, z, faces, cams.height, cams.width, cams.near, cams.far, backend, max_candidates
    )


# Default clip-space near plane: the Camera default (metres when w is camera z).
CLIP_NEAR = 0.01


def rasterize_clip(
    clip_xyw: Tensor,
    faces: Tensor,
    height: int,
    width: int,
    *,
    near: float = CLIP_NEAR,
    far: float = math.inf,
    backend: str = "auto",
    max_candidates: int = 1 << 21,
) -> Fragments:
    """Rasterize triangles given in clip space, without a :class:`Camera`.

    A vertex ``(x, y, w)`` lands at normalised device coordinates ``(x / w, y / w)``, where
    ``(-1, -1)`` is the **top-left** corner of the image and ``(1, 1)`` the bottom-right
    (+x right, +y down, as OpenCV pixels; OpenGL clip coordinates need ``y -> -y``, and their
    z is not used). Pixel (i, j) is sampled at NDC ``((2 j + 1) / W - 1, (2 i + 1) / H - 1)``.
    Interpolation is perspective-correct in ``w``, the nearest interpolated ``w`` is visible
    (ties: smallest face id), and triangles crossing ``w = near`` are clipped there. With
    ``w = 1`` everywhere (UV maps, :func:`rasterize_uv`) interpolation is affine.

    Args:
        clip_xyw: [V, 3] or [B, V, 3] clip-space positions (x, y, w); any float dtype,
            differentiable like :func:`rasterize`'s vertices.
        faces: [F, 3] integer vertex indices (either winding).
        height, width: image size H x W in pixels.
        near: clip plane in ``w``; geometry at smaller ``w`` is cut away.
        far: pixels whose interpolated ``w`` exceeds this stay empty.
        backend, max_candidates: as :func:`rasterize`.

    Returns:
        :class:`Fragments` [B, H, W] (B = 1 for [V, 3] input); ``depth`` holds the
        interpolated ``w``.
    """
    if clip_xyw.dim() == 2:
        clip_xyw = clip_xyw[None]
    if clip_xyw.dim() != 3 or clip_xyw.shape[-1] != 3:
        raise InputError(
            f"clip_xyw must be [V, 3] or [B, V, 3], got {tuple(clip_xyw.shape)}", "pass (x, y, w) per vertex"
        )
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise InputError(f"faces must be [F, 3], got {tuple(faces.shape)}", "pass triangle indices")
    faces = faces.long()
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= clip_xyw.shape[1]):
        raise InputError("faces index vertices out of range", "check the face indices")
    if height < 1 or width < 1:
        raise InputError(f"image size must be positive, got {height} x {width}", "pass height, width >= 1")
    if not 0.0 < near < far:
        raise ConfigError(f"rasterize_clip needs 0 < near < far, got near={near} far={far}", "pass a positive near")
    x, y, w = clip_xyw.unbind(-1)
    # pixel u = (x / w + 1) W / 2, so u w = (x + w) W / 2 (and likewise v)
    hom = torch.stack([(x + w) * (0.5 * width), (y + w) * (0.5 * height), w], dim=-1)
    pix = hom[..., :2] / w[..., None]
    return _rasterize_homogeneous(hom, pix, w, faces, height, width, near, far, backend, max_candidates)


def rasterize_uv(
    uv: Tensor,
    faces: Tensor,
    resolution: int | tuple[int, int],
    *,
    backend: str = "auto",
) -> Fragments:
    """Rasterize a mesh's UV layout into an H x W texture image (for baking).

    Texel (i, j) is sampled at its centre ``u = (j + 0.5) / W``, ``v = 1 - (i + 0.5) / H``:
    the OBJ/Blender convention of :func:`sample_texture` (v up, row 0 the top of the image),
    so ``sample_texture(baked, uv)`` at a texel centre returns that texel. A texel is covered
    when its centre is inside (or on an edge of) a UV triangle; where UV triangles overlap, the
    smallest face id wins. Bake any per-vertex attribute with :func:`interpolate`, e.g.
    ``interpolate(vertices, rasterize_uv(uv, uv_faces, 1024), faces)`` is a [1, H, W, 3]
    world-position map (0 where no triangle), ``normal_map(frags, vertices, faces)`` a
    world-normal map.

    Args:
        uv: [Vt, 2] or [B, Vt, 2] texture coordinates (u right, v up, in [0, 1]²).
        faces: [F, 3] indices into ``uv`` (a mesh's UV faces; face k must be the same
            triangle as face k of the position faces passed to :func:`interpolate`).
        resolution: texture size: ``S`` for S x S, or ``(H, W)``.
        backend: as :func:`rasterize`.

    Returns:
        :class:`Fragments` [B, H, W] (B = 1 for [Vt, 2]); barycentrics are affine in UV;
        ``depth`` is 1 where covered.
    """
    if uv.dim() not in (2, 3) or uv.shape[-1] != 2:
        raise InputError(f"uv must be [Vt, 2] or [B, Vt, 2], got {tuple(uv.shape)}", "pass (u, v) per vertex")
    h, w = (resolution, resolution) if isinstance(resolution, int) else (int(resolution[0]), int(resolution[1]))
    one = torch.ones_like(uv[..., :1])
    clip = torch.cat([uv[..., :1] * 2.0 - 1.0, 1.0 - uv[..., 1:] * 2.0, one], dim=-1)
    return rasterize_clip(clip, faces, h, w, backend=backend)


def interpolate(attributes: Tensor, fragments: Fragments, faces: Tensor) -> Tensor:
    """Interpolate per-vertex attributes at the visible surface.

    Args:
        attributes: [V, C] or [B, V, C] values at the vertices (any float dtype).
        fragments: output of :func:`rasterize`.
        faces: [F, 3] indices into ``attributes`` with the same face order as the faces
            rasterized (pass UV face indices here for face-varying UVs).

    Returns:
        [B, H, W, C]; 0 where empty. Differentiable w.r.t. attributes and barycentrics.
    """
    b, h, w = fragments.face_id.shape
    if attributes.dim() == 2:
        attributes = attributes[None].expand(b, -1, -1)
    faces = faces.long()
    fid = fragments.face_id.clamp_min(0)
    fv = faces[fid]  # [B, H, W, 3]
    bidx = torch.arange(b, device=fid.device)[:, None, None, None]
    vals = attributes[bidx, fv]  # [B, H, W, 3, C]
    out = (fragments.barycentrics.to(vals.dtype)[..., None] * vals).sum(-2)
    return out * fragments.mask[..., None].to(out.dtype)


def edge_neighbours(faces: Tensor) -> Tensor:
    """For each face edge k (vertices k -> k+1) the face across it, [F, 3] int64.

    -1 marks a boundary edge or a non-manifold edge (shared by more than two faces).
    """
    faces = faces.long()
    f = faces.shape[0]
    nb = torch.full((f * 3,), -1, dtype=torch.int64, device=faces.device)
    if f == 0:
        return nb.view(0, 3)
    e = torch.stack([faces, faces.roll(-1, dims=1)], dim=-1).view(-1, 2)  # [F*3, 2]
    lo, hi = e.min(-1).values, e.max(-1).values
    key = lo * (int(faces.max()) + 1) + hi
    _, inv, counts = torch.unique(key, return_inverse=True, return_counts=True)
    order = torch.argsort(inv, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    two = starts[counts == 2]
    a, c = order[two], order[two + 1]
    nb[a] = torch.div(c, 3, rounding_mode="floor")
    nb[c] = torch.div(a, 3, rounding_mode="floor")
    return nb.view(f, 3)


def antialias(
    image: Tensor,
    fragments: Fragments,
    vertices: Tensor,
    faces: Tensor,
    cameras: Camera,
    *,
    neighbours: Tensor | None = None,
    max_walk: int = 8,
) -> Tensor:
    """Blend colours across silhouette edges so the image depends continuously on vertices.

    The analytic antialiasing of Laine et al. 2020 (nvdiffrast). For every horizontally or
    vertically adjacent pixel pair with different face ids, the nearer face ("front", an
    empty pixel counts as infinitely far) covers its own pixel centre. Walking from that face
    along the centre-to-centre segment across front faces (through edges shared with a
    neighbour of the same orientation in this view) until a silhouette edge is met (no
    neighbour across it, or the neighbour faces the other way) gives the crossing point ``t``
    in [0, 1], which decides a blend: with ``t > 1/2`` the other pixel takes ``t - 1/2`` of the
    front pixel's colour, with ``t < 1/2`` the front pixel takes ``1/2 - t`` of the other's.
    ``t`` is a differentiable function of the silhouette edge's projected vertices, which
    is where the gradient w.r.t. vertex positions at silhouettes comes from. Pairs whose
    walk leaves the segment (t >= 1: both pixels on one continuous surface) or takes more
    than ``max_walk`` faces are left unchanged, and so are pairs whose walk starts in or
    reaches a face with a vertex nearer than ``cameras.near`` (clipped faces: their projected
    edges are meaningless, so their silhouettes get no blend and no silhouette gradient).

    Each silhouette edge is blended across its dominant direction only: an edge whose
    projection is more horizontal than vertical (``|dx| > |dy|``) by vertical pairs, any
    other edge (``|dx| <= |dy|``) by horizontal pairs; a pair whose walk meets an edge of the
    other kind is left unchanged. Then, for a straight edge, each row (or column) crossing it
    gains exactly the area the edge adds to that row, so the summed coverage of a shape is
    its area and moves continuously with the edge; blending an edge both ways would count it
    twice (gradients twice the area's) and make the image jump when an edge crosses a pixel
    centre. Where a corner passes a pixel centre the image can still jump by a fraction of a
    pixel (sub-pixel slivers cover no centre; the walk's exit switches between a corner's
    two edges; an edge turns through 45 degrees): the blend is exact along straight edges
    and approximate at corners.

    Args:
        image: [B, H, W, C] shaded image (background already filled in empty pixels).
        fragments: the :func:`rasterize` output ``image`` was made from.
        vertices: [V, 3] or [B, V, 3] world positions (as rasterized; needs grad for
            silhouette gradients).
        faces: [F, 3] vertex indices (as rasterized).
        cameras: the B cameras rasterized.
        neighbours: optional precomputed :func:`edge_neighbours` of ``faces``.
        max_walk: most faces crossed looking for the silhouette edge.

    Returns:
        [B, H, W, C] antialiased image.
    """
    vertices, faces = _check_mesh(vertices, faces, cameras)
    b, h, w, c = image.shape
    cams = cameras.to(device=vertices.device, dtype=vertices.dtype)
    pix, z = project(cams, vertices)  # [B, V, 2] with grad
    nb = edge_neighbours(faces) if neighbours is None else neighbours.long()
    near_cut = (z.detach()[:, faces] < cams.near).any(-1)  # [B, F] faces the rasterizer clipped
    x = pix.detach()[:, faces]  # [B, F, 3, 2]
    area = (x[..., 1, 0] - x[..., 0, 0]) * (x[..., 2, 1] - x[..., 0, 1]) - (
        x[..., 1, 1] - x[..., 0, 1]
    ) * (x[..., 2, 0] - x[..., 0, 0])
    fid = fragments.face_id.reshape(-1)
    dep = torch.where(fid >= 0, fragments.depth.detach().reshape(-1), torch.inf)
    pix_d = pix.detach()
    flat = image.reshape(-1, c)
    out = flat
    for horizontal in (True, False):
        fid3 = fragments.face_id
        if horizontal:
            m = fid3[:, :, :-1] != fid3[:, :, 1:]
            step = 1
        else:
            m = fid3[:, :-1, :] != fid3[:, 1:, :]
            step = w
        bi, ii, jj = m.nonzero(as_tuple=True)
        if bi.numel() == 0:
            continue
        p = (bi * h + ii) * w + jj
        q = p + step
        front_p = dep[p] <= dep[q]
        a = torch.where(front_p, p, q)
        o = torch.where(front_p, q, p)
        fa = fid[a]
        ba = torch.div(a, h * w, rounding_mode="floor")

        def centre(idx: Tensor) -> Tensor:
            r = idx % (h * w)
            return torch.stack(
                [(r % w).to(pix.dtype) + 0.5, torch.div(r, w, rounding_mode="floor").to(pix.dtype) + 0.5],
                dim=-1,
            )

        ca, co = centre(a), centre(o)
        cur, k, keep = _walk_to_silhouette(pix_d, area, faces, nb, ba, fa, ca, co, max_walk, near_cut)
        # Each silhouette edge is blended only across its dominant direction (see docstring):
        # a mostly horizontal edge (|dx| > |dy|) by vertical pairs, any other by horizontal ones.
        ev = faces[cur]
        e0 = pix_d[ba, ev.gather(1, k[:, None])[:, 0]]  # [P, 2] silhouette edge v_k -> v_k+1
        e1 = pix_d[ba, ev.gather(1, ((k + 1) % 3)[:, None])[:, 0]]
        mostly_horizontal = (e1[:, 0] - e0[:, 0]).abs() > (e1[:, 1] - e0[:, 1]).abs()
        keep = keep & (mostly_horizontal != horizontal)
        if not bool(keep.any()):
            continue
        cur, k, ba_k = cur[keep], k[keep], ba[keep]
        ca, co = ca[keep], co[keep]
        fv = faces[cur]
        v0 = pix[ba_k, fv.gather(1, k[:, None])[:, 0]]  # silhouette edge start, differentiable
        v1 = pix[ba_k, fv.gather(1, ((k + 1) % 3)[:, None])[:, 0]]
        d = v1 - v0
        ea = d[:, 0] * (ca[:, 1] - v0[:, 1]) - d[:, 1] * (ca[:, 0] - v0[:, 0])
        eo = d[:, 0] * (co[:, 1] - v0[:, 1]) - d[:, 1] * (co[:, 0] - v0[:, 0])
        denom = ea - eo
        ok = denom.abs() > DEGENERATE_AREA
        # where the edge's line crosses the segment a -> o; a degenerate (zero-length) edge: 0.5, no blend
        t = torch.where(ok, ea / torch.where(ok, denom, torch.ones_like(denom)), torch.full_like(ea, 0.5))
        a, o = a[keep], o[keep]
        col_a, col_o = flat[a], flat[o]
        wo = (t - 0.5).clamp_min(0)[:, None]
        wa = (0.5 - t).clamp_min(0)[:, None]
        out = out.index_add(0, o, wo.to(flat.dtype) * (col_a - col_o))
        out = out.index_add(0, a, wa.to(flat.dtype) * (col_o - col_a))
    return out.view(b, h, w, c)


def _walk_to_silhouette(
    pix: Tensor,
    area: Tensor,
    faces: Tensor,
    nb: Tensor,
    ba: Tensor,
    fa: Tensor,
    ca: Tensor,
    co: Tensor,
    max_walk: int,
    near_cut: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Follow segments ca -> co from face fa across same-facing neighbours to a silhouette.

    A walk that starts in or would enter a face of ``near_cut`` [B, F] stops, not found.
    Returns (face [P], edge index k [P] (edge v_k -> v_{k+1}), found [P] bool). No gradients.
    """
    cur = fa.clone()
    active = ~near_cut[ba, fa]
    found = torch.zeros_like(active)
    k_hit = torch.zeros_like(fa)
    for _ in range(max_walk):
        v = pix[ba[:, None], faces[cur]]  # [P, 3, 2]
        d = v.roll(-1, dims=1) - v
        sgn = torch.sign(area[ba, cur])[:, None]
        ea = sgn * (d[..., 0] * (ca[:, None, 1] - v[..., 1]) - d[..., 1] * (ca[:, None, 0] - v[..., 0]))
        eo = sgn * (d[..., 0] * (co[:, None, 1] - v[..., 1]) - d[..., 1] * (co[:, None, 0] - v[..., 0]))
        dec = (ea - eo) > 0  # edge functions that decrease along the segment bound the exit
        t_exit = torch.where(dec, ea / torch.where(dec, ea - eo, torch.ones_like(ea)), torch.inf)
        k = t_exit.argmin(-1)
        beyond = t_exit.gather(1, k[:, None])[:, 0] >= 1.0
        nxt = nb[cur, k]
        into_cut = (nxt >= 0) & near_cut[ba, nxt.clamp_min(0)]
        sil = (nxt < 0) | (torch.sign(area[ba, nxt.clamp_min(0)]) != sgn[:, 0])
        hit = active & ~beyond & sil & ~into_cut
        found |= hit
        k_hit = torch.where(hit, k, k_hit)
        active = active & ~beyond & ~sil & ~into_cut
        cur = torch.where(hit | ~active, cur, nxt)
        if not bool(active.any()):
            break
    return cur, k_hit, found


def sample_texture(texture: Tensor, uv: Tensor, *, wrap: str = "repeat") -> Tensor:
    """Bilinear texture lookup.

    Args:
        texture: [B, Ht, Wt, C] or [Ht, Wt, C] image; row 0 is the **top** of the image.
        uv: [B, H, W, 2] texture coordinates in the OBJ/Blender convention: u to the right,
            **v up**, (0, 0) the bottom-left corner and (1, 1) the top-right corner of the
            image (texel centres at (k + 0.5) / size). glTF's v points down; its reader and
            writer convert with ``v -> 1 - v``.
        wrap: ``"repeat"`` (u, v taken modulo 1) or ``"clamp"`` (edge texels extend).

    Returns:
        [B, H, W, C] sampled values; differentiable w.r.t. texture and uv.
    """
    if texture.dim() == 3:
        texture = texture[None].expand(uv.shape[0], -1, -1, -1)
    if wrap == "repeat":
        uv = torch.remainder(uv, 1.0)
        padding = "border"
    elif wrap == "clamp":
        padding = "border"
    else:
        raise ConfigError(f"unknown texture wrap mode {wrap!r}", "use 'repeat' or 'clamp'")
    grid = torch.stack([uv[..., 0] * 2.0 - 1.0, 1.0 - uv[..., 1] * 2.0], dim=-1)
    tex = texture.permute(0, 3, 1, 2).to(grid.dtype)
    out = F.grid_sample(tex, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    return out.permute(0, 2, 3, 1)


def face_normals(vertices: Tensor, faces: Tensor, *, normalize: bool = True) -> Tensor:
    """[..., F, 3] face normals (counter-clockwise winding -> right-hand rule) of [..., V, 3]."""
    faces = faces.long()
    v0, v1, v2 = vertices[..., faces[:, 0], :], vertices[..., faces[:, 1], :], vertices[..., faces[:, 2], :]
    n = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)
    return F.normalize(n, dim=-1) if normalize else n


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """[..., V, 3] unit vertex normals: area-weighted sum of adjacent face normals."""
    faces = faces.long()
    fn = face_normals(vertices, faces, normalize=False)  # [..., F, 3]
    out = torch.zeros_like(vertices)
    for k in range(3):
        out = out.index_add(-2, faces[:, k], fn)
    return F.normalize(out, dim=-1)


def normal_map(
    fragments: Fragments, vertices: Tensor, faces: Tensor, *, smooth: bool = True
) -> Tensor:
    """World-space unit normals [B, H, W, 3] at the visible surface (0 where empty).

    Args:
        fragments: :func:`rasterize` output.
        vertices: [V, 3] or [B, V, 3] world positions (as rasterized).
        faces: [F, 3] vertex indices.
        smooth: interpolate area-weighted vertex normals (True) or use flat face normals.
    """
    b = fragments.face_id.shape[0]
    if vertices.dim() == 2:
        vertices = vertices[None].expand(b, -1, -1)
    if smooth:
        n = interpolate(vertex_normals(vertices, faces), fragments, faces)
        n = F.normalize(n, dim=-1)
    else:
        fn = face_normals(vertices, faces)  # [B, F, 3]
        bidx = torch.arange(b, device=fn.device)[:, None, None]
        n = fn[bidx, fragments.face_id.clamp_min(0)]
    return n * fragments.mask[..., None].to(n.dtype)


def shade_lambert(
    normals: Tensor,
    albedo: Tensor,
    light_dir: Tensor,
    *,
    ambient: float = 0.3,
    two_sided: bool = True,
) -> Tensor:
    """Lambertian shading ``albedo * (ambient + (1 - ambient) * max(n . l, 0))``.

    Args:
        normals: [B, H, W, 3] unit world normals.
        albedo: [B, H, W, C] or broadcastable (e.g. [C]) linear colour in [0, 1].
        light_dir: [B, 3] or [3] world direction **towards** the light (need not be unit).
        ambient: fraction of light that is direction-independent.
        two_sided: use ``|n . l|`` so faces lit from behind are not black.

    Returns:
        [B, H, W, C] linear colour.
    """
    l = F.normalize(torch.as_tensor(light_dir, dtype=normals.dtype, device=normals.device), dim=-1)
    if l.dim() == 1:
        l = l[None]
    cos = (normals * l[:, None, None, :]).sum(-1, keepdim=True)
    cos = cos.abs() if two_sided else cos.clamp_min(0)
    return albedo * (ambient + (1.0 - ambient) * cos)


def render_mesh(
    vertices: Tensor,
    faces: Tensor,
    cameras: Camera,
    *,
    vertex_colors: Tensor | None = None,
    uv: Tensor | None = None,
    uv_faces: Tensor | None = None,
    texture: Tensor | None = None,
    light_dir: Tensor | None = None,
    background: float | Tensor = 0.0,
    antialias_edges: bool = True,
    backend: str = "auto",
) -> RenderOutput:
    """Shaded preview render of one mesh.

    Args:
        vertices: [V, 3] or [B, V, 3] world positions, metres.
        faces: [F, 3] vertex indices.
        cameras: B cameras, H x W.
        vertex_colors: optional [V, 3] / [B, V, 3] linear albedo.
        uv, uv_faces, texture: optional texturing: uv [Vt, 2] (v up, see
            :func:`sample_texture`), uv_faces [F, 3] indices into ``uv`` (default ``faces``),
            texture [Ht, Wt, 3] or [B, Ht, Wt, 3] linear albedo. Used instead of colours.
        light_dir: [3] or [B, 3] world direction towards the light; default: from the camera.
        background: colour where empty (float or [3]).
        antialias_edges: run :func:`antialias` on the result.
        backend: rasterizer backend, as :func:`rasterize`.

    Returns:
        :class:`RenderOutput`: ``rgb`` [B, H, W, 3], ``alpha`` [B, H, W, 1] (antialiased
        coverage), ``depth`` [B, H, W, 1] (camera z in metres of the visible surface, 0 where
        empty; not antialiased), ``normals`` [B, H, W, 3] (world, unit, interpolated vertex
        normals, 0 where empty), extras ``face_id`` [B, H, W] int64 (-1 where empty) and
        ``barycentrics`` [B, H, W, 3] (:class:`Fragments`).
    """
    frags = rasterize(vertices, faces, cameras, backend)
    dtype = frags.barycentrics.dtype
    normal = normal_map(frags, vertices, faces)
    if texture is not None and uv is not None:
        uvi = interpolate(uv.to(dtype), frags, faces if uv_faces is None else uv_faces)
        albedo = sample_texture(texture.to(dtype), uvi)
    elif vertex_colors is not None:
        albedo = interpolate(vertex_colors.to(dtype), frags, faces)
    else:
        albedo = torch.full((*frags.face_id.shape, 3), 0.8, dtype=dtype, device=frags.depth.device)
    if light_dir is None:
        cams = cameras.to(device=frags.depth.device, dtype=dtype)
        light_dir = -cams.world_to_camera[:, 2, :3]  # towards the camera
    rgb = shade_lambert(normal, albedo, light_dir)
    mask = frags.mask[..., None].to(dtype)
    bg = torch.as_tensor(background, dtype=dtype, device=rgb.device)
    rgb = rgb * mask + bg * (1.0 - mask)
    alpha = mask
    if antialias_edges:
        both = antialias(torch.cat([rgb, alpha], dim=-1), frags, vertices, faces, cameras)
        rgb, alpha = both[..., :3], both[..., 3:]
    return RenderOutput(
        rgb=rgb,
        alpha=alpha,
        depth=frags.depth[..., None],
        normals=normal,
        extras={"face_id": frags.face_id, "barycentrics": frags.barycentrics},
    )


def render_textured_parts(
    vertices: Sequence[Tensor],
    faces: Sequence[Tensor],
    uvs: Sequence[Tensor],
    textures: Sequence[Tensor],
    cameras: Camera,
    *,
    background: float | Tensor = 0.0,
    backend: str = "auto",
) -> RenderOutput:
    """Unlit render of several UV-textured meshes as one scene (baked radiance, e.g. DP-Recon's).

    Args:
        vertices: K tensors [V_k, 3], world metres. faces: K tensors [F_k, 3] into their own
            vertices. uvs: K tensors [V_k, 2] per vertex (v up, see :func:`sample_texture`).
        textures: K tensors [H_k, W_k, 3] linear colour.
        cameras: B cameras.
        background: colour where empty.

    Returns:
        :class:`RenderOutput`: ``rgb`` [B, H, W, 3] the texture colour of the visible surface
        (no shading), ``alpha`` [B, H, W, 1] coverage (0/1), ``depth`` [B, H, W, 1] camera z,
        extras ``part_id`` [B, H, W] int64 (k of the visible mesh, -1 where empty) and ``face_id``.
    """
    if not (len(vertices) == len(faces) == len(uvs) == len(textures)) or not vertices:
        raise InputError(f"got {len(vertices)} / {len(faces)} / {len(uvs)} / {len(textures)} vertex / face / uv / "
                         "texture sets", "pass one of each per part")
    offsets = [0]
    for v in vertices[:-1]:
        offsets.append(offsets[-1] + len(v))
    allv = torch.cat([torch.as_tensor(v).float() for v in vertices])
    allf = torch.cat([torch.as_tensor(f).long() + o for f, o in zip(faces, offsets)])
    alluv = torch.cat([torch.as_tensor(u).float() for u in uvs])
    owner = torch.cat([torch.full((len(f),), k, dtype=torch.long) for k, f in enumerate(faces)]).to(allf.device)
    frags = rasterize(allv, allf, cameras, backend)
    uv = interpolate(alluv.to(frags.barycentrics), frags, allf)
    hit = frags.mask
    part = torch.where(hit, owner[frags.face_id.clamp_min(0)], torch.full_like(frags.face_id, -1))
    rgb = torch.zeros((*hit.shape, 3), dtype=frags.barycentrics.dtype, device=hit.device)
    for k, tex in enumerate(textures):
        sel = part == k
        if bool(sel.any()):
            rgb[sel] = sample_texture(torch.as_tensor(tex).to(rgb), uv[sel][None, None], wrap="clamp")[0, 0]
    mask = hit[..., None].to(rgb.dtype)
    bg = torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device)
    return RenderOutput(rgb=rgb * mask + bg * (1.0 - mask), alpha=mask, depth=frags.depth[..., None],
                        extras={"part_id": part, "face_id": frags.face_id})
