"""Mesh rasterizer: exact coverage, analytic silhouettes, gradients, inverse rendering, backends."""

from __future__ import annotations

import math
import os

import pytest
import torch

from layerforge.errors import ConfigError, InputError
from layerforge.renderers.cameras import Camera, generate_rays, look_at, orbit_cameras, project
from layerforge.renderers.output import RenderOutput
from layerforge.renderers.mesh import (
    antialias,
    edge_neighbours,
    interpolate,
    normal_map,
    rasterize,
    rasterize_clip,
    rasterize_uv,
    render_mesh,
    sample_texture,
    shade_lambert,
    vertex_normals,
)


def icosphere(subdivisions: int, radius: float = 1.0, dtype: torch.dtype = torch.float32):
    """Unit icosphere (counter-clockwise faces seen from outside), without trimesh."""
    t = (1.0 + 5.0**0.5) / 2.0
    v = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
         (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    f = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
         (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5),
         (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts = [torch.tensor(p, dtype=torch.float64) for p in v]
    verts = [p / p.norm() for p in verts]
    faces = list(f)
    for _ in range(subdivisions):
        cache: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / m.norm())
                cache[key] = len(verts) - 1
            return cache[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new
    return (torch.stack(verts) * radius).to(dtype), torch.tensor(faces, dtype=torch.int64)


def pinhole(width: int, height: int, f: float, w2c: torch.Tensor | None = None, dtype=torch.float64) -> Camera:
    k = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    return Camera(k, torch.eye(4, dtype=dtype) if w2c is None else w2c.to(dtype), width, height)


# --------------------------------------------------------------------------------------------
# Visibility
# --------------------------------------------------------------------------------------------


def test_triangle_covers_exactly_the_pixels_whose_centres_are_inside():
    w, h, f = 24, 20, 20.0
    cam = pinhole(w, h, f)
    # pixel-space vertices (kept off pixel centres), lifted to z = 2 in camera space
    pix = torch.tensor([[2.3, 3.1], [21.7, 6.4], [7.2, 18.6]], dtype=torch.float64)
    z = 2.0
    xyz = torch.cat([(pix - torch.tensor([w / 2, h / 2])) / f * z, torch.full((3, 1), z)], dim=-1)
    frags = rasterize(xyz, torch.tensor([[0, 1, 2]]), cam, backend="torch")
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    p = torch.stack([u, v], -1).double()

    def edge(a, b):
        return (b[0] - a[0]) * (p[..., 1] - a[1]) - (b[1] - a[1]) * (p[..., 0] - a[0])

    e = torch.stack([edge(pix[0], pix[1]), edge(pix[1], pix[2]), edge(pix[2], pix[0])])
    inside = (e >= 0).all(0) | (e <= 0).all(0)
    assert e.abs().min() > 1e-3  # no centre is ambiguous at float32
    assert 40 < int(inside.sum()) < w * h - 40
    assert torch.equal(frags.mask[0], inside)
    assert torch.allclose(frags.depth[0][inside], torch.full_like(frags.depth[0][inside], z))
    assert (frags.depth[0][~inside] == 0).all() and (frags.face_id[0][~inside] == -1).all()


def test_depth_order_ties_near_and_far():
    w2c = torch.eye(4)
    cam = pinhole(8, 8, 8.0, w2c)
    quad = torch.tensor([[-2.0, -2.0], [2.0, -2.0], [0.0, 2.0]], dtype=torch.float64)

    def tri(z: float) -> torch.Tensor:
        return torch.cat([quad * z, torch.full((3, 1), z, dtype=torch.float64)], dim=-1)

    faces = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    # nearest wins regardless of face order
    fr = rasterize(torch.cat([tri(3.0), tri(1.0), tri(2.0)]), faces, cam)
    assert (fr.face_id[fr.mask] == 1).all() and fr.mask.sum() > 20
    # equal depth: smallest face id wins
    fr = rasterize(torch.cat([tri(2.0), tri(2.0), tri(2.0)]), faces, cam)
    assert (fr.face_id[fr.mask] == 0).all()
    # faces wholly nearer than `near` or beyond `far` are not drawn
    near_cam = Camera(cam.K, cam.world_to_camera, 8, 8, near=1.5, far=2.5)
    v = torch.cat([tri(1.0), tri(2.0), tri(3.0)])
    fr = rasterize(v, faces, near_cam)
    assert (fr.face_id == 1).all()  # the z=1 and z=3 faces are out of [near, far]
    # a face crossing the near plane is clipped there: drawn exactly where its z >= near
    straddle = tri(2.0).clone()
    straddle[0] = torch.tensor([0.0, -0.5, 1.25])  # one vertex in front of the near plane, in view
    fr = rasterize(straddle, faces[:1], near_cam)
    full = rasterize(straddle, faces[:1], cam)  # near 0.01: the whole face
    assert fr.mask.sum() > 10 and (full.mask & ~fr.mask).sum() > 5
    torch.testing.assert_close(fr.depth[fr.mask], full.depth[fr.mask])
    assert torch.equal(fr.face_id[fr.mask], full.face_id[fr.mask])
    torch.testing.assert_close(fr.barycentrics[fr.mask], full.barycentrics[fr.mask])
    clear = (full.depth - 1.5).abs() > 1e-6  # pixels not on the near plane itself
    assert torch.equal(fr.mask[clear], (full.mask & (full.depth >= 1.5))[clear])


def test_torch_backend_chunking_does_not_change_the_result():
    verts, faces = icosphere(2)
    cams = orbit_cameras(torch.tensor([10.0, 50.0]), torch.tensor([20.0, 200.0]), 3.0, 45.0, 32, 24)
    a = rasterize(verts, faces, cams, backend="torch")
    b = rasterize(verts, faces, cams, backend="torch", max_candidates=997)
    assert torch.equal(a.face_id, b.face_id)
    assert a.mask.sum() > 200


def test_sphere_silhouette_matches_analytic_projection():
    r, d = 1.0, 4.0
    verts, faces = icosphere(4, r)  # 5120 faces
    f, size = 60.0, 64
    cams = []
    for centre in (torch.tensor([0.0, 0.0, d]), torch.tensor([0.7, 0.0, d])):
        # camera at the origin looking along +z (identity pose); the sphere is moved instead
        cams.append((pinhole(size, size, f, dtype=torch.float32), centre))
    for cam, centre in cams:
        fr = rasterize(verts + centre, faces, cam)
        area = fr.mask.sum().item()
        dist = centre.norm().item()
        sin_a = r / dist
        cos_t = centre[2].item() / dist
        # image of a sphere: an ellipse with these semi-axes (a cone of half-angle alpha whose
        # axis makes angle theta with the optical axis, cut by the image plane at f)
        denom = cos_t**2 - sin_a**2
        a_ax = f * sin_a * math.sqrt(1 - sin_a**2) / denom
        b_ax = f * sin_a / math.sqrt(denom)
        analytic = math.pi * a_ax * b_ax
        assert abs(area - analytic) / analytic < 0.03, (area, analytic)
        # and the same pixels as exact ray-sphere hits (up to the polygonal silhouette)
        o, dirs = generate_rays(cam)
        oc = o - centre
        bq = (oc * dirs).sum(-1)
        hit = (bq**2 - (oc * oc).sum(-1) + r * r) > 0
        assert (hit[0] ^ fr.mask[0]).sum().item() < 0.03 * analytic


# --------------------------------------------------------------------------------------------
# Differentiable parts
# --------------------------------------------------------------------------------------------


def _two_triangles(dtype=torch.float64):
    v = torch.tensor(
        [[-0.61, -0.52, 2.03], [0.58, -0.47, 2.21], [0.07, 0.63, 1.87], [0.49, 0.41, 2.6], [-0.3, 0.2, 3.1]],
        dtype=dtype,
    )
    faces = torch.tensor([[0, 1, 2], [1, 3, 2], [4, 0, 2]])
    return v, faces


def test_interpolated_positions_are_perspective_correct():
    v, faces = _two_triangles()
    cam = pinhole(20, 20, 18.0)
    fr = rasterize(v, faces, cam)
    pos = interpolate(v, fr, faces)  # world = camera space here
    m = fr.mask
    pix, depth = project(cam, pos[m][None])
    ii, jj = m[0].nonzero(as_tuple=True)
    assert torch.allclose(pix[0], torch.stack([jj + 0.5, ii + 0.5], -1).double(), atol=1e-9)
    assert torch.allclose(depth[0], fr.depth[m], atol=1e-12)
    assert torch.allclose(fr.barycentrics[m].sum(-1), torch.ones(int(m.sum()), dtype=torch.float64))
    assert (fr.barycentrics[m] >= -1e-12).all()
    assert (pos[~m] == 0).all()


def test_barycentric_and_depth_gradients_match_finite_differences():
    v, faces = _two_triangles()
    cam = pinhole(10, 10, 9.0)
    ref = rasterize(v, faces, cam).face_id

    def fn(x):
        fr = rasterize(x, faces, cam)
        assert torch.equal(fr.face_id, ref)  # visibility fixed under the perturbation
        return fr.barycentrics, fr.depth

    assert torch.autograd.gradcheck(fn, (v.clone().requires_grad_(),), eps=1e-6, atol=1e-6)


def test_antialias_gradients_match_finite_differences():
    v, faces = _two_triangles()
    cam = pinhole(12, 12, 10.0)
    colors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.9], [0.7, 0.3]], dtype=torch.float64)
    ref = rasterize(v, faces, cam).face_id

    def fn(x):
        fr = rasterize(x, faces, cam)
        assert torch.equal(fr.face_id, ref)
        img = interpolate(colors, fr, faces) + 0.25 * (~fr.mask[..., None]).double()
        return antialias(img, fr, x, faces, cam)

    assert torch.autograd.gradcheck(fn, (v.clone().requires_grad_(),), eps=1e-6, atol=1e-6)


def test_antialias_gives_silhouette_gradients_and_keeps_interior():
    verts, faces = icosphere(1, 0.8, torch.float64)
    cam = pinhole(24, 24, 30.0)
    x = (verts + torch.tensor([0.03, -0.02, 3.0], dtype=torch.float64)).requires_grad_()
    fr = rasterize(x, faces, cam)
    alpha = fr.mask[..., None].double()
    out = antialias(alpha, fr, x, faces, cam)
    # constant inside a closed mesh: interior edges are not silhouettes, nothing changes there
    inner = torch.nn.functional.max_pool2d(-alpha.permute(0, 3, 1, 2), 3, 1, 1).neg().permute(0, 2, 3, 1)
    assert torch.equal(out[inner > 0], alpha[inner > 0])
    changed = (out - alpha).abs() > 1e-9
    assert changed.sum() > 10  # silhouette pixels were blended
    assert ((out >= 0) & (out <= 1)).all()
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g.abs().sum() > 0
    # moving the sphere right increases coverage to the right: d(sum alpha on right half)/dx > 0
    (g2,) = torch.autograd.grad(antialias(alpha, fr, x, faces, cam)[:, :, 12:].sum(), x)
    assert g2[:, 0].sum() > 0


def test_edge_neighbours():
    tri = torch.tensor([[0, 1, 2]])
    assert (edge_neighbours(tri) == -1).all()
    _, faces = icosphere(0)
    nb = edge_neighbours(faces)
    assert (nb >= 0).all()
    # symmetric: the neighbour across my edge (a, b) has the edge (b, a)
    for f in range(faces.shape[0]):
        for k in range(3):
            a, b = faces[f, k].item(), faces[f, (k + 1) % 3].item()
            g = nb[f, k].item()
            edges = {(faces[g, i].item(), faces[g, (i + 1) % 3].item()) for i in range(3)}
            assert (b, a) in edges


def test_inverse_rendering_recovers_translation_from_silhouettes():
    torch.manual_seed(0)
    verts, faces = icosphere(1, 0.5)
    w2c = torch.cat([look_at([3.0, 0.0, 0.0]), look_at([0.0, -3.0, 0.5])])
    k = torch.tensor([[28.0, 0.0, 16.0], [0.0, 28.0, 16.0], [0.0, 0.0, 1.0]])
    cams = Camera(k, w2c, 32, 32)
    target_t = torch.tensor([0.12, -0.08, 0.1])
    with torch.no_grad():
        x = verts + target_t
        fr = rasterize(x, faces, cams)
        target = antialias(fr.mask[..., None].float(), fr, x, faces, cams)
    t = torch.zeros(3, requires_grad=True)
    steps = 100
    opt = torch.optim.Adam([t], lr=0.02)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.1 ** (1 / steps))
    nb = edge_neighbours(faces)
    for _ in range(steps):
        x = verts + t
        fr = rasterize(x, faces, cams)
        img = antialias(fr.mask[..., None].float(), fr, x, faces, cams, neighbours=nb)
        loss = ((img - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    # one pixel is ~0.11 m at the sphere: recovered to ~0.15 px from a 1 px start
    assert (t.detach() - target_t).abs().max() < 0.015, t


# --------------------------------------------------------------------------------------------
# Texturing, normals, shading, previews
# --------------------------------------------------------------------------------------------


def test_sample_texture_uses_v_up():
    # 2x2 texture; row 0 is the top of the image
    tex = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[3.0, 0.0], [4.0, 0.0]]])[None]
    uv = torch.tensor([[0.25, 0.75], [0.75, 0.75], [0.25, 0.25], [0.75, 0.25], [0.5, 0.75]])
    out = sample_texture(tex, uv.view(1, 1, 5, 2), wrap="clamp")[0, 0, :, 0]
    assert torch.allclose(out, torch.tensor([1.0, 2.0, 3.0, 4.0, 1.5]))
    rep = sample_texture(tex, (uv + 1.0).view(1, 1, 5, 2), wrap="repeat")[0, 0, :4, 0]
    assert torch.allclose(rep, torch.tensor([1.0, 2.0, 3.0, 4.0]), atol=1e-5)
    with pytest.raises(ConfigError):
        sample_texture(tex, uv.view(1, 1, 5, 2), wrap="mirror")


def test_normals_depth_and_render_mesh_preview():
    verts, faces = icosphere(2, 0.7)
    cam = orbit_cameras(20.0, 30.0, 3.0, 40.0, 32, 32)
    out = render_mesh(verts, faces, cam, vertex_colors=torch.ones_like(verts) * 0.5, background=1.0)
    assert isinstance(out, RenderOutput)
    assert out.rgb.shape == (1, 32, 32, 3) and out.alpha.shape == (1, 32, 32, 1)
    assert out.depth.shape == (1, 32, 32, 1) and out.normals.shape == (1, 32, 32, 3)
    fr = rasterize(verts, faces, cam)
    m = fr.mask
    assert torch.equal(out.extras["face_id"], fr.face_id)
    torch.testing.assert_close(out.depth[..., 0], fr.depth)
    torch.testing.assert_close(out.normals, normal_map(fr, verts, faces))
    # normals of a sphere point away from its centre, towards the camera
    pos = interpolate(verts, fr, faces)
    n = normal_map(fr, verts, faces)
    cos = (n[m] * torch.nn.functional.normalize(pos[m], dim=-1)).sum(-1)
    assert cos.min() > 0.97
    assert torch.allclose(n[m].norm(dim=-1), torch.ones(int(m.sum())), atol=1e-5)
    flat = normal_map(fr, verts, faces, smooth=False)
    assert (flat[m] * n[m]).sum(-1).min() > 0.9
    # depth lies between the sphere's near and far points
    assert fr.depth[m].min() > 3.0 - 0.7 - 1e-4 and fr.depth[m].max() < 3.0 + 1e-4
    assert (out.depth[~m] == 0).all()
    assert ((out.alpha >= 0) & (out.alpha <= 1)).all()
    assert torch.allclose(out.rgb[~m & (out.alpha[..., 0] == 0)], torch.ones(3))
    vn = vertex_normals(verts, faces)
    assert torch.allclose(vn, torch.nn.functional.normalize(verts, dim=-1), atol=0.05)
    lit = shade_lambert(n, torch.ones(3), -cam.world_to_camera[0, 2, :3], ambient=0.0)
    assert lit[m].max() > 0.95 and lit[~m].abs().max() == 0


def test_textured_render_and_bad_inputs():
    v = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv = (v[:, :2] + 1) / 2
    tex = torch.zeros(2, 2, 3)
    tex[0, :, 0] = 1.0  # top row red
    tex[1, :, 2] = 1.0  # bottom row blue
    cam = orbit_cameras(90.0, -90.0, 3.0, 50.0, 16, 16)  # looking down, world +Y up in image
    out = render_mesh(v, faces, cam, uv=uv, texture=tex, light_dir=torch.tensor([0.0, 0.0, 1.0]), antialias_edges=False)
    rgb = out.rgb[0]
    assert rgb[5, 8, 0] > rgb[5, 8, 2] and rgb[10, 8, 2] > rgb[10, 8, 0]
    with pytest.raises(InputError):
        rasterize(v[:, :2], faces, cam)
    with pytest.raises(InputError):
        rasterize(v, faces + 10, cam)
    with pytest.raises(ConfigError):
        rasterize(v, faces, cam, backend="opengl")
    with pytest.raises(ConfigError):
        rasterize(v, faces, cam, backend="cuda")  # CPU tensors


# --------------------------------------------------------------------------------------------
# Near-plane clipping (rooms and panoramas are seen from inside)
# --------------------------------------------------------------------------------------------

FLOOR_HALF = 50.0  # m, half the side of the floor quad
EYE_HEIGHT = 1.5  # m, camera height above the floor


def _floor_view(width: int = 64, height: int = 48, f: float = 40.0, dtype=torch.float64):
    """A 100 m floor quad at z = 0 and a camera 1.5 m above it looking at the horizon (+X).

    The quad spans behind the camera, so both of its triangles cross the near plane.
    Returns vertices, faces, camera and the analytic camera-z depth [H, W] of the floor
    (inf where a pixel's ray misses the quad) with a mask of pixels clear of the quad border.
    """
    s = FLOOR_HALF
    verts = torch.tensor([[-s, -s, 0.0], [s, -s, 0.0], [s, s, 0.0], [-s, s, 0.0]], dtype=dtype)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    eye = torch.tensor([0.0, 0.0, EYE_HEIGHT], dtype=dtype)
    w2c = look_at(eye, eye + torch.tensor([1.0, 0.0, 0.0], dtype=dtype))[0]
    cam = pinhole(width, height, f, w2c, dtype=dtype)
    o, d = generate_rays(cam, normalize=False)  # d has unit camera z: o + z d is at camera depth z
    z = -o[0, ..., 2] / d[0, ..., 2]  # ray-plane intersection, camera z
    hit = o[0] + z[..., None] * d[0]
    inside = (z > 0) & (hit[..., 0].abs() <= s) & (hit[..., 1].abs() <= s)
    border = torch.minimum(s - hit[..., 0].abs(), s - hit[..., 1].abs()).abs()
    clear = border > 1e-3 * s  # centres not within 5 cm of the quad's edges
    return verts, faces, cam, torch.where(inside, z, torch.inf), clear


def test_floor_seen_from_inside_is_clipped_not_dropped():
    verts, faces, cam, z_true, clear = _floor_view()
    _, z_cam = project(cam, verts)
    # both triangles have a vertex behind the camera: the old "skip faces nearer than near"
    # rule drew nothing here
    assert (z_cam[0][faces] < cam.near).any(-1).all()
    fr = rasterize(verts, faces, cam, backend="torch")
    want = torch.isfinite(z_true)
    assert torch.equal(fr.mask[0][clear], want[clear])
    h, w = 48, 64
    below = torch.arange(h)[:, None].expand(h, w) + 0.5 > h / 2  # rows under the horizon
    assert int(want.sum()) > 0.45 * h * w and not (want & ~below).any()
    m = fr.mask[0]
    torch.testing.assert_close(fr.depth[0][m], z_true[m], rtol=1e-9, atol=0)
    torch.testing.assert_close(fr.barycentrics[0][m].sum(-1), torch.ones(int(m.sum()), dtype=torch.float64))
    assert (fr.barycentrics[0][m] >= -1e-9).all()
    # world positions interpolated with the original vertices lie on the floor along each ray
    pos = interpolate(verts, fr, faces)[0]
    o, d = generate_rays(cam, normalize=False)
    torch.testing.assert_close(pos[m], (o[0] + z_true[..., None] * d[0])[m], rtol=0, atol=1e-9)
    # the full render: alpha 1 everywhere on the floor, normals +Z, depth as a RenderOutput
    out = render_mesh(verts, faces, cam, background=0.0)
    assert (out.alpha[0, ..., 0][m] == 1).all() and (out.alpha[0, ..., 0][~m] == 0).all()
    torch.testing.assert_close(out.normals[0][m].abs(), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(int(m.sum()), 3))
    torch.testing.assert_close(out.depth[0, ..., 0], torch.where(m, z_true, torch.zeros_like(z_true)))
    assert torch.isfinite(out.rgb).all()


def test_room_seen_from_inside_is_watertight_with_analytic_depth():
    # a 4 m cube room (12 inward triangles, all of the walls around the camera cross its
    # near plane in some view); views in 8 directions incl. up/down-tilted ones
    half = 2.0
    corners = torch.tensor([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)], dtype=torch.float64)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = torch.tensor([[a, b, c] for a, b, c, d in quads] + [[a, c, d] for a, b, c, d in quads])
    eye = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    az = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    el = torch.tensor([0.0, 0.5, -0.5, 0.0, 1.2, -1.2, 0.3, 0.0], dtype=torch.float64)
    target = eye + torch.stack([torch.cos(az) * torch.cos(el), torch.sin(az) * torch.cos(el), torch.sin(el)], -1)
    k = torch.tensor([[20.0, 0.0, 20.0], [0.0, 20.0, 16.0], [0.0, 0.0, 1.0]], dtype=torch.float64)  # ~90° fov
    cams = Camera(k[None].expand(8, 3, 3), look_at(eye, target), 40, 32)
    fr = rasterize(corners, faces, cams)
    assert fr.mask.all()  # no pixel falls through the clipped walls' shared edges
    o, d = generate_rays(cams, normalize=False)
    t_axis = (torch.where(d > 0, half - o, -half - o)) / d  # distance to the wall ahead on each axis
    z_true = t_axis.where(d != 0, torch.full_like(d, torch.inf)).amin(-1)
    torch.testing.assert_close(fr.depth, z_true, rtol=1e-9, atol=0)
    crossing = (project(cams, corners)[1][:, faces] < cams.near).any(-1)
    assert int(crossing.sum()) > 8 * 4  # most views draw several clipped walls

def test_clipped_triangle_barycentrics_and_gradients_match_ray_plane_intersection():
    # camera at the world origin looking along +z; vertex 2 is 1 m behind the camera
    cam = pinhole(24, 20, 18.0)
    v = torch.tensor([[-1.3, -0.9, 2.0], [1.1, -1.0, 2.6], [0.2, 1.5, -1.0]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    fr = rasterize(v, faces, cam)
    m = fr.mask[0]
    assert int(m.sum()) > 100
    _, d = generate_rays(cam, normalize=False)
    n = torch.linalg.cross(v[1] - v[0], v[2] - v[0], dim=-1)
    t = (n @ v[0]) / (d[0] @ n)  # [H, W] camera z of the ray-plane intersection
    torch.testing.assert_close(fr.depth[0][m], t[m], rtol=1e-10, atol=0)
    pos = interpolate(v, fr, faces)[0]
    torch.testing.assert_close(pos[m], (t[..., None] * d[0])[m], rtol=0, atol=1e-10)
    # the barycentrics are the point's weights on the ORIGINAL vertices
    b = fr.barycentrics[0][m]
    assert (b >= -1e-12).all() and (b <= 1 + 1e-12).all()
    torch.testing.assert_close(b @ v, pos[m])
    # every covered pixel is in front of the near plane and inside the original triangle
    assert (fr.depth[0][m] >= cam.near).all()
    # gradients w.r.t. all three vertices (the one behind the camera too) match finite differences
    ii, jj = m.nonzero(as_tuple=True)
    pick = (ii[::17], jj[::17])

    def f(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = rasterize(x, faces, cam)
        assert torch.equal(out.face_id, fr.face_id)  # visibility unchanged by the tiny steps
        return out.depth[0][pick], out.barycentrics[0][pick]

    assert torch.autograd.gradcheck(f, (v.clone().requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_clip_near_splits_into_one_or_two_triangles_with_source_weights():
    from layerforge.renderers.mesh import clip_near

    hom = torch.tensor(
        [
            [[0.0, 0.0, 2.0], [1.0, 0.0, 2.0], [0.0, 1.0, 2.0]],  # in front: kept as is
            [[0.0, 0.0, 2.0], [1.0, 0.0, -1.0], [0.0, 1.0, -1.0]],  # one in front: one triangle
            [[0.0, 0.0, 2.0], [1.0, 0.0, 2.0], [0.0, 1.0, -1.0]],  # two in front: two triangles
            [[0.0, 0.0, -2.0], [1.0, 0.0, -2.0], [0.0, 1.0, -1.0]],  # behind: nothing
        ],
        dtype=torch.float64,
    )
    clipped, src, wts = clip_near(hom, 0.5)
    assert sorted(src.tolist()) == [0, 1, 2, 2]
    torch.testing.assert_close(clipped, wts @ hom[src])
    assert (clipped[..., 2] >= 0.5 - 1e-12).all()
    torch.testing.assert_close(wts.sum(-1), torch.ones_like(wts[..., 0]))
    # the pieces of the quad cover the clipped area: (area in the w = const slices is linear)
    ends = clipped[src == 2]
    assert torch.allclose(ends[..., 2].min(), torch.tensor(0.5, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# Clip-space and UV-space entries (texture baking)
# --------------------------------------------------------------------------------------------


def test_rasterize_clip_matches_rasterize_for_a_camera():
    verts, faces = icosphere(2, 0.7)
    cam = orbit_cameras(25.0, 40.0, 3.0, 45.0, 40, 32, dtype=torch.float64)
    verts = verts.double()
    w2c, k = cam.world_to_camera[0], cam.K[0]
    p = verts @ w2c[:3, :3].T + w2c[:3, 3]
    hom = p @ k.T  # (u z, v z, z)
    clip = torch.stack([2.0 * hom[:, 0] / cam.width - hom[:, 2], 2.0 * hom[:, 1] / cam.height - hom[:, 2], hom[:, 2]], -1)
    a = rasterize(verts, faces, cam)
    b = rasterize_clip(clip, faces, cam.height, cam.width)
    assert torch.equal(a.face_id, b.face_id) and a.mask.sum() > 200
    torch.testing.assert_close(a.barycentrics, b.barycentrics, rtol=0, atol=1e-9)
    torch.testing.assert_close(a.depth, b.depth, rtol=0, atol=1e-9)
    with pytest.raises(InputError):
        rasterize_clip(clip[:, :2], faces, 8, 8)
    with pytest.raises(InputError):
        rasterize_uv(torch.zeros(4, 3), faces, 8)


def _unwrapped_cube(margin: float = 0.02):
    """Unit cube [-0.5, 0.5]^3, one UV island per face in a 3 x 2 grid of cells (u right, v up).

    Returns vertices [24, 3], faces [12, 3], uv [24, 2] and per face k the island's UV origin,
    size and the world origin and axes of its square (world = o + s a + t b for island (s, t)).
    """
    sides = [  # (origin, a, b) with a x b the outward normal
        ((0.5, -0.5, -0.5), (0, 1, 0), (0, 0, 1)),
        ((-0.5, 0.5, -0.5), (0, -1, 0), (0, 0, 1)),
        ((0.5, 0.5, -0.5), (-1, 0, 0), (0, 0, 1)),
        ((-0.5, -0.5, -0.5), (1, 0, 0), (0, 0, 1)),
        ((-0.5, -0.5, 0.5), (1, 0, 0), (0, 1, 0)),
        ((-0.5, 0.5, -0.5), (1, 0, 0), (0, -1, 0)),
    ]
    cell, size = 1.0 / 3.0, 1.0 / 3.0 - 2 * margin
    verts, uv, faces, islands = [], [], [], []
    for k, (o, a, b) in enumerate(sides):
        o, a, b = (torch.tensor(x, dtype=torch.float64) for x in (o, a, b))
        u0 = torch.tensor([(k % 3) * cell + margin, (k // 3) * 0.5 + margin], dtype=torch.float64)
        base = len(verts)
        for s, t in ((0, 0), (1, 0), (1, 1), (0, 1)):
            verts.append(o + s * a + t * b)
            uv.append(u0 + size * torch.tensor([s, t], dtype=torch.float64))
        faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
        islands.append((u0, size, o, a, b))
    return torch.stack(verts), torch.tensor(faces), torch.stack(uv), islands


def test_bake_world_positions_and_normals_of_an_unwrapped_cube():
    verts, faces, uv, islands = _unwrapped_cube()
    res = 96
    frags = rasterize_uv(uv, faces, res, backend="torch")
    pos = interpolate(verts, frags, faces)[0]  # [H, W, 3] world-position map
    nrm = normal_map(frags, verts, faces, smooth=False)[0]
    i, j = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    tex_u = (j.double() + 0.5) / res
    tex_v = 1.0 - (i.double() + 0.5) / res  # row 0 is the top of the texture (v up)
    covered = torch.zeros(res, res, dtype=torch.bool)
    for k, (u0, size, o, a, b) in enumerate(islands):
        s = (tex_u - u0[0]) / size
        t = (tex_v - u0[1]) / size
        isl = (s >= 0) & (s <= 1) & (t >= 0) & (t <= 1)
        assert int(isl.sum()) > 200
        want = o + s[..., None] * a + t[..., None] * b
        torch.testing.assert_close(pos[isl], want[isl], rtol=0, atol=1e-9)
        torch.testing.assert_close(nrm[isl], torch.linalg.cross(a, b).expand(int(isl.sum()), 3))
        assert (frags.face_id[0][isl] // 2 == k).all()  # texels map to that side's two triangles
        covered |= isl
    assert torch.equal(frags.mask[0], covered)
    assert (pos[~covered] == 0).all()
    # face-varying UVs: 8 welded positions with their own faces, UVs rasterized with uv faces
    welded, pos_faces = torch.unique(verts, dim=0, return_inverse=True)
    assert welded.shape == (8, 3)
    torch.testing.assert_close(interpolate(welded, frags, pos_faces[faces])[0], pos)
    # a texture lookup at a texel centre returns that texel (same v-up convention)
    centres = torch.stack([tex_u, tex_v], -1)[None]
    torch.testing.assert_close(sample_texture(pos[None], centres, wrap="clamp")[0], pos)


def test_uv_triangle_coverage_equals_its_area():
    uv = torch.tensor([[0.1, 0.1], [0.9, 0.23], [0.31, 0.87]], dtype=torch.float64)
    area = 0.5 * abs(float((uv[1, 0] - uv[0, 0]) * (uv[2, 1] - uv[0, 1]) - (uv[1, 1] - uv[0, 1]) * (uv[2, 0] - uv[0, 0])))
    for h, w in ((64, 64), (48, 80)):
        frags = rasterize_uv(uv, torch.tensor([[0, 1, 2]]), (h, w))
        assert frags.face_id.shape == (1, h, w)
        frac = frags.mask.double().mean().item()
        assert abs(frac - area) <= 1.0 / h, (frac, area)  # within one texel row
        torch.testing.assert_close(frags.depth[frags.mask], torch.ones(int(frags.mask.sum()), dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# CUDA backend
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cuda_kernel_compiles():
    from layerforge.renderers import mesh_cuda

    if mesh_cuda.nvcc_path() is None:
        pytest.skip("nvcc not found (set CUDA_HOME to a CUDA toolkit) - cannot build the kernel")
    if torch.version.cuda is None:
        pytest.skip("torch is a CPU-only build - cannot build CUDA extensions")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.dirname(__file__), "..", "build", "torch_extensions"))
    ext = mesh_cuda.load_extension()
    assert hasattr(ext, "visibility")


@pytest.mark.gpu
def test_cuda_face_ids_identical_to_torch_backend():
    verts, faces = icosphere(3, 0.6)
    g = torch.Generator().manual_seed(0)
    # several overlapping spheres plus coplanar duplicates to exercise ties
    parts = [verts + torch.randn(3, generator=g) * 0.4 for _ in range(4)]
    v = torch.cat(parts + [parts[0]])
    f = torch.cat([faces + i * verts.shape[0] for i in range(5)])
    cams = orbit_cameras(torch.tensor([10.0, 60.0, -20.0]), torch.tensor([0.0, 120.0, 250.0]), 2.5, 50.0, 96, 64)
    ref = rasterize(v, f, cams, backend="torch")
    gpu = rasterize(v.cuda(), f.cuda(), cams.to("cuda"), backend="cuda")
    gpu_torch = rasterize(v.cuda(), f.cuda(), cams.to("cuda"), backend="torch")
    assert torch.equal(gpu.face_id.cpu(), ref.face_id)
    assert torch.equal(gpu_torch.face_id.cpu(), ref.face_id)
    assert torch.allclose(gpu.barycentrics.cpu(), ref.barycentrics, atol=1e-5)


@pytest.mark.gpu
def test_cuda_backend_draws_the_same_clipped_triangles():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (none visible)")
    verts, faces, cam, z_true, clear = _floor_view(dtype=torch.float32)
    ref = rasterize(verts, faces, cam, backend="torch")
    gpu = rasterize(verts.cuda(), faces.cuda(), cam.to("cuda"), backend="cuda")
    assert int(ref.mask.sum()) > 1000
    assert torch.equal(gpu.face_id.cpu(), ref.face_id)
    torch.testing.assert_close(gpu.depth.cpu(), ref.depth, rtol=1e-5, atol=0)


def test_degenerate_triangles_give_no_nan():
    """Zero-area triangles (marching cubes / tets make them) neither poison colours nor gradients."""
    from layerforge.renderers.cameras import orbit_cameras
    from layerforge.renderers.mesh import antialias, interpolate, rasterize

    v = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0],
                      [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.2, 0.2, 0.0],  # collinear / coincident corners
                      [0.3, -0.3, 0.0], [0.3, -0.3, 0.0], [0.3, -0.3, 0.0]], requires_grad=True)
    f = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    cams = orbit_cameras(90.0, 0.0, 2.0, 40.0, 32, 32)
    frags = rasterize(v, f, cams)
    col = interpolate(torch.rand(9, 3), frags, f)
    img = antialias(torch.cat([col, frags.mask[..., None].float()], -1), frags, v, f, cams)
    assert torch.isfinite(frags.barycentrics).all() and torch.isfinite(img).all()
    img.sum().backward()
    assert torch.isfinite(v.grad).all()
