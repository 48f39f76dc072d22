"""DMTet: the generated tet grid, marching tets, the sign regulariser and DMTetGeometry."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import trimesh

from layerforge.models.dmtet import (
    DMTetConfig,
    DMTetGeometry,
    lattice_edges,
    marching_tets,
    sdf_sign_change_reg,
    signed_volumes,
    tet_edges,
    tet_faces,
    tet_grid,
)
from layerforge.models.dmtet.marching import NUM_TRIANGLES
from layerforge.models.metrics import sample_surface

UNIT_BOX = torch.tensor([[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]])
RADIUS = 0.3


def sphere_sdf(p: torch.Tensor) -> torch.Tensor:
    """Exact SDF [P] of the sphere of radius RADIUS at the origin, points [P, 3] metres."""
    return p.norm(dim=-1) - RADIUS


def _boundary_face_on_box(vertices: torch.Tensor, faces: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """[F] True where all 3 corners of a face lie on one common side of the box."""
    p = vertices[faces].double()  # [F, 3, 3]
    on_lo = (p - box[0].double()).abs() < 1e-6
    on_hi = (p - box[1].double()).abs() < 1e-6
    return (on_lo.all(1) | on_hi.all(1)).any(-1)


# ---------------------------------------------------------------------------------------- (a)
@pytest.mark.parametrize("r", [1, 3, 5])
def test_grid_counts_conforming_and_positive(r: int) -> None:
    grid = tet_grid(r, UNIT_BOX)
    assert grid.vertices.shape == ((r + 1) ** 3, 3) and grid.vertices.dtype == torch.float32
    assert grid.tets.shape == (6 * r**3, 4) and grid.tets.dtype == torch.int64
    vol = signed_volumes(grid.vertices.double(), grid.tets)
    cell = 1.0 / r
    assert bool((vol > 0).all())
    assert torch.allclose(vol, torch.full_like(vol, cell**3 / 6))  # the 6 Kuhn tets split a cube equally
    assert float(vol.sum()) == pytest.approx(1.0, abs=1e-9)  # they fill the box
    # Conforming: every interior triangle is shared by exactly 2 tets, every boundary one by 1,
    # and the boundary triangles are exactly the box's faces (6 sides x r^2 squares x 2).
    faces, counts = tet_faces(grid.tets)
    assert set(counts.tolist()) <= {1, 2}
    boundary = counts == 1
    assert int(boundary.sum()) == 12 * r**2
    on_box = _boundary_face_on_box(grid.vertices, faces, UNIT_BOX)
    assert bool(on_box[boundary].all()) and not bool(on_box[~boundary].any())
    # Euler characteristic of a ball: V - E + F - T = 1.
    edges = tet_edges(grid.tets)
    assert grid.vertices.shape[0] - edges.shape[0] + faces.shape[0] - grid.tets.shape[0] == 1


def test_grid_anisotropic_bounds() -> None:
    box = torch.tensor([[0.0, -1.0, 0.0], [2.0, 0.0, 0.5]])  # 2 x 1 x 0.5 m
    grid = tet_grid(8, box)
    nx, ny, nz = 8, 4, 2  # resolution on the longest side, the others proportional
    assert grid.vertices.shape[0] == (nx + 1) * (ny + 1) * (nz + 1)
    assert grid.tets.shape[0] == 6 * nx * ny * nz
    assert torch.allclose(grid.vertices.min(0).values, box[0]) and torch.allclose(grid.vertices.max(0).values, box[1])
    vol = signed_volumes(grid.vertices.double(), grid.tets)
    assert bool((vol > 0).all()) and float(vol.sum()) == pytest.approx(1.0, abs=1e-6)
    _, counts = tet_faces(grid.tets)
    assert set(counts.tolist()) <= {1, 2} and int((counts == 1).sum()) == 2 * 2 * (nx * ny + ny * nz + nx * nz)
    with pytest.raises(ValueError):
        tet_grid(0, box)
    with pytest.raises(ValueError):
        tet_grid(4, np.array([[0.0, 0, 0], [1, 0, 1]]))


def test_tet_edges_unique_sorted() -> None:
    r = 3
    grid = tet_grid(r, UNIT_BOX.numpy())  # numpy bounds are accepted too
    edges = tet_edges(grid.tets)
    # Kuhn lattice: 3 axis edge families, 3 face-diagonal families, 1 body diagonal per cube.
    expected = 3 * r * (r + 1) ** 2 + 3 * r**2 * (r + 1) + r**3
    assert edges.shape == (expected, 2)
    assert bool((edges[:, 0] < edges[:, 1]).all())
    brute = {tuple(sorted((int(t[i]), int(t[j])))) for t in grid.tets for i in range(4) for j in range(i + 1, 4)}
    assert sorted(brute) == [tuple(e) for e in edges.tolist()]
    assert tet_edges(torch.zeros(0, 4, dtype=torch.long)).shape == (0, 2)


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 2, 4), (5, 5, 5)])
def test_lattice_edges_match_tet_edges(shape: tuple[int, int, int]) -> None:
    box = torch.tensor([[0.0, 0.0, 0.0], [float(shape[0]), float(shape[1]), float(shape[2])]])
    grid = tet_grid(max(shape), box)  # unit cells, so grid_shape(max, box) == shape
    assert grid.tets.shape[0] == 6 * shape[0] * shape[1] * shape[2]
    assert torch.equal(lattice_edges(shape), tet_edges(grid.tets))


# ---------------------------------------------------------------------------------------- (b)
def test_table_orientation_on_random_tets() -> None:
    """Every case of the table winds its triangles towards sdf > 0, wherever the edges cross."""
    g = torch.Generator().manual_seed(0)
    for case in range(16):
        for _ in range(20):
            v = torch.randn(4, 3, generator=g, dtype=torch.float64)
            if float(signed_volumes(v, torch.arange(4)[None])[0]) < 0:
                v = v[[0, 1, 3, 2]]
            mag = torch.rand(4, generator=g, dtype=torch.float64) + 0.05
            sign = torch.tensor([1.0 if (case >> i) & 1 else -1.0 for i in range(4)], dtype=torch.float64)
            verts, faces = marching_tets(v, sign * mag, torch.arange(4)[None])
            assert faces.shape[0] == int(NUM_TRIANGLES[case])
            if faces.shape[0] == 0:
                continue
            direction = v[sign > 0].mean(0) - v[sign < 0].mean(0)
            tri = verts[faces]
            normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            assert bool((normal @ direction > 0).all()), case


def test_sphere_watertight_area_volume() -> None:
    r = 32
    grid = tet_grid(r, UNIT_BOX)
    verts, faces = marching_tets(grid.vertices, sphere_sdf(grid.vertices), grid.tets)
    assert verts.dtype == torch.float32 and faces.dtype == torch.int64
    v, f = verts.double().numpy(), faces.numpy()
    assert np.unique(v, axis=0).shape[0] == v.shape[0]  # crossing-edge vertices deduplicated
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward normals
    centroid_dot = (mesh.triangles_center * mesh.face_normals).sum(-1)
    assert (centroid_dot > 0).all()  # every face normal points away from the centre (to sdf > 0)
    assert mesh.area == pytest.approx(4 * math.pi * RADIUS**2, rel=0.02)
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * RADIUS**3, rel=0.02)
    # Distance of each vertex to the sphere. Along an edge x(t) = a + t (b - a) of length l,
    # f(t) = |x(t)| - R has f'' = (l^2 - (d|x|/dt)^2) / |x| <= l^2 / rho, rho = min |x| on the edge
    # >= R - l (the edge crosses the sphere). The vertex is the root of the linear interpolant,
    # so |f(vertex)| = |f - interpolant| <= t (1 - t) l^2 / (2 rho) <= l^2 / (8 (R - l)). The longest
    # Kuhn edge is the cube diagonal l = sqrt(3) h, h = 1/32 m: bound 1.49 mm (the face diagonals
    # alone would give 0.99 mm, so 1 mm does not hold on body diagonals; measured max 1.1 mm).
    # |x| is convex, so the interpolant overestimates f and vertices lie inside or on the sphere.
    edge = math.sqrt(3) / r
    bound = edge**2 / (8 * (RADIUS - edge))
    dist = verts.double().norm(dim=-1) - RADIUS
    assert float(dist.abs().max()) < bound
    assert float(dist.max()) <= 1e-6
    assert float(dist.abs().mean()) < 0.25 * bound


# ---------------------------------------------------------------------------------------- (c)
def test_gradcheck_float64() -> None:
    grid = tet_grid(2, UNIT_BOX)
    x = grid.vertices.double()
    g = torch.Generator().manual_seed(1)
    sdf = sphere_sdf(x) + 0.05 * torch.randn(x.shape[0], generator=g, dtype=torch.float64)
    sdf = torch.where(sdf.abs() < 0.02, sdf.sign() * 0.02, sdf)  # finite differences never flip a sign
    assert int(marching_tets(x, sdf, grid.tets)[1].shape[0]) > 0
    sdf.requires_grad_(True)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: marching_tets(x.detach(), s, grid.tets)[0], (sdf,))
    assert torch.autograd.gradcheck(lambda v: marching_tets(v, sdf.detach(), grid.tets)[0], (x,))


def test_uniform_sdf_shift_grows_radius() -> None:
    """sdf - d is the SDF of the sphere of radius R + d: the surface moves out by ~d."""
    grid = tet_grid(32, UNIT_BOX)
    x = grid.vertices.double()
    shift = torch.zeros((), dtype=torch.float64, requires_grad=True)
    verts, _ = marching_tets(x, sphere_sdf(x) - shift, grid.tets)
    mean_radius = verts.norm(dim=-1).mean()
    (grad,) = torch.autograd.grad(mean_radius, shift)
    assert float(grad) == pytest.approx(1.0, abs=0.03)
    d = 0.01
    moved, _ = marching_tets(x, sphere_sdf(x) - d, grid.tets)
    assert float(moved.norm(dim=-1).mean() - mean_radius.detach()) == pytest.approx(d, rel=0.05)


# ---------------------------------------------------------------------------------------- (d)
def test_plane_exact_area() -> None:
    grid = tet_grid(8, UNIT_BOX)
    x = grid.vertices.double()
    n = torch.tensor([-0.3, 0.0, 1.0], dtype=torch.float64)
    n = n / n.norm()
    # The plane z = 0.1037 + 0.3 x (through no grid vertex) stays inside z in [-0.05, 0.26], so
    # it cuts the cube's 4 side faces only: area = sqrt(1 + 0.3^2) x 1 m^2. Linear interpolation of a linear SDF is exact.
    sdf = x @ n - 0.1037 * n[2]
    verts, faces = marching_tets(x, sdf, grid.tets)
    mesh = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False)
    assert mesh.area == pytest.approx(math.sqrt(1.09), abs=1e-9)
    assert float((verts @ n - 0.1037 * n[2]).abs().max()) < 1e-12  # flat
    assert np.allclose(mesh.face_normals, n.numpy(), atol=1e-9)  # towards sdf > 0
    assert mesh.is_winding_consistent


# ---------------------------------------------------------------------------------------- (e)
def test_empty_results() -> None:
    grid = tet_grid(3, UNIT_BOX)
    for sdf in (torch.ones(grid.vertices.shape[0]), -torch.ones(grid.vertices.shape[0])):
        verts, faces = marching_tets(grid.vertices, sdf, grid.tets)
        assert verts.shape == (0, 3) and verts.dtype == torch.float32
        assert faces.shape == (0, 3) and faces.dtype == torch.int64
    verts, faces = marching_tets(grid.vertices, torch.ones(grid.vertices.shape[0]), torch.zeros(0, 4, dtype=torch.long))
    assert verts.shape == (0, 3) and faces.shape == (0, 3)


# ---------------------------------------------------------------------------------------- (g)
def test_sign_change_reg() -> None:
    edges = torch.tensor([[0, 1], [1, 2], [2, 3]])
    assert float(sdf_sign_change_reg(torch.tensor([0.5, 0.1, 0.2, 0.3]), edges)) == 0.0
    assert float(sdf_sign_change_reg(-torch.ones(4), edges)) == 0.0
    sdf = torch.tensor([0.5, -0.2, -0.4, -0.1], requires_grad=True)  # only edge (0, 1) crosses
    reg = sdf_sign_change_reg(sdf, edges)
    # BCE(0.5 vs target 0) = log(1 + e^0.5); BCE(-0.2 vs target 1) = log(1 + e^0.2); their mean.
    hand = 0.5 * (math.log1p(math.exp(0.5)) + math.log1p(math.exp(0.2)))
    assert float(reg.detach()) == pytest.approx(hand, rel=1e-6)
    reg.backward()
    assert sdf.grad is not None and float(sdf.grad[0]) > 0 and float(sdf.grad[1]) < 0
    assert float(sdf.grad[2]) == 0.0 and float(sdf.grad[3]) == 0.0
    grid = tet_grid(8, UNIT_BOX)
    assert float(sdf_sign_change_reg(sphere_sdf(grid.vertices), tet_edges(grid.tets))) > 0


# ---------------------------------------------------------------------------------------- (f)
# Test sizes: GALA's 16 levels, 16 -> 1024, MLP 2 x 32, but a 2^14-entry table instead of
# tcnn's 2^19 (a 2^19 table is 23 M parameters per network, too slow for Adam on 2 CPU cores).
FIT_CONFIG = DMTetConfig(grid_resolution=24, hash_log2_size=14)
# Measured (2 cores, 1 thread): Chamfer-L1 0.98 mm after 150 steps in ~7 s (seeds 1-3: 1.19-1.39 mm).
# Marching tets of the exact sphere SDF on the same 24^3 grid gives 0.98 mm itself (the grid's
# discretisation limit), so the bound is twice that.
FIT_CHAMFER_L1_M = 2e-3


def test_geometry_deterministic_and_differentiable() -> None:
    a = DMTetGeometry(UNIT_BOX, DMTetConfig(grid_resolution=6, hash_log2_size=10), seed=3)
    b = DMTetGeometry(UNIT_BOX, DMTetConfig(grid_resolution=6, hash_log2_size=10), seed=3)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    assert "tets" not in a.state_dict()  # rebuilt from the config, never saved
    la = a.fit_to_sdf(sphere_sdf, 3, 1e-2, torch.Generator().manual_seed(0), num_random=256)
    lb = b.fit_to_sdf(sphere_sdf, 3, 1e-2, torch.Generator().manual_seed(0), num_random=256)
    assert la == lb and la[-1] < la[0]
    a.fit_to_sdf(sphere_sdf, 40, 1e-2, torch.Generator().manual_seed(1), num_random=256)
    sdf, deformed = a.sdf_and_deform()
    assert sdf.shape == (7**3,) and deformed.shape == (7**3, 3)
    assert torch.equal(deformed, a.vertices)  # the deformation MLP starts at zero
    assert torch.equal(a.edges, tet_edges(a.tets))
    verts, faces = a.extract()
    assert faces.shape[0] > 0
    (verts.sum() + a.sdf_reg(sdf)).backward()
    assert a.sdf_net.encoding.table.grad is not None and float(a.sdf_net.encoding.table.grad.abs().sum()) > 0
    assert a.deform_net.mlp.net[-1].weight.grad is not None
    assert float(a.deform_net.mlp.net[-1].weight.grad.abs().sum()) > 0


def test_fit_to_sdf_sphere_chamfer() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is faster than two on a busy 2-core machine
    try:
        geo = DMTetGeometry(UNIT_BOX, FIT_CONFIG, seed=0)
        t0 = time.perf_counter()
        losses = geo.fit_to_sdf(sphere_sdf, 150, 1e-2, torch.Generator().manual_seed(0), 2048, 4096)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            verts, faces = geo.extract()
    finally:
        torch.set_num_threads(threads)
    assert len(losses) == 150 and losses[-1] < 1e-3 * losses[0]
    v, f = verts.double().numpy(), faces.numpy()
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight and mesh.volume > 0
    # Chamfer-L1 (metres): mesh samples -> sphere exactly; sphere samples -> mesh via samples.
    pts, _ = sample_surface(v, f, 20000, seed=0)
    to_sphere = np.abs(np.linalg.norm(pts, axis=1) - RADIUS).mean()
    rng = np.random.default_rng(0)
    s = rng.normal(size=(5000, 3))
    s = RADIUS * s / np.linalg.norm(s, axis=1, keepdims=True)
    _, to_mesh, _ = trimesh.proximity.closest_point(mesh, s)
    chamfer = 0.5 * (to_sphere + float(np.mean(to_mesh)))
    print(f"fit_to_sdf: 150 steps in {seconds:.1f} s, Chamfer-L1 {chamfer * 1e3:.2f} mm, loss {losses[-1]:.2e}")
    assert chamfer < FIT_CHAMFER_L1_M


# ---------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_marching_cuda_matches_cpu() -> None:
    grid = tet_grid(24, UNIT_BOX)
    sdf = sphere_sdf(grid.vertices)
    v_cpu, f_cpu = marching_tets(grid.vertices, sdf, grid.tets)
    v_gpu, f_gpu = marching_tets(grid.vertices.cuda(), sdf.cuda(), grid.tets.cuda())
    assert torch.equal(f_gpu.cpu(), f_cpu)
    assert torch.allclose(v_gpu.cpu(), v_cpu, atol=1e-6)
    geo = DMTetGeometry(UNIT_BOX, DMTetConfig(grid_resolution=16, hash_log2_size=14)).cuda()
    losses = geo.fit_to_sdf(sphere_sdf, 20, 1e-2, torch.Generator().manual_seed(0), 2048)
    verts, faces = geo.extract()
    assert verts.is_cuda and faces.shape[0] > 0 and losses[-1] < losses[0]
