"""BSP-Net data preparation: normalise a mesh, voxelise it, sample point/value pairs.

Coordinates: every array this module returns lives in the *normalised* frame, the input
mesh centred on its bounding box and scaled to a bounding-box diagonal of 1 (the authors'
advice), so the shape fits in [-0.5, 0.5]^3. :func:`frame_of` (a
:class:`~layerforge.assets.frame.SceneFrame`) maps back to the input's own coordinates.

Inside/outside uses the generalised winding number (GWN, Jacobson et al. 2013), thresholded
at 0.5, so open and self-intersecting real scans work. The 64^3 occupancy evaluates the GWN
exactly only in a band of cells near the surface; cells away from the surface form connected
regions whose value is constant for a closed mesh, so each region is settled by testing a
random subset of its cells, and fully evaluated only if that subset disagrees (a hole in the
surface can make the GWN vary inside one region).

Point/value pairs follow IM-NET/BSP-Net's data preparation: at resolution r in (16, 32, 64)
the r^3 cells are split into *boundary* cells (3^3 neighbourhood not uniformly
empty/full/mixed) and the rest; boundary cells are taken first (a random subset if there
are more than wanted), then random other cells fill up to the count, without repetition.
Each chosen cell contributes one point at a random 64^3 cell centre inside it, with that
voxel's value (IM-NET-pytorch picks a random fine voxel inside each coarse cell the same
way). Counts are 4096, 4096, 16384 (BSP-Net modelAE ``load_point_batch_size``); at 16^3
that is every cell.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from layerforge.assets.atomic import atomic_path
from layerforge.assets.frame import SceneFrame
from layerforge.errors import InputError
from layerforge.models.metrics import sample_surface

# BSP-Net/IM-NET: input voxel grid size (modelAE.py ``input_size``).
VOXEL_RES = 64
# BSP-Net modelAE.py ``load_point_batch_size`` per sampling resolution.
POINTS_PER_RES: dict[int, int] = {16: 16 * 16 * 16, 32: 16 * 16 * 16, 64: 16 * 16 * 16 * 4}
# Generalised winding number threshold for "inside".
GWN_THRESHOLD = 0.5


@dataclasses.dataclass
class PreparedShape:
    """One shape ready for BSP-Net.

    Attributes:
        voxels: [64, 64, 64] uint8 occupancy (1 = inside), indexed [x, y, z]; cell c has
            centre (c + 0.5) / 64 - 0.5.
        points: {r: [N_r, 3] float32} sample coordinates in [-0.5, 0.5], r in (16, 32, 64).
        values: {r: [N_r] float32} 1 = inside, 0 = outside.
        centre: [3] float64 bounding-box centre of the input mesh (input units).
        scale: factor from input units to normalised units (1 / bbox diagonal).
        mesh_vertices: [V, 3] float32 the input mesh in the normalised frame (for evaluation).
        mesh_faces: [F, 3] int64 its triangles.
    """

    voxels: np.ndarray
    points: dict[int, np.ndarray]
    values: dict[int, np.ndarray]
    centre: np.ndarray
    scale: float
    mesh_vertices: np.ndarray | None = None
    mesh_faces: np.ndarray | None = None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as one compressed .npz, atomically."""
        arrays = {"voxels": self.voxels, "centre": self.centre, "scale": np.array(self.scale)}
        for r in self.points:
            arrays[f"points_{r}"], arrays[f"values_{r}"] = self.points[r], self.values[r]
        if self.mesh_vertices is not None:
            arrays["mesh_vertices"], arrays["mesh_faces"] = self.mesh_vertices, self.mesh_faces
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "PreparedShape":
        """Read a file written by :meth:`save`."""
        z = np.load(path)
        res = sorted(int(k.split("_")[1]) for k in z.files if k.startswith("points_"))
        return cls(
            voxels=z["voxels"],
            points={r: z[f"points_{r}"] for r in res},
            values={r: z[f"values_{r}"] for r in res},
            centre=z["centre"],
            scale=float(z["scale"]),
            mesh_vertices=z["mesh_vertices"] if "mesh_vertices" in z.files else None,
            mesh_faces=z["mesh_faces"] if "mesh_faces" in z.files else None,
        )


def validate_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check a triangle mesh and return it as (float64 [V, 3], int64 [F, 3]).

    Raises:
        InputError: empty, non-finite, bad indices, or no surface / zero-extent bounding box.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0 or f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise InputError(
            f"mesh is empty or malformed (vertices {v.shape}, faces {f.shape})",
            "give a triangle mesh with vertices [V, 3] and faces [F, 3]",
        )
    if not np.isfinite(v).all():
        raise InputError("mesh has NaN or infinite vertex coordinates", "clean or re-export the mesh")
    f = f.astype(np.int64)
    if f.min() < 0 or f.max() >= len(v):
        raise InputError("mesh faces index missing vertices", "re-export the mesh")
    extent = v[f.ravel()].max(axis=0) - v[f.ravel()].min(axis=0)
    diag = float(np.linalg.norm(extent))
    if diag <= 0 or extent.min() <= 1e-9 * diag:
        raise InputError("mesh has zero volume (flat or degenerate bounding box)", "give a solid mesh")
    return v, f


def normalise_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre the bounding box at 0 and scale its diagonal to 1.

    Args:
        vertices: [V, 3] input vertices (input units).
        faces: [F, 3] triangle indices (only used vertices define the box).

    Returns:
        normalised vertices [V, 3] float64, centre [3] (input units), scale (1 / diagonal),
        so that ``normalised = (vertices - centre) * scale``.
    """
    v, f = validate_mesh(vertices, faces)
    used = v[np.unique(f)]
    lo, hi = used.min(axis=0), used.max(axis=0)
    centre = (lo + hi) / 2
    scale = 1.0 / float(np.linalg.norm(hi - lo))
    return (v - centre) * scale, centre, scale


def frame_of(centre: np.ndarray, scale: float) -> SceneFrame:
    """The normalised frame of :func:`normalise_mesh` as a scene frame: normalised -> input coordinates."""
    to_world = np.eye(4)
    to_world[:3, :3] /= scale
    to_world[:3, 3] = np.asarray(centre, np.float64)
    return SceneFrame(to_world)


def winding_number(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, chunk: int = 1 << 19
) -> np.ndarray:
    """Generalised winding number of a triangle soup at query points.

    Sum over triangles of the signed solid angle (Van Oosterom & Strackee) / 4 pi: 1 inside
    a closed outward-oriented mesh, 0 outside, fractional near holes.

    Args:
        points: [Q, 3] query points.
        vertices: [V, 3] mesh vertices, same units as ``points``.
        faces: [F, 3] triangle indices.
        chunk: max query x triangle pairs held in memory at once.

    Returns:
        [Q] float64 winding numbers (computed in float32: exact enough for the 0.5 test
        except within ~1e-6 of the surface).
    """
    q = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    tri = torch.as_tensor(np.asarray(vertices)[np.asarray(faces)], dtype=torch.float32)  # [F, 3, 3]
    corners = [[tri[:, i, k].contiguous()[None] for k in range(3)] for i in range(3)]  # SoA, [1, F]
    out = torch.empty(len(q), dtype=torch.float64)
    step = max(1, chunk // max(1, len(tri)))
    for s in range(0, len(q), step):
        qs = q[s : s + step]
        (ax, ay, az), (bx, by, bz), (cx, cy, cz) = [[c[k] - qs[:, k : k + 1] for k in range(3)] for c in corners]
        la = torch.sqrt(ax * ax + ay * ay + az * az)
        lb = torch.sqrt(bx * bx + by * by + bz * bz)
        lc = torch.sqrt(cx * cx + cy * cy + cz * cz)
        det = ax * (by * cz - bz * cy) + ay * (bz * cx - bx * cz) + az * (bx * cy - by * cx)
        den = (
            la * lb * lc
            + (ax * bx + ay * by + az * bz) * lc
            + (bx * cx + by * cy + bz * cz) * la
            + (cx * ax + cy * ay + cz * az) * lb
        )
        out[s : s + step] = torch.atan2(det, den).sum(-1).double() / (2 * math.pi)
    return out.numpy()


def grid_centres(res: int) -> np.ndarray:
    """[res, res, res, 3] cell centres (c + 0.5) / res - 0.5, indexed [x, y, z]."""
    c = (np.arange(res) + 0.5) / res - 0.5
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), axis=-1)


def voxelise(
    vertices: np.ndarray,
    faces: np.ndarray,
    res: int = VOXEL_RES,
    probes_per_region: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """Occupancy of a normalised mesh on a res^3 grid: cell inside iff its centre's GWN > 0.5.

    Args:
        vertices: [V, 3] normalised vertices (inside [-0.5, 0.5]^3).
        faces: [F, 3] triangle indices.
        res: grid resolution.
        probes_per_region: GWN probes that settle a far-from-surface region.
        seed: seed for the probe choice and surface samples.

    Returns:
        [res, res, res] uint8, indexed [x, y, z].
    """
    h = 1.0 / res
    centres = grid_centres(res).reshape(-1, 3)
    tri = vertices[faces]
    area = float(np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum() / 2)
    # A surface crossing the segment between two neighbouring centres lies within h/2 of
    # one of them; dense samples (spacing h/8) keep it within 0.75 h of a sample. A missed
    # crossing only merges an inside and an outside region, which the probes then detect.
    spacing = h / 8
    n_surf = int(min(2_000_000, max(20_000, area / spacing**2)))
    surf, _ = sample_surface(vertices, faces, n_surf, seed)
    dist, _ = cKDTree(surf).query(centres, k=1, distance_upper_bound=2 * h)
    band = dist < 0.75 * h
    occ = np.zeros(len(centres), dtype=bool)
    if band.any():
        occ[band] = winding_number(centres[band], vertices, faces) > GWN_THRESHOLD
    labels, n_regions = ndimage.label((~band).reshape(res, res, res))
    labels = labels.ravel()
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(1, n_regions + 2))
    for r in range(n_regions):
        members = order[bounds[r] : bounds[r + 1]]
        probe = rng.choice(members, size=min(probes_per_region, len(members)), replace=False)
        inside = winding_number(centres[probe], vertices, faces) > GWN_THRESHOLD
        if inside.all() or not inside.any():
            occ[members] = inside[0]
        else:
            occ[members] = winding_number(centres[members], vertices, faces) > GWN_THRESHOLD
    return occ.reshape(res, res, res).astype(np.uint8)


def _boundary_cells(voxels: np.ndarray, res: int) -> np.ndarray:
    """[res^3] bool: cells of the res^3 grid whose 3^3 neighbourhood is not uniform.

    A coarse cell's state is empty / full / mixed from the 64^3 voxels it covers.
    """
    k = voxels.shape[0] // res
    frac = voxels.reshape(res, k, res, k, res, k).mean(axis=(1, 3, 5))
    state = np.where(frac == 0, 0, np.where(frac == 1, 2, 1)).astype(np.int8)
    hi = ndimage.maximum_filter(state, size=3, mode="nearest")
    lo = ndimage.minimum_filter(state, size=3, mode="nearest")
    return ((hi != lo) | (state == 1)).ravel()


def sample_point_values(
    voxels: np.ndarray, res: int, count: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """IM-NET-style near-surface-biased point/value pairs at one resolution.

    Args:
        voxels: [64, 64, 64] uint8 occupancy (see :func:`voxelise`).
        res: sampling resolution, a divisor of 64 (16, 32 or 64).
        count: number of pairs (at most res^3).
        seed: numpy generator seed.

    Returns:
        points [count, 3] float32 in [-0.5, 0.5] (64^3 cell centres), values [count] float32.
    """
    n_fine = voxels.shape[0]
    if n_fine % res or count > res**3:
        raise ValueError(f"cannot take {count} samples at {res}^3 from a {n_fine}^3 grid")
    rng = np.random.default_rng(seed)
    boundary = _boundary_cells(voxels, res)
    b_idx = rng.permutation(np.flatnonzero(boundary))
    o_idx = rng.permutation(np.flatnonzero(~boundary))
    cells = np.concatenate([b_idx, o_idx])[:count]
    coarse = np.stack(np.unravel_index(cells, (res, res, res)), axis=1)
    k = n_fine // res
    fine = coarse * k + rng.integers(0, k, size=coarse.shape)
    points = ((fine + 0.5) / n_fine - 0.5).astype(np.float32)
    values = voxels[fine[:, 0], fine[:, 1], fine[:, 2]].astype(np.float32)
    return points, values


def prepare_shape(
    vertices: np.ndarray,
    faces: np.ndarray,
    seed: int = 0,
    counts: dict[int, int] | None = None,
) -> PreparedShape:
    """Normalise, voxelise (64^3) and sample point/value pairs for one mesh.

    Args:
        vertices: [V, 3] input vertices (input units).
        faces: [F, 3] triangle indices.
        seed: seed for every random choice (same seed, same output).
        counts: {resolution: pairs}; defaults to :data:`POINTS_PER_RES`.

    Raises:
        InputError: empty / non-finite / zero-volume mesh, or one that encloses no voxel.
    """
    v, centre, scale = normalise_mesh(vertices, faces)
    f = np.asarray(faces, dtype=np.int64)
    voxels = voxelise(v, f, VOXEL_RES, seed=seed)
    if not voxels.any():
        raise InputError(
            "mesh encloses no volume at 64^3 (open sheet or too thin)", "give a solid (closed or nearly closed) mesh"
        )
    points, values = {}, {}
    for i, (res, n) in enumerate(sorted((counts or POINTS_PER_RES).items())):
        points[res], values[res] = sample_point_values(voxels, res, n, seed=seed + 1 + i)
    return PreparedShape(
        voxels=voxels, points=points, values=values, centre=centre, scale=scale,
        mesh_vertices=v.astype(np.float32), mesh_faces=f,
    )


def surface_samples(
    vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted surface samples: points [n, 3] and unit normals [n, 3] (float64).

    Same units as ``vertices``; see :func:`layerforge.models.metrics.sample_surface`.
    """
    return sample_surface(vertices, faces, n, seed)
