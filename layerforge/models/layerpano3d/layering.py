"""LayerPano3D layering: instances of a panorama grouped into depth layers.

The method (LayerPano3D, 3DTopia/LayerPano3D ``gen_autolayering.py``): run a panoptic
segmenter, drop the "stuff" classes (sky, floor, wall, ceiling, ...), give every remaining
instance one depth (the mean of its depth values above their 25th percentile) and cluster
those depths with k-means, ``k = min(3, #instances)``. Each cluster is one layer, the union of
its instances' masks.

Differences from the authors' script, on purpose:

- layers are defined in METRIC radial depth, ordered near to far (layer 0 = nearest); the
  authors cluster Depth-Anything inverse depth (disparity), so their "above the 25th
  percentile" is the nearer part of an instance, ours the farther part;
- the 1-D k-means is the exact optimum (sorted values, dynamic programming over contiguous
  groups), not sklearn's seeded Lloyd iterations: deterministic and never a local minimum;
- :func:`instances_from_depth` is a classical stand-in for the segmenter (depth
  discontinuities only) when no segmentation model is configured.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np
import torch
from scipy import sparse
from scipy.sparse import csgraph
from torch import Tensor

from layerforge.errors import InputError
from layerforge.models.guidance.estimators import Segment

__all__ = [
    "INSTANCE_PERCENTILE",
    "MAX_LAYERS",
    "STUFF_LABELS",
    "LayerAssignment",
    "assign_layers",
    "instance_depth",
    "instances_from_depth",
    "instances_from_segments",
    "is_stuff",
    "kmeans_1d",
]

_COCO_PANOPTIC_STUFF = (
    # the 53 stuff classes of COCO panoptic (ids 80..132 of the 133-class label set)
    "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood",
    "flower", "fruit", "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform",
    "playingfield", "railroad", "river", "road", "roof", "sand", "sea", "shelf", "snow", "stairs",
    "tent", "towel", "wall-brick", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "window-blind", "window-other", "tree-merged", "fence-merged", "ceiling-merged",
    "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged", "pavement-merged",
    "mountain-merged", "grass-merged", "dirt-merged", "paper-merged", "food-other-merged",
    "building-other-merged", "rock-merged", "wall-other-merged", "rug-merged",
)
_ADE20K_STUFF = (
    # the stuff classes of ADE20K-150 panoptic (MaskFormer / Mask2Former / OneFormer split),
    # every synonym of a class name
    "wall", "building", "edifice", "sky", "floor", "flooring", "tree", "ceiling", "road", "route",
    "grass", "sidewalk", "pavement", "earth", "ground", "mountain", "mount", "plant", "flora",
    "water", "house", "sea", "rug", "carpet", "field", "rock", "stone", "base", "pedestal",
    "sand", "skyscraper", "grandstand", "covered stand", "path", "runway", "stairway", "staircase",
    "river", "bridge", "span", "blind", "hill", "bar", "hovel", "hut", "hutch", "shack",
    "shanty", "tower", "dirt track", "land", "soil", "escalator", "moving staircase",
    "moving stairway", "buffet", "sideboard", "poster", "posting", "placard",
    "stage", "conveyer belt", "conveyor belt", "conveyer", "conveyor", "transporter",
    "canopy", "swimming pool", "swimming bath", "natatorium", "waterfall", "falls", "lake",
)
STUFF_LABELS: frozenset[str] = frozenset(_COCO_PANOPTIC_STUFF + _ADE20K_STUFF)
"""Lower-case stuff class names (COCO panoptic and ADE20K-150 panoptic); see :func:`is_stuff`.

Names that are stuff in one label set and things in the other (COCO's ``shelf``, ``counter``,
``pillow``, ``towel``, ``light``, ``stairs``, ``house``) count as stuff. COCO's suffixed names
(``door-stuff``, ``table-merged``, ``window-other``, ``cabinet-merged``) are in the set whole;
their first tokens (``door``, ``table``, ``window``, ``cabinet``: ADE20K things) are not.
"""

_SPLIT = re.compile(r"[-\s,_]+")


def is_stuff(label: str) -> bool:
    """Whether a segment label is a stuff class: the lower-cased label, or its first token
    (before ``-``, a space, ``,`` or ``_``), is in :data:`STUFF_LABELS`
    (``"wall-other-merged"`` -> ``wall``, ``"floor-wood"`` -> ``floor``)."""
    name = str(label).strip().lower()
    if name in STUFF_LABELS:
        return True
    first = _SPLIT.split(name, maxsplit=1)[0]
    return bool(first) and first in STUFF_LABELS


INSTANCE_PERCENTILE = 25  # LayerPano3D: mean of the values above the 25th percentile
MAX_LAYERS = 3  # k = min(3, #instances)


def _valid(depth: Tensor) -> Tensor:
    return torch.isfinite(depth) & (depth > 0)


def instance_depth(depth: Tensor, mask: Tensor, percentile: float = INSTANCE_PERCENTILE) -> float:
    """One depth for an instance: the mean of its depth values above their ``percentile``.

    As the authors: the ``n`` valid (finite, positive) values under ``mask`` are sorted and the
    mean is taken over ``sorted[floor(n * percentile / 100):]``.

    Args:
        depth: [H, W] radial depth, metres.
        mask: [H, W] bool.
    """
    if depth.shape != mask.shape:
        raise ValueError(f"depth {tuple(depth.shape)} and mask {tuple(mask.shape)} differ in shape")
    if not 0.0 <= percentile < 100.0:
        raise ValueError(f"percentile={percentile} is out of range [0, 100)")
    m = mask.to(torch.bool) & _valid(depth)
    v = np.sort(depth[m].detach().cpu().double().numpy())
    if v.size == 0:
        raise InputError("instance_depth: the mask holds no valid (finite, positive) depth",
                         "pass a non-empty mask over valid depth")
    return float(v[int(v.size * percentile / 100.0):].mean())


def kmeans_1d(values: Sequence[float] | Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact 1-D k-means (minimum within-cluster sum of squares).

    An optimal 1-D clustering is contiguous in sorted order and never splits equal values, so
    the distinct values (weighted by their counts) are split into ``k`` contiguous groups by
    dynamic programming, O(k m^2) for m distinct values. Ties between equally good splits go to
    the earliest split point: the result is deterministic.

    Args:
        values: [n] numbers.
        k: number of clusters, >= 1; clipped to the number of distinct values.

    Returns:
        labels [n] int64 (0 = the cluster with the smallest centre) and centres [k'] float64,
        strictly ascending (k' = min(k, #distinct values); both empty when n = 0).
    """
    x = np.asarray(values.detach().cpu().double().numpy() if isinstance(values, Tensor) else values,
                   dtype=np.float64).reshape(-1)
    if k < 1:
        raise ValueError(f"kmeans_1d: k={k} must be >= 1")
    if not np.isfinite(x).all():
        raise ValueError("kmeans_1d: values must be finite")
    if x.size == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64)
    uniq, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    m = uniq.size
    k = min(k, m)
    w = counts.astype(np.float64)
    cw = np.concatenate([[0.0], np.cumsum(w)])
    cs = np.concatenate([[0.0], np.cumsum(w * uniq)])
    cq = np.concatenate([[0.0], np.cumsum(w * uniq * uniq)])

    def cost(i: np.ndarray, j: int) -> np.ndarray:
        """SSE of the group of distinct values i..j-1 (i an array, j an end index)."""
        n = cw[j] - cw[i]
        s = cs[j] - cs[i]
        return np.maximum(cq[j] - cq[i] - s * s / n, 0.0)

    inf = np.inf
    dp = np.full((k + 1, m + 1), inf)
    arg = np.zeros((k + 1, m + 1), dtype=np.int64)
    dp[0, 0] = 0.0
    for c in range(1, k + 1):
        for j in range(c, m - (k - c) + 1):
            i = np.arange(c - 1, j)  # the last group is i..j-1
            tot = dp[c - 1, i] + cost(i, j)
            best = int(np.argmin(tot))
            dp[c, j], arg[c, j] = tot[best], i[best]
    bounds = [m]
    for c in range(k, 0, -1):
        bounds.append(int(arg[c, bounds[-1]]))
    bounds = bounds[::-1]  # 0 = b0 < b1 < ... < bk = m
    group = np.zeros(m, dtype=np.int64)
    centres = np.zeros(k, dtype=np.float64)
    for c in range(k):
        a, b = bounds[c], bounds[c + 1]
        group[a:b] = c
        centres[c] = (cs[b] - cs[a]) / (cw[b] - cw[a])
    return torch.from_numpy(group[inverse]), torch.from_numpy(centres)


@dataclasses.dataclass
class LayerAssignment:
    """Instances grouped into depth layers (layer 0 = the nearest)."""

    instances: list[int]  # instance ids (non-zero ids present in the id map, above min_pixels)
    depths: list[float]  # instance_depth of each, metres
    layer_of: dict[int, int]  # instance id -> layer index, 0 = NEAREST
    centres: list[float]  # cluster centre per layer, metres, ascending
    masks: Tensor  # [K, H, W] bool, layer k = union of its instances

    @property
    def num_layers(self) -> int:
        return int(self.masks.shape[0])


def merge_close_layers(labels: Tensor, values: Sequence[float], min_ratio: float) -> tuple[Tensor, Tensor]:
    """Merge adjacent clusters (labels ascending with depth) whose centres are less than ``min_ratio`` apart.

    ``k = min(3, #instances)`` always spends 3 layers on 3 or more instances, so 4 objects at two
    depths (1.1, 1.3, 2.3, 2.7 m) become 3 layers, one band split in two. A layer only pays for
    itself when it hides something from the layer behind it; two clusters whose centres differ
    by less than ``min_ratio`` (far / near) are one depth band. Returns (labels, centres) after merging,
    labels renumbered 0.. near to far.
    """
    vals = torch.as_tensor(list(values), dtype=torch.float64)
    labels = labels.clone()
    while True:
        ks = sorted(set(labels.tolist()))
        centres = [float(vals[labels == k].mean()) for k in ks]
        close = [j for j in range(len(ks) - 1) if centres[j + 1] < min_ratio * centres[j]]
        if not close:
            break
        j = min(close, key=lambda j: centres[j + 1] / centres[j])
        labels[labels == ks[j + 1]] = ks[j]
    remap = {k: n for n, k in enumerate(sorted(set(labels.tolist())))}
    labels = torch.tensor([remap[int(v)] for v in labels.tolist()], dtype=torch.int64)
    centres_t = torch.tensor([float(vals[labels == k].mean()) for k in range(len(remap))], dtype=torch.float64)
    return labels, centres_t


def assign_layers(ids: Tensor, depth: Tensor, *, max_layers: int = MAX_LAYERS, min_pixels: int = 1,
                  min_ratio: float = 1.0, percentile: float = INSTANCE_PERCENTILE) -> LayerAssignment:
    """Group the instances of an id map into at most ``max_layers`` depth layers.

    Every non-zero id with at least ``min_pixels`` pixels of valid depth is an instance; its
    depth is :func:`instance_depth`; the depths are clustered by :func:`kmeans_1d` with
    ``k = min(max_layers, #instances)`` (fewer layers when fewer distinct depths), then adjacent
    layers whose centres are less than ``min_ratio`` apart are merged (:func:`merge_close_layers`;
    1.0 merges nothing: the paper's rule).

    Args:
        ids: [H, W] integer instance ids, 0 = stuff / background.
        depth: [H, W] radial depth, metres.

    Returns:
        a :class:`LayerAssignment`; no instances give K = 0 (``masks`` [0, H, W]).
    """
    if ids.shape != depth.shape or ids.dim() != 2:
        raise ValueError(f"need ids and depth [H, W] of one shape, got {tuple(ids.shape)} and {tuple(depth.shape)}")
    if max_layers < 1:
        raise ValueError(f"max_layers={max_layers} must be >= 1")
    H, W = ids.shape
    ids = ids.to(torch.int64)
    valid = _valid(depth)
    instances, depths = [], []
    for i in torch.unique(ids).tolist():
        if i == 0:
            continue
        m = ids == i
        if int((m & valid).sum()) < max(min_pixels, 1):
            continue
        instances.append(int(i))
        depths.append(instance_depth(depth, m, percentile))
    if not instances:
        return LayerAssignment([], [], {}, [], torch.zeros(0, H, W, dtype=torch.bool, device=ids.device))
    labels, centres = kmeans_1d(depths, min(max_layers, len(instances)))
    if min_ratio > 1.0:
        labels, centres = merge_close_layers(labels, depths, min_ratio)
    layer_of = {i: int(lab) for i, lab in zip(instances, labels.tolist())}
    masks = torch.zeros(len(centres), H, W, dtype=torch.bool, device=ids.device)
    for i, lab in layer_of.items():
        masks[lab] |= ids == i
    return LayerAssignment(instances, depths, layer_of, centres.tolist(), masks)


def instances_from_segments(segments: Sequence[Segment], shape: tuple[int, int], *,
                            min_pixels: int = 1) -> tuple[Tensor, list[str]]:
    """An instance id map from segmenter output, stuff dropped.

    Segments whose label :func:`is_stuff` are dropped; the others are numbered 1.. in their
    order. A later segment does not overwrite pixels an earlier one took; a segment left with
    fewer than ``min_pixels`` pixels is dropped (and takes no number).

    Returns:
        ids [H, W] int64 (0 = stuff / unlabelled) and the kept labels (label of id i at i - 1).
    """
    H, W = shape
    ids = torch.zeros(H, W, dtype=torch.int64)
    labels: list[str] = []
    for seg in segments:
        if is_stuff(seg.label):
            continue
        mask = torch.as_tensor(seg.mask).to(device="cpu", dtype=torch.bool)
        if tuple(mask.shape) != (H, W):
            raise ValueError(f"segment {seg.label!r} has a mask {tuple(mask.shape)}, expected {(H, W)}")
        free = mask & (ids == 0)
        if int(free.sum()) < max(min_pixels, 1):
            continue
        labels.append(seg.label)
        ids[free] = len(labels)
    return ids, labels


def _wrapped_components(ok_h: np.ndarray, ok_v: np.ndarray, node_ok: np.ndarray) -> np.ndarray:
    """Connected components of the pixel grid (horizontal wrap); -1 where node_ok is False.

    ok_h [H, W]: pixel (i, j) connects to (i, (j + 1) % W); ok_v [H - 1, W]: (i, j) to (i + 1, j).
    """
    H, W = node_ok.shape
    idx = np.arange(H * W).reshape(H, W)
    rows = np.concatenate([idx[ok_h], idx[:-1][ok_v]])
    cols = np.concatenate([np.roll(idx, -1, axis=1)[ok_h], idx[1:][ok_v]])
    g = sparse.coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(H * W, H * W))
    _, lab = csgraph.connected_components(g, directed=False)
    lab = lab.reshape(H, W)
    lab[~node_ok] = -1
    return lab


def _disk_offsets(radius: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if 0 < dy * dy + dx * dx <= radius * radius]


def _smooth_steps(inv: np.ndarray, jump: float) -> np.ndarray:
    """[R, C] bool: whether pixel (r, c) and (r, c + 1) lie on one surface, from inverse depth ``inv`` [R, C]
    (NaN invalid). The last column is False.

    Connected when their inverse depths differ by less than ``jump`` (relative), or when the step
    continues the slope on either side: a plane seen from the origin has 1/d = w . dir, smooth in
    the pixel grid, so a floor seen at a grazing angle (steps of 10 %+ per row near the horizon)
    stays one surface, while a silhouette (a step the neighbours do not predict) is cut.
    """
    a, b = inv[:, :-1], inv[:, 1:]
    big = np.fmax(np.abs(a), np.abs(b))
    step = b - a
    with np.errstate(invalid="ignore"):
        ok = np.abs(step) < jump * big
        before = np.full_like(step, np.nan)
        before[:, 1:] = step[:, :-1]  # the step into a from its left
        after = np.full_like(step, np.nan)
        after[:, :-1] = step[:, 1:]  # the step out of b to its right
        ok |= np.abs(step - before) < jump * big
        ok |= np.abs(step - after) < jump * big
    ok &= np.isfinite(a) & np.isfinite(b)
    return np.concatenate([ok, np.zeros((inv.shape[0], 1), bool)], 1)


def instances_from_depth(depth: Tensor, *, jump: float = 0.08, min_fraction: float = 0.002) -> Tensor:
    """Classical default (no segmenter, no ids): objects that stand out in front of the shell.

    4-connected components of pixels whose neighbours differ by less than ``jump`` in inverse
    depth (a relative jump), or by a step that continues the slope beside it (a surface seen at a
    grazing angle, :func:`_smooth_steps`), with the horizontal wrap (column W-1 neighbours column 0);
    the largest component is the background shell (0), and so are components that touch the
    top or bottom row or span more than half the columns (a floor or ceiling cut from the walls at
    a coarse resolution); components with fewer than
    ``min_fraction`` of the pixels are merged into 0 (noise); the remaining ones that are
    NEARER than their surroundings (median depth of the component < median depth of its 2-px
    outer ring) are instances 1.. (numbered in raster order of their first pixel), the others
    are 0 ("stuff" such as recessed parts of the shell). Invalid depth (non-finite, <= 0) is 0.

    Limits: only depth discontinuities separate objects. An object touching the floor (or a
    wall) with continuous depth at the contact is not separated from the shell.

    Args:
        depth: [H, W] radial depth, metres.

    Returns:
        [H, W] int64 instance ids, 0 = shell / stuff.
    """
    if depth.dim() != 2:
        raise ValueError(f"need depth [H, W], got {tuple(depth.shape)}")
    H, W = depth.shape
    d = depth.detach().cpu().double().numpy()
    valid = np.isfinite(d) & (d > 0)
    out = np.zeros((H, W), dtype=np.int64)
    if not valid.any():
        return torch.from_numpy(out)
    inv = np.where(valid, 1.0 / np.where(valid, d, 1.0), np.nan)
    ok_h = _smooth_steps(np.concatenate([inv[:, -2:], inv, inv[:, :2]], 1), jump)[:, 2:W + 2]
    if W == 1:
        ok_h[:] = False
    ok_v = _smooth_steps(inv.T, jump).T[:-1] if H > 1 else np.zeros((0, W), bool)
    lab = _wrapped_components(ok_h, ok_v, valid)
    n = int(lab.max()) + 1
    sizes = np.bincount(lab[valid], minlength=n)
    shell = int(np.argmax(sizes))
    keep = sizes >= min_fraction * H * W
    keep[shell] = False
    # what runs round the camera (a floor, a ceiling: at the poles or across most longitudes) is shell
    keep[np.unique(lab[[0, -1]][valid[[0, -1]]])] = False
    columns = np.zeros((n, W), bool)
    columns[lab[valid], np.nonzero(valid)[1]] = True
    keep &= columns.sum(1) <= 0.5 * W
    cands = np.flatnonzero(keep)
    if cands.size == 0:
        return torch.from_numpy(out)
    # The 2-px outer ring of every candidate: pixels q (valid, not in c) within radius 2 of c.
    flat_lab = lab.reshape(-1)
    is_cand = np.zeros(n + 1, dtype=bool)
    is_cand[cands] = True
    pairs = []
    ii, jj = np.nonzero(is_cand[lab])  # the candidates' pixels
    cl = lab[ii, jj]
    for dy, dx in _disk_offsets(2):
        qi, qj = ii + dy, (jj + dx) % W
        inside = (qi >= 0) & (qi < H)
        qi, qj, c = qi[inside], qj[inside], cl[inside]
        q = qi * W + qj
        sel = (flat_lab[q] != c) & valid.reshape(-1)[q]
        pairs.append(c[sel].astype(np.int64) * (H * W) + q[sel])
    ring = np.unique(np.concatenate(pairs)) if pairs else np.zeros(0, dtype=np.int64)
    ring_c, ring_q = ring // (H * W), ring % (H * W)
    flat_d = d.reshape(-1)
    order = np.argsort(ring_c, kind="stable")
    ring_c, ring_q = ring_c[order], ring_q[order]
    starts = np.searchsorted(ring_c, cands, side="left")
    ends = np.searchsorted(ring_c, cands, side="right")
    first_pixel = {}
    for c, a, b in zip(cands.tolist(), starts.tolist(), ends.tolist()):
        if b <= a:
            continue  # no valid surroundings: cannot tell nearer from farther
        comp = lab == c
        if np.median(d[comp]) < np.median(flat_d[ring_q[a:b]]):
            first_pixel[c] = int(np.flatnonzero(comp.reshape(-1))[0])
    for new_id, c in enumerate(sorted(first_pixel, key=first_pixel.get), start=1):
        out[lab == c] = new_id
    return torch.from_numpy(out)
