"""A small synthetic human in the SMPL-X file layout (a test fixture; SMPL-X itself cannot ship).

:func:`synthetic_smplx_arrays` builds the arrays of an ``SMPLX_NEUTRAL.npz`` for a stylised body:
the real SMPL-X kinematic tree (55 joints), rest joints designed in metres in SMPL-X's frame
(+Y up, facing +Z, the person's left at +X, T-pose, ~1.7 m tall, feet on y = -1.28 so the pelvis
sits near y = -0.35 as in SMPL-X), and a single closed surface: marching cubes of a smooth union
of capsule / rounded-box SDFs along the bones. Skinning weights fall off smoothly with the
distance to each joint's bone (at most 4 per vertex); J_regressor rows are non-negative weights
on vertices around each joint whose weighted mean is the designed joint; shape blend shapes are
height (beta 0), girth (beta 1) and small smooth random fields; expression blend shapes move the
head only; pose blend shapes are ~1 mm per unit, on the vertices each joint skins.
"""

from __future__ import annotations

import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np

SMPLX_PARENTS = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)
GROUND_Y = -1.28  # the soles, native frame (metres)

# Finger chains of the left hand: (first joint index, base (x, z), segment lengths, radius).
_FINGERS = (
    (25, (0.790, 0.028), (0.035, 0.025, 0.020), 0.0090),  # index
    (28, (0.792, 0.008), (0.040, 0.028, 0.022), 0.0092),  # middle
    (31, (0.780, -0.031), (0.028, 0.020, 0.018), 0.0078),  # pinky
    (34, (0.788, -0.012), (0.037, 0.026, 0.020), 0.0088),  # ring
)
_HAND_Y = 1.385
_MIN_R = 0.7  # radius floor in voxels, so thin parts stay connected at coarse resolutions


def _design_joints() -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Rest joints [55, 3] (height above the ground in y) and each leaf joint's bone end point."""
    j = np.zeros((55, 3))
    ends: dict[int, np.ndarray] = {}
    centre = {0: (0, 0.93, 0.0), 3: (0, 1.04, -0.01), 6: (0, 1.17, 0.0), 9: (0, 1.23, 0.01),
              12: (0, 1.46, -0.01), 15: (0, 1.54, 0.01), 22: (0, 1.525, 0.03)}
    for i, p in centre.items():
        j[i] = p
    left = {1: (0.085, 0.87, -0.005), 4: (0.10, 0.49, 0.01), 7: (0.11, 0.085, -0.03), 10: (0.12, 0.02, 0.09),
            13: (0.075, 1.38, -0.01), 16: (0.175, 1.39, -0.02), 18: (0.44, 1.39, -0.03), 20: (0.69, _HAND_Y, -0.02),
            23: (0.032, 1.605, 0.075)}
    for first, (bx, bz), lens, _ in _FINGERS:
        x = bx
        for k in range(3):
            j[first + k] = (x, _HAND_Y, bz)
            x += lens[k]
        ends[first + 2] = np.array((x, _HAND_Y, bz))
    thumb = ((0.715, 1.378, 0.030), (0.745, 1.374, 0.055), (0.770, 1.372, 0.070))
    for k, p in enumerate(thumb):
        j[37 + k] = p
    ends[39] = np.array((0.795, 1.372, 0.080))
    for i, p in left.items():
        j[i] = p
    ends[10] = np.array((0.12, 0.02, 0.15))
    # mirror the left side (x > 0) onto the right: right = left + 1 for body joints, +15 for fingers
    pairs = [(1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21), (23, 24)]
    pairs += [(i, i + 15) for i in range(25, 40)]
    flip = np.array((-1.0, 1.0, 1.0))
    for a, b in pairs:
        j[b] = j[a] * flip
        if a in ends:
            ends[b] = ends[a] * flip
    ends[15] = np.array((0, 1.70, 0.015))
    ends[22] = np.array((0, 1.50, 0.085))
    for e in (23, 24):
        ends[e] = j[e].copy()
    return j, ends


def _bone_segments(j: np.ndarray, ends: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """For each joint the segment it skins: joint -> its (first) child, or its leaf end. [55, 3] x2."""
    a = j.copy()
    b = np.zeros_like(j)
    first_child = {0: 3, 9: 12, 20: 28, 21: 43, 15: None, 22: None}
    for i in range(55):
        kids = [c for c in range(55) if SMPLX_PARENTS[c] == i]
        if i in ends:
            b[i] = ends[i]
        elif i in first_child and first_child[i] is not None:
            b[i] = j[first_child[i]]
        elif kids:
            b[i] = j[kids[0]]
        else:
            b[i] = j[i]
    return a, b


def _seg_dist(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance [N, M] from points p [N, 3] to segments a->b [M, 3], and the projection parameter t [N, M]."""
    ab = b - a
    den = np.maximum((ab * ab).sum(-1), 1e-12)
    t = np.clip(((p[:, None, :] - a[None]) * ab[None]).sum(-1) / den, 0.0, 1.0)
    q = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(p[:, None, :] - q, axis=-1), t


def _shapes(j: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray, float]]]:
    """Capsules (a [M,3], b [M,3], ra [M], rb [M]) and rounded boxes (centre, half extents, rounding)."""
    caps: list[tuple[tuple[float, ...], tuple[float, ...], float, float]] = []

    def cap(a: tuple[float, ...] | np.ndarray, b: tuple[float, ...] | np.ndarray, ra: float, rb: float | None = None) -> None:
        caps.append((tuple(a), tuple(b), ra, ra if rb is None else rb))

    cap((-0.085, 0.90, 0.0), (0.085, 0.90, 0.0), 0.115)  # hips
    cap((-0.06, 1.06, 0.0), (0.06, 1.06, 0.0), 0.12)  # belly
    cap((-0.08, 1.25, 0.0), (0.08, 1.25, 0.0), 0.125)  # chest
    cap((0, 0.93, 0.0), (0, 1.30, 0.0), 0.11)  # spine fill
    cap((-0.17, 1.375, -0.02), (0.17, 1.375, -0.02), 0.06)  # shoulders
    cap((0, 1.38, -0.01), (0, 1.52, 0.0), 0.055)  # neck
    cap((0, 1.585, 0.015), (0, 1.625, 0.015), 0.088)  # head
    cap((0, 1.59, 0.095), (0, 1.575, 0.105), 0.02)  # nose
    boxes: list[tuple[np.ndarray, np.ndarray, float]] = []
    fingers = voxel <= 0.015
    for s in (1.0, -1.0):
        f = np.array((s, 1.0, 1.0))
        sh, el, wr = (16, 18, 20) if s > 0 else (17, 19, 21)
        cap(j[sh], j[el], 0.052, 0.042)
        cap(j[el], j[wr], 0.040, 0.032)
        hip, knee, ankle = (1, 4, 7) if s > 0 else (2, 5, 8)
        cap(j[hip], j[knee], 0.08, 0.056)
        cap(j[knee], j[ankle], 0.053, 0.038)
        cap(np.array((0.115, 0.045, -0.06)) * f, np.array((0.12, 0.035, 0.14)) * f, 0.04, 0.038)  # foot
        hand_end = 0.80 if fingers else 0.875
        boxes.append((np.array(((0.69 + hand_end) / 2 * s, _HAND_Y, 0.0)), np.array(((hand_end - 0.69) / 2, 0.014, 0.045)), 0.01))
        if fingers:
            for first, (bx, bz), lens, r in _FINGERS:
                tip = np.array((bx + sum(lens), _HAND_Y, bz)) * f
                cap(np.array((bx - 0.02, _HAND_Y, bz)) * f, tip, r)
            cap(np.array((0.70, 1.38, 0.02)) * f, np.array((0.795, 1.372, 0.080)) * f, 0.011)
        else:  # a mitten with a thumb
            cap(np.array((0.70, 1.38, 0.02)) * f, np.array((0.785, 1.372, 0.075)) * f, 0.016)
    a = np.array([c[0] for c in caps], float)
    b = np.array([c[1] for c in caps], float)
    ra = np.maximum(np.array([c[2] for c in caps], float), _MIN_R * voxel)
    rb = np.maximum(np.array([c[3] for c in caps], float), _MIN_R * voxel)
    boxes = [(c, np.maximum(h, _MIN_R * voxel), r) for c, h, r in boxes]
    return a, b, ra, rb, boxes


def _sdf(p: np.ndarray, shapes: tuple, k: float = 0.012) -> np.ndarray:
    """Smooth-union SDF [N] (metres, negative inside) at points p [N, 3]."""
    a, b, ra, rb, boxes = shapes
    d, t = _seg_dist(p, a, b)
    d = d - (ra[None] + t * (rb - ra)[None])
    parts = [d]
    for c, h, r in boxes:
        q = np.abs(p - c) - (h - r)
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        inside = np.minimum(q.max(-1), 0.0)
        parts.append((outside + inside - r)[:, None])
    d = np.concatenate(parts, 1)
    # polynomial smooth minimum, folded over the parts
    out = d[:, 0]
    for i in range(1, d.shape[1]):
        di = d[:, i]
        h = np.clip(0.5 + 0.5 * (di - out) / k, 0.0, 1.0)
        out = di * (1 - h) + out * h - k * h * (1 - h)
    return out


def _fourier(points: np.ndarray, rng: np.random.Generator, n_out: int, n_freq: int = 12, freq: float = 4.0) -> np.ndarray:
    """n_out smooth random scalar fields at points [N, 3] -> [N, n_out], unit-ish amplitude."""
    om = rng.normal(size=(n_freq, 3)) * freq
    ph = rng.uniform(0, 2 * np.pi, n_freq)
    feats = np.sin(points @ om.T + ph)
    coef = rng.normal(size=(n_freq, n_out)) / np.sqrt(n_freq)
    return feats @ coef


def _skin_weights(v: np.ndarray, seg_a: np.ndarray, seg_b: np.ndarray, tau: float = 0.03) -> np.ndarray:
    """Weights [V, 55]: Gaussian falloff in (distance to bone - nearest distance), top 4, rows sum to 1."""
    d, _ = _seg_dist(v, seg_a, seg_b)
    d[:, [23, 24]] = np.inf  # the eye joints skin no surface
    w = np.exp(-(((d - d.min(1, keepdims=True)) / tau) ** 2))
    order = np.argsort(-w, axis=1)
    keep = np.zeros_like(w, dtype=bool)
    np.put_along_axis(keep, order[:, :4], True, axis=1)
    w = np.where(keep, w, 0.0)
    w /= w.sum(1, keepdims=True)
    w[w < 1e-3] = 0.0
    return w / w.sum(1, keepdims=True)


def _regressor(v: np.ndarray, joints: np.ndarray, k: int = 60, iters: int = 300) -> np.ndarray:
    """J_regressor [55, V]: for each joint non-negative weights on its k nearest vertices, summing to
    one, whose weighted mean is (as near as the vertices' hull allows) the joint."""
    reg = np.zeros((len(joints), len(v)))
    for i, p in enumerate(joints):
        dist = np.linalg.norm(v - p, axis=1)
        idx = np.argsort(dist)[: min(k, len(v))]
        pts = v[idx]
        w = np.exp(-((dist[idx] / (dist[idx].max() + 1e-9)) ** 2) * 2)
        w /= w.sum()
        c = np.concatenate([pts.T, np.ones((1, len(idx)))], 0)  # [4, k]
        target = np.concatenate([p, [1.0]])
        cct = c @ c.T + 1e-12 * np.eye(4)
        for _ in range(iters):
            w = w + c.T @ np.linalg.solve(cct, target - c @ w)
            w = np.maximum(w, 0.0)
            w /= w.sum()
        reg[i, idx] = w
    return reg


def synthetic_smplx_arrays(resolution: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic human body in the array layout of ``SMPLX_NEUTRAL.npz``.

    resolution: marching-cubes cells over 1.8 m (24 -> ~7.5 cm voxels, a few hundred vertices; 48 ->
        ~3.75 cm, ~1,700; fingers are modelled from 120 on (voxels <= 1.5 cm), below that hands are mittens).
    seed: seed of the random smooth blend shape fields and the hand PCA basis.
    Returns float32 arrays (metres, +Y up, facing +Z): v_template [V, 3], f [F, 3] uint32,
    shapedirs [V, 3, 400] (300 shape + 100 expression), posedirs [V, 3, 486], J_regressor [55, V],
    weights [V, 55], kintree_table [2, 55] int64 (root parent 2**32 - 1), hands_componentsl/r [45, 45],
    hands_meanl/r [45]. The surface is one closed, consistently outward-oriented manifold.
    """
    from skimage.measure import marching_cubes

    rng = np.random.default_rng(seed)
    voxel = 1.8 / float(resolution)
    joints, ends = _design_joints()
    shapes = _shapes(joints, voxel)
    lo = np.array((-0.90, -0.05, -0.20)) - 2 * voxel
    hi = np.array((0.90, 1.75, 0.25)) + 2 * voxel
    n = np.ceil((hi - lo) / voxel).astype(int) + 1
    axes = [lo[i] + voxel * np.arange(n[i]) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    sdf = _sdf(grid, shapes).reshape(*n)
    verts, faces, _, _ = marching_cubes(sdf.astype(np.float32), level=0.0, spacing=(voxel,) * 3)
    verts = verts.astype(np.float64) + lo
    faces = faces.astype(np.int64)
    verts, faces = _largest_component(verts, faces)
    tri = verts[faces]
    signed_volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0
    if signed_volume < 0:
        faces = faces[:, ::-1].copy()
    V = len(verts)

    seg_a, seg_b = _bone_segments(joints, ends)
    weights = _skin_weights(verts, seg_a, seg_b)
    reg = _regressor(verts, joints)

    shapedirs = np.zeros((V, 3, 400))
    ground = np.array((0.0, 0.0, 0.0))
    shapedirs[:, :, 0] = 0.05 * (verts - ground) * np.array((0.3, 1.0, 0.3))  # taller
    d, t = _seg_dist(verts, seg_a, seg_b)
    near = np.argmin(np.where(np.isin(np.arange(55), [23, 24])[None], np.inf, d), 1)
    foot = seg_a[near] + t[np.arange(V), near][:, None] * (seg_b[near] - seg_a[near])
    radial = verts - foot
    radial /= np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-9)
    shapedirs[:, :, 1] = 0.012 * radial  # girth
    rand = _fourier(verts, rng, 298 * 3).reshape(V, 298, 3).transpose(0, 2, 1)
    shapedirs[:, :, 2:300] = 0.002 * rand / (1.0 + np.arange(298) / 30.0)
    head = weights[:, [15, 22]].sum(1)
    expr = _fourier(verts, rng, 100 * 3, freq=12.0).reshape(V, 100, 3).transpose(0, 2, 1)
    shapedirs[:, :, 300:] = 0.001 * expr * head[:, None, None]
    pose_rand = _fourier(verts, rng, 486 * 3).reshape(V, 486, 3).transpose(0, 2, 1)
    mask = np.repeat(weights[:, 1:], 9, axis=1)  # [V, 486], row 9(j-1)+k belongs to joint j
    posedirs = 0.001 * pose_rand * mask[:, None, :]

    def hand_basis() -> np.ndarray:
        q, r = np.linalg.qr(np.eye(45) + 0.2 * rng.normal(size=(45, 45)))
        return (q * np.sign(np.diag(r))[None]).T

    verts[:, 1] += GROUND_Y
    kintree = np.stack([np.array(SMPLX_PARENTS, np.int64), np.arange(55, dtype=np.int64)])
    kintree[0, 0] = 2**32 - 1
    return {
        "v_template": verts.astype(np.float32),
        "f": faces.astype(np.uint32),
        "shapedirs": shapedirs.astype(np.float32),
        "posedirs": posedirs.astype(np.float32),
        "J_regressor": reg.astype(np.float32),
        "weights": weights.astype(np.float32),
        "kintree_table": kintree,
        "hands_componentsl": hand_basis().astype(np.float32),
        "hands_componentsr": hand_basis().astype(np.float32),
        "hands_meanl": (0.1 * rng.normal(size=45)).astype(np.float32),
        "hands_meanr": (0.1 * rng.normal(size=45)).astype(np.float32),
    }


def designed_joints() -> np.ndarray:
    """The designed rest joints [55, 3] of the synthetic body (metres, native frame, +Y up)."""
    j, _ = _design_joints()
    return j + np.array((0.0, GROUND_Y, 0.0))


def _largest_component(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the connected component (by shared vertices) with the most faces; reindex vertices."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nv = len(verts)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(nv, nv))
    _, lab = connected_components(g, directed=False)
    face_lab = lab[faces[:, 0]]
    best = np.bincount(face_lab).argmax()
    faces = faces[face_lab == best]
    used = np.unique(faces)
    remap = -np.ones(nv, np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[faces]


class _FakeCh:
    """Stand-in for ``chumpy.ch.Ch`` when writing a pickle (its state holds the array as ``x``)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x


def write_synthetic_smplx(path: str | os.PathLike[str], *, resolution: int = 24, seed: int = 0, chumpy: bool = True) -> Path:
    """Write :func:`synthetic_smplx_arrays` as an SMPL-X model file.

    path: ``.npz`` (``np.savez`` of the arrays) or ``.pkl`` (pickle of a dict, as the published
    SMPLX_NEUTRAL.pkl: J_regressor a ``scipy.sparse.csc_matrix`` and, with ``chumpy``, shapedirs
    pickled as a ``chumpy.ch.Ch`` object, without chumpy installed). Returns the path.
    """
    path = Path(path)
    arrays = synthetic_smplx_arrays(resolution=resolution, seed=seed)
    if path.suffix == ".npz":
        np.savez(path, **arrays)
        return path
    if path.suffix != ".pkl":
        raise ValueError(f"{path}: write .npz or .pkl")
    from scipy.sparse import csc_matrix

    data: dict[str, object] = dict(arrays)
    data["J_regressor"] = csc_matrix(arrays["J_regressor"].astype(np.float64))
    added: list[str] = []
    if chumpy and "chumpy" not in sys.modules:
        pkg, sub = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
        cls = type("Ch", (_FakeCh,), {"__module__": "chumpy.ch"})
        sub.Ch = cls  # type: ignore[attr-defined]
        pkg.ch = sub  # type: ignore[attr-defined]
        sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, sub
        added = ["chumpy", "chumpy.ch"]
        data["shapedirs"] = cls(arrays["shapedirs"])
    try:
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=2)
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return path
