"""GALA's canonical space: the body in a fixed canonical pose, and points moved between it and a pose.

GALA (snuvclab/GALA ``geometry/dmtet.py`` ``set_smplx`` / ``cano_to_posed``) models both layers
in one canonical space: the mean-shape body (betas 0) in a "star" pose whose legs are spread
15 degrees about the body's forward axis (``pose[1, 2] = +15 deg``, ``pose[2, 2] = -15 deg`` for
SMPL-X's left and right hip). A canonical point takes the skinning weights and the shape / pose
blend-shape offsets of the nearest canonical body vertices and is posed by linear blend
skinning; a scan point is brought back by the inverse.

For body vertex i with weights w_i, template t_i, shape offset S_i beta and pose offsets
P_i(theta), LBS gives posed v_i = B_i(beta, theta) (t_i + S_i beta + P_i(theta)), with the
blended transform B_i = sum_j w_ij A_j. The canonical vertex is c_i = B_i(0, theta_c)
(t_i + P_i(theta_c)), so for any point x near vertex i

    to_posed(x)     = B(beta, theta) (B(0, theta_c)^-1 x - P(theta_c) + S beta + P(theta))
    to_canonical(y) = B(0, theta_c) (B(beta, theta)^-1 y - S beta - P(theta) + P(theta_c))

with w, S, P taken from the body (exact on the body's own vertices). Weights and offsets of a
point blend its ``k`` nearest body vertices by inverse distance (GALA samples a volume of
nearest-vertex values; ``k = 1`` is the same rule without the grid).

All coordinates here are in the *normalised frame*: the body model's native frame rotated to
layerforge's +Z-up world (``BodyModel.to_world``), the fit's translation and scale removed
(GALA's ``(v - transl) / scale``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import Tensor

from layerforge.errors import InputError

# GALA set_smplx: legs spread 15 degrees in the canonical pose
CANONICAL_LEG_DEG = 15.0
SKINNING_NEIGHBOURS = 4  # ours: inverse-distance blend of the nearest body vertices
# The hips' names in the body models we load, and each model's forward axis in its native frame
# (SMPL-X faces +Z; anny faces -Y): the canonical leg spread rotates the hips about it.
HIP_JOINTS = {"smplx": ("left_hip", "right_hip")}


@dataclasses.dataclass
class PosedBody:
    """A body posed in the normalised frame.

    Attributes:
        vertices: [V, 3] metres. joints: [J, 3] metres. keypoints: [J + K, 3] (joints, then
            the model's keypoint vertices: see ``BodyModel.keypoints``).
        transforms: [J, 4, 4] skinning transforms A_j (rest space with pose offsets -> posed).
        shape_offsets: [V, 3] S beta. pose_offsets: [V, 3] P(theta), both in the normalised
            frame's axes (rest space).
    """

    vertices: Tensor
    joints: Tensor
    keypoints: Tensor
    transforms: Tensor
    shape_offsets: Tensor
    pose_offsets: Tensor


def _rotation(model) -> Tensor:
    return torch.as_tensor(model.to_world, dtype=torch.float32)[:3, :3]


def pose_body(model, betas: Tensor | None, pose: Tensor) -> PosedBody:
    """The body with ``betas`` [S'] (None: mean shape) and ``pose`` [J, 3] axis-angle, in the normalised frame."""
    dev = model.v_template.device
    b = None if betas is None else torch.as_tensor(betas, dtype=torch.float32, device=dev)[None]
    out = model(betas=b, pose=torch.as_tensor(pose, dtype=torch.float32, device=dev)[None])
    r = _rotation(model).to(dev)
    r4 = torch.eye(4, device=dev)
    r4[:3, :3] = r
    zero = model(betas=None, pose=torch.zeros_like(torch.as_tensor(pose, dtype=torch.float32, device=dev))[None])
    shape_off = (out.rest_vertices[0] - zero.rest_vertices[0]) @ r.T
    return PosedBody(
        vertices=out.vertices[0] @ r.T,
        joints=out.joints[0] @ r.T,
        keypoints=model.keypoints(out)[0] @ r.T,
        transforms=r4 @ out.transforms[0] @ r4.T,
        shape_offsets=shape_off,
        pose_offsets=out.pose_offsets[0] @ r.T,
    )


def canonical_pose(model, leg_deg: float = CANONICAL_LEG_DEG) -> Tensor:
    """[J, 3] GALA's canonical pose: zeros but the hips spread ``leg_deg`` about the forward axis.

    The forward axis is the normalised frame's -Y (every body faces -Y there, Blender's front)
    expressed in the model's native frame.
    """
    names = list(model.joint_names)
    left, right = _hips(model)
    fwd = _rotation(model).T @ torch.tensor([0.0, -1.0, 0.0], device=_rotation(model).device)
    pose = torch.zeros(len(names), 3)
    a = math.radians(leg_deg)
    # SMPL-X: +angle about +Z (its forward) for the left hip moves the left leg outwards (+X side)
    pose[names.index(left)] = fwd.cpu() * a
    pose[names.index(right)] = -fwd.cpu() * a
    return pose


def _hips(model) -> tuple[str, str]:
    names = set(model.joint_names)
    for pair in HIP_JOINTS.values():
        if set(pair) <= names:
            return pair
    for left, right in (("upperleg01.L", "upperleg01.R"), ("thigh.L", "thigh.R"), ("thigh_l", "thigh_r")):
        if {left, right} <= names:
            return left, right
    raise InputError(f"body model {model.name!r} has no joints named like hips ({sorted(names)[:6]}...)",
                     "name its hip joints left_hip/right_hip")


@dataclasses.dataclass
class PointSkinning:
    """What a set of points borrows from their nearest body vertices (:meth:`CanonicalSpace.skinning`).

    weights [N, J]; shape_dirs [N, 3, S] (normalised frame axes); pose_dirs [P, N*3] or None;
    neighbours [N, k] int64 vertex ids; blend [N, k] their inverse-distance weights.
    """

    weights: Tensor
    neighbours: Tensor
    blend: Tensor

    def gather(self, per_vertex: Tensor) -> Tensor:
        """[V, ...] per-vertex values -> [N, ...] blended at the points."""
        g = per_vertex[self.neighbours]  # [N, k, ...]
        w = self.blend.reshape(*self.blend.shape, *([1] * (g.dim() - 2)))
        return (g * w).sum(1)


class CanonicalSpace:
    """The canonical body of one body model and the maps between canonical and posed space.

    Args:
        model: a :class:`~layerforge.models.body.BodyModel`.
        leg_deg: the canonical legs' spread (GALA: 15).
        neighbours: k body vertices blended per point.
    """

    def __init__(self, model, leg_deg: float = CANONICAL_LEG_DEG, neighbours: int = SKINNING_NEIGHBOURS) -> None:
        self.model = model
        self.pose = canonical_pose(model, leg_deg)
        self.body = pose_body(model, None, self.pose)
        self.k = int(neighbours)
        self.faces = model.faces
        self.weights = model.lbs_weights.float()
        self._tree = None

    # ---- neighbours -----------------------------------------------------------------------
    def _kdtree(self, vertices: Tensor):
        from scipy.spatial import cKDTree

        return cKDTree(vertices.detach().cpu().double().numpy())

    def skinning(self, points: Tensor, body_vertices: Tensor | None = None) -> PointSkinning:
        """Skinning data of ``points`` [N, 3] from the k nearest of ``body_vertices`` [V, 3]
        (default: the canonical body). Not differentiable (neighbours are a discrete choice)."""
        if body_vertices is None:
            if self._tree is None:
                self._tree = self._kdtree(self.body.vertices)
            tree = self._tree
        else:
            tree = self._kdtree(body_vertices)
        d, idx = tree.query(points.detach().cpu().double().numpy(), k=self.k)
        d = np.asarray(d).reshape(len(points), -1)
        idx = np.asarray(idx).reshape(len(points), -1)
        w = 1.0 / np.maximum(d, 1e-6)
        w /= w.sum(1, keepdims=True)
        dev = points.device
        nb = torch.from_numpy(idx).to(dev)
        blend = torch.from_numpy(w).float().to(dev)
        weights = (self.weights.to(dev)[nb] * blend[..., None]).sum(1)
        return PointSkinning(weights=weights, neighbours=nb, blend=blend)

    # ---- maps ----------------------------------------------------------------------------
    def to_posed(self, points: Tensor, target: PosedBody, skin: PointSkinning | None = None) -> Tensor:
        """Canonical ``points`` [N, 3] -> posed by ``target`` (a :func:`pose_body` of this model).

        Differentiable w.r.t. ``points``; ``skin`` (their :meth:`skinning`) may be passed when known.
        """
        from layerforge.models.body import blend_transforms

        skin = self.skinning(points) if skin is None else skin
        dev = points.device
        bc = blend_transforms(skin.weights[None], self.body.transforms.to(dev)[None])[0]
        bt = blend_transforms(skin.weights[None], target.transforms.to(dev)[None])[0]
        rest = _apply(torch.linalg.inv(bc), points)
        offset = skin.gather(target.shape_offsets.to(dev) + target.pose_offsets.to(dev) - self.body.pose_offsets.to(dev))
        return _apply(bt, rest + offset)

    def to_canonical(self, points: Tensor, source: PosedBody) -> Tensor:
        """Posed ``points`` [N, 3] (posed by ``source``) -> canonical; weights from the nearest
        posed body vertices. The inverse of :meth:`to_posed` where both pick the same neighbours."""
        from layerforge.models.body import blend_transforms

        skin = self.skinning(points, source.vertices)
        dev = points.device
        bc = blend_transforms(skin.weights[None], self.body.transforms.to(dev)[None])[0]
        bs = blend_transforms(skin.weights[None], source.transforms.to(dev)[None])[0]
        rest = _apply(torch.linalg.inv(bs), points)
        offset = skin.gather(source.shape_offsets.to(dev) + source.pose_offsets.to(dev) - self.body.pose_offsets.to(dev))
        return _apply(bc, rest - offset)


def _apply(m: Tensor, p: Tensor) -> Tensor:
    """[N, 4, 4] per-point transforms applied to [N, 3] points."""
    return (m[:, :3, :3] @ p[..., None])[..., 0] + m[:, :3, 3]
