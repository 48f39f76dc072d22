"""Exact convex polyhedra from BSP-Net's planes.

Planes are rows (a, b, c, d) with inside ``a x + b y + c z + d <= 0`` (the network's
convention; the authors negate them for their ``bspt`` code, we do not need to). Convex i is
the intersection of the planes j with ``T[j, i] > 0.01``, clipped to the box
``|x|, |y|, |z| <= BOUND`` (slightly larger than the [-0.5, 0.5]^3 the shapes live in) so an
unbounded intersection still gives a closed polyhedron.

Selection follows modelAE.py ``test_bsp``: evaluate the binarised h2 on a 64^3 grid and
keep convex i if some grid point has h2 < 0.01; optionally drop a convex whose inside grid
points are all covered by the other kept convexes.

Each kept convex becomes a watertight triangle mesh with outward faces: qhull's half-space
intersection (scipy ``HalfspaceIntersection``) from an interior point (the deepest inside
grid point, or the Chebyshev centre by linear programming when no grid point is deep
enough), then the convex hull of the welded vertices. Convexes with no interior (Chebyshev
radius below ``MIN_RADIUS``) are dropped, and so are those qhull fails on (``QhullError``);
:func:`extract_convexes` counts both in ``parts.stats`` (:class:`ExtractionStats`) and logs a
warning naming how many convexes qhull failed on.

A known qhull failure: a convex with many planes round a thin rim (e.g. a disk of radius
1e-3 cut by 1000 side planes, rim vertices 6e-6 apart) has its rim welded transitively into
one point per cap (``WELD_TOL``), and the hull of the two points left is degenerate.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import torch
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, HalfspaceIntersection, QhullError

from layerforge.assets.atomic import atomic_path
from layerforge.models.bsp.network import T_THRESHOLD

log = logging.getLogger(__name__)

# modelAE.py test_bsp: selection grid size and "inside" threshold on h2.
SELECT_RES = 64
INSIDE_THRESHOLD = 0.01
# Clip box half-size: a little more than the 0.5 of the normalised frame.
BOUND = 0.55
# A convex whose largest inscribed ball is smaller than this (normalised units) is dropped.
MIN_RADIUS = 1e-4
# Vertices closer than this are welded (normalised units).
WELD_TOL = 1e-5  # normalised units (bbox diagonal 1): 10 micrometres on a 1 m object
# Convex indices named in the qhull-failure warning (the rest are in ExtractionStats).
MAX_LOGGED_INDICES = 10


@dataclasses.dataclass
class ConvexPart:
    """One extracted convex: ``index`` into the c convexes, vertices [V, 3] float64, faces [F, 3] int64."""

    index: int
    vertices: np.ndarray
    faces: np.ndarray


@dataclasses.dataclass
class ExtractionStats:
    """What :func:`extract_convexes` did with one shape's convexes.

    ``selected``: convexes the grid selection kept; ``extracted``: meshes made of them;
    ``no_interior``: dropped for an inscribed radius below ``MIN_RADIUS`` (empty or flat
    intersections, expected of a soft selection); ``qhull_failed``: dropped because qhull
    raised on the half-space intersection or the hull (``qhull_failed_indices``: their convex
    indices). ``selected == extracted + no_interior + qhull_failed``.
    """

    selected: int = 0
    extracted: int = 0
    no_interior: int = 0
    qhull_failed: int = 0
    qhull_failed_indices: list[int] = dataclasses.field(default_factory=list)


class ConvexList(list[ConvexPart]):
    """The list of :class:`ConvexPart` that :func:`extract_convexes` returns, with its ``stats``."""

    def __init__(self, parts: list[ConvexPart] | None = None, stats: ExtractionStats | None = None) -> None:
        super().__init__(parts or [])
        self.stats = stats if stats is not None else ExtractionStats()


def _grid(res: int) -> np.ndarray:
    """[res^3, 3] cell centres (i + 0.5) / res - 0.5, x slowest."""
    c = (np.arange(res) + 0.5) / res - 0.5
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), axis=-1).reshape(-1, 3)


def convex_inside_cells(
    planes: np.ndarray, T: np.ndarray, res: int = SELECT_RES, coarse: int = 16
) -> list[np.ndarray]:
    """Grid points inside each convex: binarised h2 < 0.01 at the res^3 cell centres.

    Same result as evaluating h2 = relu([x, 1] . P) @ [T > 0.01] on the full grid, computed
    coarse-to-fine: on a coarse^3 grid a lower bound of h2 over each coarse cell (each
    plane's value lowered by |n_j| times the cell's half-diagonal) rules out the cells
    where a convex cannot reach 0.01; only the others are evaluated at full resolution,
    with that convex's own planes.

    Args:
        planes: [p, 4] planes (inside where a x + b y + c z + d <= 0).
        T: [p, c] connections (> 0.01 = plane used by the convex).
        res: grid resolution (a multiple of ``coarse``).
        coarse: resolution of the culling grid.

    Returns:
        c arrays of flat indices into the res^3 grid (x slowest), increasing.
    """
    P = np.asarray(planes, dtype=np.float64)
    conn = np.asarray(T) > T_THRESHOLD
    k = res // coarse
    half_diag = np.sqrt(3) / 2 / coarse
    coarse_pts = torch.from_numpy(_grid(coarse)).float()
    Pt = torch.from_numpy(P).float()
    lower = torch.clamp(coarse_pts @ Pt[:, :3].T + Pt[:, 3] - Pt[:, :3].norm(dim=1) * half_diag, min=0)
    candidate = (lower @ torch.from_numpy(conn).float() < INSIDE_THRESHOLD).numpy()  # [coarse^3, c]
    offs = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    out = []
    for i in range(conn.shape[1]):
        cells = np.flatnonzero(candidate[:, i])
        own = P[conn[:, i]]
        if len(cells) == 0:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        ijk = (np.stack(np.unravel_index(cells, (coarse,) * 3), axis=1)[:, None] * k + offs).reshape(-1, 3)
        pts = (ijk + 0.5) / res - 0.5
        h2 = np.clip(pts @ own[:, :3].T + own[:, 3], 0, None).sum(axis=1)
        out.append(np.sort(np.ravel_multi_index(ijk[h2 < INSIDE_THRESHOLD].T, (res,) * 3)))
    return out


def select_convexes(inside: list[np.ndarray], drop_inside: bool = False) -> np.ndarray:
    """Indices of the convexes to extract (modelAE.py ``test_bsp``).

    Args:
        inside: per convex, flat indices of the grid points inside it
            (:func:`convex_inside_cells`).
        drop_inside: also drop, in index order, each convex whose inside points are all
            covered by the convexes still kept.

    Returns:
        [K] int64 convex indices, increasing.
    """
    nonempty = [i for i, cells in enumerate(inside) if len(cells)]
    if not drop_inside:
        return np.asarray(nonempty, dtype=np.int64)
    size = max((int(cells.max()) + 1 for cells in inside if len(cells)), default=0)
    count = np.zeros(size, dtype=np.int64)
    for cells in inside:
        count[cells] += 1
    keep = []
    for i in nonempty:
        if (count[inside[i]] >= 2).all():  # covered by another convex
            count[inside[i]] -= 1
        else:
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def weld_points(points: np.ndarray, tol: float) -> np.ndarray:
    """Merge points closer than ``tol`` (transitively) into their mean; [N, 3] -> [M, 3].

    Many planes through one corner (k-DOP planes meet at voxel corners) give clusters of
    intersections a few 1e-8 apart; rounding to a grid splits clusters that straddle a grid
    line, leaving sliver triangles that break watertightness once stored in float32.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pairs = cKDTree(points).query_pairs(tol, output_type="ndarray")
    if len(pairs) == 0:
        return points
    n = len(points)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    sums = np.zeros((count, 3))
    np.add.at(sums, labels, points)
    return sums / np.bincount(labels, minlength=count)[:, None]


def _box_planes(bound: float) -> np.ndarray:
    eye = np.eye(3)
    return np.concatenate([np.c_[eye, -bound * np.ones(3)], np.c_[-eye, -bound * np.ones(3)]])


def chebyshev_centre(halfspaces: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre [3] and radius of the largest ball inside ``{x : A x + b <= 0}`` (rows [A, b]).

    Radius is -1 when the set is empty (infeasible LP).
    """
    A, b = halfspaces[:, :3], halfspaces[:, 3]
    norm = np.linalg.norm(A, axis=1)
    res = linprog(
        c=[0, 0, 0, -1], A_ub=np.c_[A, norm], b_ub=-b, bounds=[(None, None)] * 3 + [(0, None)], method="highs"
    )
    if res.status != 0:
        return np.zeros(3), -1.0
    return res.x[:3], float(res.x[3])


def convex_polyhedron(
    planes: np.ndarray, interior: np.ndarray | None = None, bound: float = BOUND
) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact mesh of ``{x : a x + b y + c z + d <= 0 for every plane} ∩ box(bound)``.

    Args:
        planes: [k, 4] planes (rows a, b, c, d).
        interior: optional [3] point strictly inside (found by LP if absent or too shallow).
        bound: half-size of the clipping box.

    Returns:
        (vertices [V, 3] float64, faces [F, 3] int64) watertight with outward faces, or None
        when the set is empty or has no interior (inscribed radius < MIN_RADIUS) or qhull
        fails on it (:func:`extract_convexes` tells these apart).
    """
    mesh, _ = _convex_polyhedron(planes, interior, bound)
    return mesh


# Why _convex_polyhedron made no mesh.
NO_INTERIOR = "no_interior"
QHULL_FAILED = "qhull_failed"


def _convex_polyhedron(
    planes: np.ndarray, interior: np.ndarray | None, bound: float
) -> tuple[tuple[np.ndarray, np.ndarray] | None, str | None]:
    """:func:`convex_polyhedron`, plus the reason (``NO_INTERIOR`` / ``QHULL_FAILED``) when it gives None."""
    hs = np.concatenate([np.asarray(planes, dtype=np.float64).reshape(-1, 4), _box_planes(bound)])
    norm = np.linalg.norm(hs[:, :3], axis=1)
    hs = hs[norm > 1e-12] / norm[norm > 1e-12, None]
    depth = -1.0
    if interior is not None:
        depth = -float((hs[:, :3] @ interior + hs[:, 3]).max())
    if depth < 1e-3:
        interior, depth = chebyshev_centre(hs)
    if depth < MIN_RADIUS:
        return None, NO_INTERIOR
    try:
        verts = HalfspaceIntersection(hs, interior).intersections
        verts = weld_points(verts, WELD_TOL)
        hull = ConvexHull(verts)
    except QhullError:
        return None, QHULL_FAILED
    faces = hull.simplices.astype(np.int64)
    tri = verts[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = (normal * hull.equations[:, :3]).sum(axis=1) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    used = np.unique(faces)
    remap = np.full(len(verts), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return (verts[used], remap[faces]), None


def extract_convexes(
    planes: np.ndarray,
    T: np.ndarray,
    res: int = SELECT_RES,
    drop_inside: bool = False,
    bound: float = BOUND,
    name: str | None = None,
) -> ConvexList:
    """Meshes of BSP-Net's active convexes, in the normalised frame.

    Args:
        planes: [p, 4] one shape's planes (inside where a x + b y + c z + d <= 0).
        T: [p, c] connection weights; plane j belongs to convex i when T[j, i] > 0.01.
        res: selection grid resolution (authors: 64).
        drop_inside: drop convexes covered by the union of the others.
        bound: half-size of the clipping box.
        name: the shape's name, for the warning.

    Returns:
        one :class:`ConvexPart` per kept convex, in increasing convex index, as a
        :class:`ConvexList` (a plain list with ``.stats``, an :class:`ExtractionStats` that
        counts the convexes dropped for no interior and those qhull failed on).
    """
    planes = np.asarray(planes, dtype=np.float64)
    T = np.asarray(T)
    inside = convex_inside_cells(planes, T, res)
    grid = _grid(res)
    parts = ConvexList()
    stats = parts.stats
    for i in select_convexes(inside, drop_inside):
        stats.selected += 1
        own = planes[T[:, i] > T_THRESHOLD]
        cand = grid[inside[i]]
        unit = own / np.linalg.norm(own[:, :3], axis=1, keepdims=True).clip(1e-12)
        depth = -(cand @ unit[:, :3].T + unit[:, 3]).max(axis=1) if len(own) else np.ones(len(cand))
        mesh, reason = _convex_polyhedron(own, cand[np.argmax(depth)], bound)
        if mesh is not None:
            parts.append(ConvexPart(index=int(i), vertices=mesh[0], faces=mesh[1]))
        elif reason == QHULL_FAILED:
            stats.qhull_failed += 1
            stats.qhull_failed_indices.append(int(i))
        else:
            stats.no_interior += 1
    stats.extracted = len(parts)
    if stats.qhull_failed:
        shown = ", ".join(map(str, stats.qhull_failed_indices[:MAX_LOGGED_INDICES]))
        more = "" if stats.qhull_failed <= MAX_LOGGED_INDICES else ", ..."
        log.warning("bsp extract%s: qhull failed on %d of %d selected convexes (indices %s%s); they are left out",
                    f" ({name})" if name else "", stats.qhull_failed, stats.selected, shown, more)
    return parts


# Order of the counts in the ``stats`` array of a convex file.
_STATS_FIELDS = ("selected", "extracted", "no_interior", "qhull_failed")


def save_convexes(path: str | os.PathLike[str], parts: list[ConvexPart]) -> None:
    """Write one shape's convexes as a compressed .npz, atomically.

    Keys: ``count``, ``index``, ``v<i>``, ``f<i>``, and for a :class:`ConvexList` its
    :class:`ExtractionStats` (``stats``: the counts in ``_STATS_FIELDS`` order,
    ``qhull_failed_indices``), so the counts survive a resumed stage.
    """
    arrays = {"count": np.array(len(parts)), "index": np.array([p.index for p in parts], np.int64)}
    for i, part in enumerate(parts):
        arrays[f"v{i}"], arrays[f"f{i}"] = part.vertices.astype(np.float32), part.faces.astype(np.int64)
    if isinstance(parts, ConvexList):
        arrays["stats"] = np.array([getattr(parts.stats, k) for k in _STATS_FIELDS], np.int64)
        arrays["qhull_failed_indices"] = np.array(parts.stats.qhull_failed_indices, np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_extraction_stats(path: str | os.PathLike[str]) -> ExtractionStats:
    """The :class:`ExtractionStats` saved with a convex file (without reading its meshes).

    A file saved from a plain list (or by an older version) has none: every saved convex then
    counts as selected and extracted, and nothing as dropped.
    """
    with np.load(path) as z:
        if "stats" not in z.files:
            count = int(z["count"])
            return ExtractionStats(selected=count, extracted=count)
        counts = dict(zip(_STATS_FIELDS, (int(v) for v in z["stats"])))
        return ExtractionStats(**counts, qhull_failed_indices=[int(i) for i in z["qhull_failed_indices"]])


def load_convexes(path: str | os.PathLike[str]) -> ConvexList:
    """Read a file written by :func:`save_convexes` (a :class:`ConvexList`, stats included)."""
    z = np.load(path)
    count = int(z["count"])
    index = z["index"] if "index" in z.files else np.arange(count)
    parts = [ConvexPart(index=int(index[i]), vertices=z[f"v{i}"].astype(np.float64), faces=z[f"f{i}"])
             for i in range(count)]
    return ConvexList(parts, load_extraction_stats(path))


def convex_contains(parts: list[ConvexPart], points: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """[N] bool: is each point [N, 3] strictly inside some convex (deeper than ``eps``)?

    Uses each part's face planes (faces are outward, the parts convex).
    """
    inside = np.zeros(len(points), dtype=bool)
    for part in parts:
        tri = part.vertices[part.faces]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        n /= np.linalg.norm(n, axis=1, keepdims=True).clip(1e-300)
        d = -(n * tri[:, 0]).sum(axis=1)
        inside |= (points @ n.T + d).max(axis=1) < -eps
    return inside


def union_surface_samples(parts: list[ConvexPart], n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Samples [n', 3] and normals [n', 3] on the surface of the union of convexes.

    Samples all convex faces area-weighted (oversampling 4x), keeps the points not inside
    another convex (the authors' test: the point pushed 1e-4 along its normal is outside
    the union), and returns the first ``n`` of them (fewer if the union is mostly hidden).
    """
    from layerforge.models.metrics import sample_surface

    verts = np.concatenate([p.vertices for p in parts])
    offs = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offs)])
    pts, nrm = sample_surface(verts, faces, 4 * n, seed)
    keep = ~convex_contains(parts, pts + 1e-4 * nrm)
    return pts[keep][:n], nrm[keep][:n]
