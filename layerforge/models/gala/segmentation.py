"""GALA's 3D segmentation of a scan: per-view object masks voted onto the scan's faces.

GALA (snuvclab/GALA, ``segmentation/render.py`` and ``segm_3d.py``) renders the normalised
scan from 36 views -- rotations of 150, 180 and 210 degrees about X (elevations -30, 0, +30
in its Y-up frame) times 12 azimuths 30 degrees apart -- segments the object word in each
with Grounded-SAM, and marks a face "object" when it is segmented in at least half of the
views that see it (``segmented / visible >= 0.5``). Isolated object components of fewer than
25 faces are dropped. Face visibility comes from the rasterizer's face ids.

We render the same 36 views with our rasterizer (perspective, looking at the scan's centre,
+Z up), and take the masks from any :class:`ViewSegmenter`: the text-prompted
:class:`~layerforge.models.guidance.text_segmenter.TextSegmenter` when a model is given, or
:class:`OracleSegmenter` (masks from known face labels) for tests and labelled scans.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from layerforge.renderers.cameras import Camera, orbit_cameras

# GALA segmentation/render.py: x in range(150, 211, 30), y in range(0, 360, 30)
ELEVATIONS_DEG = (-30.0, 0.0, 30.0)
AZIMUTHS = 12
VOTE_THRESHOLD = 0.5  # segm_3d.py: segmented / visible >= 0.5
MIN_COMPONENT_FACES = 25  # segm_3d.py: trimesh.graph.connected_components(min_len=25)


class ViewSegmenter(Protocol):
    """Anything that turns rendered views into object masks."""

    def __call__(self, images: Tensor, face_ids: Tensor, prompt: str) -> Tensor:
        """images [B, H, W, 3] linear RGB, face_ids [B, H, W] int64 (-1 empty) -> [B, H, W] bool."""
        ...


@dataclasses.dataclass
class OracleSegmenter:
    """Masks from known per-face labels: the perfect segmenter (tests, pre-labelled scans).

    ``face_is_object``: [F] bool over the rendered mesh's faces.
    """

    face_is_object: Tensor

    def __call__(self, images: Tensor, face_ids: Tensor, prompt: str) -> Tensor:
        labels = torch.as_tensor(self.face_is_object, dtype=torch.bool, device=face_ids.device)
        return (face_ids >= 0) & labels[face_ids.clamp_min(0)]


@dataclasses.dataclass
class ModelSegmenter:
    """Adapts a text-prompted image segmenter (``segmenter(image, prompt) -> [H, W] bool``)."""

    segmenter: object

    def __call__(self, images: Tensor, face_ids: Tensor, prompt: str) -> Tensor:
        return torch.stack([torch.as_tensor(self.segmenter(img, prompt)).to(face_ids.device) for img in images])


def segmentation_cameras(center: Tensor, radius: float, resolution: int, *, fov_deg: float = 30.0,
                         elevations_deg: tuple[float, ...] = ELEVATIONS_DEG, azimuths: int = AZIMUTHS,
                         front_azimuth_deg: float = -90.0) -> Camera:
    """GALA's 36 segmentation views around a scan.

    Args:
        center: [3] world point looked at (metres). radius: the scan's bounding radius (metres);
            the distance makes that sphere fill the frame with a 5 % margin.
        resolution: square image size in pixels.
        front_azimuth_deg: azimuth of the first view; -90 is the -Y side, the front of a body
            facing -Y (Blender's Front view).

    Returns:
        A Camera batch of ``len(elevations_deg) * azimuths``, elevation-major.
    """
    dist = radius * 1.05 / np.sin(np.deg2rad(fov_deg) / 2)
    el = torch.tensor([e for e in elevations_deg for _ in range(azimuths)])
    az = torch.tensor([front_azimuth_deg + 360.0 * k / azimuths for _ in elevations_deg for k in range(azimuths)])
    return orbit_cameras(el, az, float(dist), fov_deg, resolution, resolution,
                         target=torch.as_tensor(center, dtype=torch.float32), near=max(dist - 2 * radius, 1e-3))


@dataclasses.dataclass
class FaceVote:
    """Result of :func:`vote_faces`: ``is_object`` [F] bool, ``visible`` / ``segmented`` [F] view counts."""

    is_object: Tensor
    visible: Tensor
    segmented: Tensor

    @property
    def unseen(self) -> Tensor:
        """[F] bool: faces no view saw (labelled by their neighbours in :func:`fill_unseen`)."""
        return self.visible == 0


def vote_faces(face_ids: Tensor, masks: Tensor, num_faces: int, threshold: float = VOTE_THRESHOLD) -> FaceVote:
    """Per-face majority vote over views.

    Args:
        face_ids: [B, H, W] int64 visible face per pixel, -1 where empty.
        masks: [B, H, W] bool object mask per view.
        num_faces: F, the mesh's face count.
        threshold: a face is object when segmented / visible >= threshold (GALA: 0.5).

    A face counts once per view (visible if any of its pixels shows, segmented if any of its
    pixels is inside the mask), as GALA's per-view face stacks do.
    """
    b = face_ids.shape[0]
    visible = torch.zeros(num_faces, dtype=torch.long, device=face_ids.device)
    segmented = torch.zeros_like(visible)
    for v in range(b):
        ids = face_ids[v]
        hit = ids >= 0
        seen = torch.zeros(num_faces, dtype=torch.bool, device=ids.device)
        seen[ids[hit]] = True
        seg = torch.zeros_like(seen)
        seg[ids[hit & masks[v].to(ids.device)]] = True
        visible += seen.long()
        segmented += seg.long()
    ratio = segmented.double() / visible.double().clamp_min(1e-8)
    return FaceVote(is_object=(visible > 0) & (ratio >= threshold), visible=visible, segmented=segmented)


def face_adjacency(faces: np.ndarray) -> np.ndarray:
    """[E, 2] pairs of face indices sharing an edge."""
    f = np.asarray(faces, np.int64)
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    owner = np.tile(np.arange(len(f)), 3)
    order = np.lexsort((edges[:, 1], edges[:, 0]))
    e, o = edges[order], owner[order]
    same = np.all(e[1:] == e[:-1], axis=1)
    return np.stack([o[:-1][same], o[1:][same]], axis=1)


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """[n] component label of each node of an undirected graph given by ``pairs`` [E, 2]."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(g, directed=False)[1]


def remove_small_components(faces: np.ndarray, is_object: np.ndarray, min_faces: int = MIN_COMPONENT_FACES) -> np.ndarray:
    """``is_object`` [F] bool with object components of fewer than ``min_faces`` faces cleared (GALA)."""
    lab = np.asarray(is_object, bool).copy()
    adj = face_adjacency(faces)
    adj = adj[lab[adj[:, 0]] & lab[adj[:, 1]]]
    comp = _components(len(lab), adj)
    sizes = np.bincount(comp[lab], minlength=comp.max() + 1) if lab.any() else np.zeros(comp.max() + 1, np.int64)
    lab &= sizes[comp] >= min_faces
    return lab


def fill_unseen(faces: np.ndarray, is_object: np.ndarray, unseen: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Label faces no view saw (armpits, between the legs) by the majority of their seen neighbours.

    GALA leaves them "human"; a hidden patch inside a sleeve would then be a hole in the object
    layer, so we grow the labels across them (ours).
    """
    lab = np.asarray(is_object, bool).copy()
    known = ~np.asarray(unseen, bool)
    adj = face_adjacency(faces)
    a = np.concatenate([adj[:, 0], adj[:, 1]])
    b = np.concatenate([adj[:, 1], adj[:, 0]])
    for _ in range(iterations):
        todo = ~known
        if not todo.any():
            break
        use = known[b] & todo[a]
        votes = np.bincount(a[use], weights=lab[b[use]].astype(float), minlength=len(lab))
        counts = np.bincount(a[use], minlength=len(lab))
        new = todo & (counts > 0)
        if not new.any():
            break
        lab[new] = votes[new] / counts[new] >= 0.5
        known |= new
    return lab
