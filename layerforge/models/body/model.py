"""A parametric body with linear blend skinning (the SMPL / SMPL-X model, generic over joints).

Frames and units: every tensor a :class:`BodyModel` holds or returns is in the model's *native*
frame (SMPL-X: +Y up, the person facing +Z, their left at +X), in metres. ``BodyModel.to_world``
maps native coordinates to the layerforge world (+Z up); apply it after posing.

Posing (:meth:`BodyModel.forward`) follows SMPL-X exactly and then applies GALA's global
similarity: with shaped rest vertices ``T = v_template + shapedirs @ betas (+ expr_dirs @ expression)``,
rest joints ``J = J_regressor @ T``, pose blend shapes ``P = posedirs^T vec(R_j - I, j >= 1)`` and
per-joint rigid transforms ``G_j`` from forward kinematics about the rest joints (the root rotates
about its own rest joint), the posed vertices are::

    v = scale * sum_j w_j G_j (T + P) + transl

i.e. scale about the native origin after skinning, then translate: the order of GALA's
``smpl_server`` and its scan normalisation ``(scan - transl) / scale``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class BodyOutput:
    """A posed body (all tensors float32, native frame, metres).

    vertices: [B, V, 3] posed vertices, after scale and transl.
    joints: [B, J, 3] posed joints, same frame.
    rest_vertices: [B, V, 3] template + shape (+ expression) blend shapes, before pose blend shapes.
    rest_joints: [B, J, 3] joints regressed from ``rest_vertices``.
    transforms: [B, J, 4, 4] skinning transforms A_j with scale and transl folded in: a rest-space
        point x (pose blend shapes applied) maps to sum_j w_j A_j x, so
        ``skin_points(rest_vertices + pose_offsets, lbs_weights, transforms) == vertices``.
    pose_offsets: [B, V, 3] pose blend shape offsets (zeros when the model has no posedirs).
    """

    vertices: Tensor
    joints: Tensor
    rest_vertices: Tensor
    rest_joints: Tensor
    transforms: Tensor
    pose_offsets: Tensor


def batch_rodrigues(axis_angle: Tensor) -> Tensor:
    """Rotation matrices from axis-angle vectors.

    axis_angle: [..., 3] rotation vectors (direction = axis, norm = angle in radians).
    Returns [..., 3, 3]. Smooth and finite at zero (Taylor series of sin(t)/t and (1-cos t)/t^2
    below 1e-4 rad), so gradients exist everywhere.
    """
    r = axis_angle
    theta2 = (r * r).sum(-1, keepdim=True)
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / safe2)
    x, y, z = r.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*r.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=r.dtype, device=r.device).expand_as(k)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


def rigid_transforms(rotations: Tensor, rest_joints: Tensor, parents: Tensor) -> tuple[Tensor, Tensor]:
    """Forward kinematics of a joint hierarchy.

    rotations: [B, J, 3, 3] local joint rotations (row 0: the root's global rotation).
    rest_joints: [B, J, 3] rest joint positions (metres). parents: [J] int64, -1 for the root,
    every parent before its children.
    Returns (posed joints [B, J, 3], skinning transforms [B, J, 4, 4]): transform j maps a
    rest-space point to its posed position under joint j alone (world transform of j with the
    rest joint position removed), so posed joint j = transform_j @ rest_joint_j.
    """
    B, J = rest_joints.shape[:2]
    par = [int(p) for p in parents.tolist()]
    idx = torch.tensor([max(p, 0) for p in par], device=rest_joints.device)
    has_parent = torch.tensor([p >= 0 for p in par], device=rest_joints.device)
    rel = torch.where(has_parent[None, :, None], rest_joints - rest_joints[:, idx], rest_joints)
    local = torch.zeros(B, J, 4, 4, dtype=rotations.dtype, device=rotations.device)
    local[..., :3, :3] = rotations
    local[..., :3, 3] = rel
    local[..., 3, 3] = 1.0
    chain: list[Tensor] = []
    for j, p in enumerate(par):
        if p < 0:
            chain.append(local[:, j])
        else:
            if p >= j:
                raise ValueError(f"joint {j} has parent {p}: parents must precede their children")
            chain.append(chain[p] @ local[:, j])
    world = torch.stack(chain, 1)
    posed = world[..., :3, 3]
    corr = (world[..., :3, :3] @ rest_joints[..., None])[..., 0]
    top = torch.cat([world[..., :3, :3], (posed - corr)[..., None]], -1)
    bottom = world[..., 3:, :]
    return posed, torch.cat([top, bottom], -2)


def blend_transforms(weights: Tensor, transforms: Tensor) -> Tensor:
    """Per-point blended transforms sum_j w_j A_j.

    weights: [N, J] or [B, N, J] skinning weights (rows sum to 1). transforms: [B, J, 4, 4].
    Returns [B, N, 4, 4].
    """
    B, J = transforms.shape[:2]
    flat = transforms.reshape(B, J, 16)
    if weights.dim() == 2:
        out = torch.einsum("nj,bjk->bnk", weights.to(flat.dtype), flat)
    else:
        out = torch.einsum("bnj,bjk->bnk", weights.to(flat.dtype), flat)
    return out.reshape(B, -1, 4, 4)


def skin_points(points: Tensor, weights: Tensor, transforms: Tensor) -> Tensor:
    """Linear blend skinning.

    points: [B, N, 3] rest-space points (metres). weights: [N, J] or [B, N, J].
    transforms: [B, J, 4, 4] skinning transforms (as :func:`rigid_transforms` / BodyOutput).
    Returns [B, N, 3]: sum_j w_j A_j x.
    """
    m = blend_transforms(weights, transforms)
    return (m[..., :3, :3] @ points[..., None])[..., 0] + m[..., :3, 3]


def unskin_points(points: Tensor, weights: Tensor, transforms: Tensor) -> Tensor:
    """Inverse linear blend skinning (posed -> rest), the exact inverse of :func:`skin_points`.

    points: [B, N, 3] posed points. weights: [N, J] or [B, N, J] (the weights of each point's rest
    position). transforms: [B, J, 4, 4]. Returns [B, N, 3]: (sum_j w_j A_j)^-1 y, solving the
    blended 3x3 system per point (singular only for degenerate blends).
    """
    m = blend_transforms(weights, transforms)
    rhs = (points - m[..., :3, 3])[..., None]
    return torch.linalg.solve(m[..., :3, :3], rhs)[..., 0]


def _batch_of(*tensors: Tensor | None) -> int:
    for t in tensors:
        if t is not None:
            return int(t.shape[0])
    return 1


@dataclass(eq=False)
class BodyModel:
    """A parametric body with linear blend skinning (SMPL-X's model, generic over joints/hierarchy).

    name: a label (e.g. "smplx_neutral").
    v_template: [V, 3] float32 rest template, native frame, metres.
    faces: [F, 3] int64.
    shapedirs: [V, 3, S] shape blend shapes (metres per unit beta).
    posedirs: [(J-1)*9, V*3] pose blend shapes (SMPL-X layout after reshape), None = none.
    J_regressor: [J, V] rows sum to 1.
    parents: [J] int64, -1 for the root; parents precede children.
    lbs_weights: [V, J] rows sum to 1.
    joint_names: J names.
    to_world: [4, 4] float32 native frame -> layerforge world (+Z up); SMPL-X (+Y up) uses
        (x, y, z) -> (x, -z, y), the conversion of our OBJ/glTF readers.
    expr_dirs: [V, 3, E] expression blend shapes, or None.
    openpose18: for each OpenPose-18 joint (order of ``guidance.openpose.JOINT_NAMES``) an index into
        :meth:`keypoints` output, or None.
    keypoint_vertices: [K] int64 vertex indices appended after the J joints by :meth:`keypoints`
        (SMPL-X: nose, right eye, left eye, right ear, left ear).
    hands: PCA hand space, keys ``left_components``/``right_components`` [45, 45] (rows are
        components, in axis-angle of the 15 finger joints) and ``left_mean``/``right_mean`` [45]; None if absent.
    hand_pca: how fits give hand poses: True PCA coefficients, False 45 axis-angle values, None
        decide by size (fewer than 45 values: PCA).
    """

    name: str
    v_template: Tensor
    faces: Tensor
    shapedirs: Tensor
    posedirs: Tensor | None
    J_regressor: Tensor
    parents: Tensor
    lbs_weights: Tensor
    joint_names: tuple[str, ...]
    to_world: Tensor
    expr_dirs: Tensor | None = None
    openpose18: tuple[int, ...] | None = None
    keypoint_vertices: Tensor | None = None
    hands: dict[str, Tensor] | None = None
    hand_pca: bool | None = None

    @property
    def num_joints(self) -> int:
        """J."""
        return int(self.parents.shape[0])

    @property
    def num_vertices(self) -> int:
        """V."""
        return int(self.v_template.shape[0])

    @property
    def num_betas(self) -> int:
        """S, the number of shape coefficients."""
        return int(self.shapedirs.shape[-1])

    @property
    def num_expression(self) -> int:
        """E, the number of expression coefficients (0 without expr_dirs)."""
        return 0 if self.expr_dirs is None else int(self.expr_dirs.shape[-1])

    @property
    def device(self) -> torch.device:
        """The device of the model's tensors."""
        return self.v_template.device

    def to(self, device: torch.device | str) -> BodyModel:
        """A copy with every tensor on ``device``."""
        changes = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                changes[f.name] = v.to(device)
            elif isinstance(v, dict):
                changes[f.name] = {k: t.to(device) for k, t in v.items()}
        return dataclasses.replace(self, **changes)

    def _coeffs(self, x: Tensor | None, dirs: Tensor | None, what: str, batch: int) -> Tensor | None:
        if x is None or dirs is None:
            if x is not None and dirs is None and bool((x != 0).any()):
                raise ValueError(f"model {self.name} has no {what} blend shapes")
            return None
        x = x.to(self.v_template.dtype).reshape(batch, -1)
        if x.shape[1] > dirs.shape[-1]:
            raise ValueError(f"{x.shape[1]} {what} coefficients given, the model has {dirs.shape[-1]}")
        return x

    def shaped_vertices(self, betas: Tensor | None = None, expression: Tensor | None = None, batch: int | None = None) -> Tensor:
        """Rest vertices with shape (and expression) blend shapes.

        betas: [B, S'] (S' <= S, missing ones are zero). expression: [B, E'] (E' <= E).
        Returns [B, V, 3] metres, native frame.
        """
        b = batch or _batch_of(betas, expression)
        v = self.v_template.unsqueeze(0).expand(b, -1, -1)
        bt = self._coeffs(betas, self.shapedirs, "shape", b)
        if bt is not None:
            v = v + torch.einsum("bs,vcs->bvc", bt, self.shapedirs[..., : bt.shape[1]])
        ex = self._coeffs(expression, self.expr_dirs, "expression", b)
        if ex is not None:
            v = v + torch.einsum("be,vce->bvc", ex, self.expr_dirs[..., : ex.shape[1]])
        return v

    def rest_joints(self, betas: Tensor | None = None) -> Tensor:
        """Rest joints regressed from the shaped template.

        betas: [B, S'] or None (template). Returns [B, J, 3] metres, native frame.
        """
        v = self.shaped_vertices(betas)
        return torch.einsum("jv,bvc->bjc", self.J_regressor, v)

    def forward(
        self,
        betas: Tensor | None = None,
        pose: Tensor | None = None,
        transl: Tensor | None = None,
        scale: Tensor | float | None = None,
        expression: Tensor | None = None,
    ) -> BodyOutput:
        """Pose the body: ``v = scale * LBS(T + P) + transl`` (module docstring).

        betas: [B, S'] shape coefficients (S' <= S, zero-padded). pose: [B, J, 3] axis-angle local
        rotations in radians (row 0 = global orient, about the root's rest joint), or [B, J, 3, 3]
        rotation matrices. transl: [B, 3] metres. scale: [B] or [B, 1] (or a float) uniform scale
        about the native origin, applied after skinning and before transl. expression: [B, E'].
        Missing inputs are zero (scale one). Returns a :class:`BodyOutput`.
        """
        b = _batch_of(betas, pose, transl, expression, scale if isinstance(scale, Tensor) and scale.dim() > 0 else None)
        dtype, dev = self.v_template.dtype, self.v_template.device
        J = self.num_joints
        rest = self.shaped_vertices(betas, expression, batch=b)
        joints0 = torch.einsum("jv,bvc->bjc", self.J_regressor, rest)
        if pose is None:
            rot = torch.eye(3, dtype=dtype, device=dev).expand(b, J, 3, 3)
        elif pose.shape[-2:] == (3, 3):
            rot = pose.to(dtype).reshape(b, J, 3, 3)
        else:
            if pose.numel() != b * J * 3:
                raise ValueError(f"pose has {pose.numel() // max(b, 1)} values per body, model {self.name} needs {J}x3")
            rot = batch_rodrigues(pose.to(dtype).reshape(b, J, 3))
        if self.posedirs is not None and pose is not None:
            feat = (rot[:, 1:] - torch.eye(3, dtype=dtype, device=dev)).reshape(b, -1)
            offsets = (feat @ self.posedirs).reshape(b, -1, 3)
        else:
            offsets = torch.zeros_like(rest)
        joints, A = rigid_transforms(rot, joints0, self.parents)
        if scale is not None or transl is not None:
            s = torch.ones(b, dtype=dtype, device=dev) if scale is None else torch.as_tensor(scale, dtype=dtype, device=dev)
            s = s.reshape(-1).expand(b)
            t = torch.zeros(b, 3, dtype=dtype, device=dev) if transl is None else transl.to(dtype).reshape(b, 3)
            top = torch.cat([A[..., :3, :3] * s[:, None, None, None], (A[..., :3, 3] * s[:, None, None] + t[:, None])[..., None]], -1)
            A = torch.cat([top, A[..., 3:, :]], -2)
            joints = joints * s[:, None, None] + t[:, None]
        verts = skin_points(rest + offsets, self.lbs_weights, A)
        return BodyOutput(vertices=verts, joints=joints, rest_vertices=rest, rest_joints=joints0, transforms=A, pose_offsets=offsets)

    __call__ = forward

    def keypoints(self, out: BodyOutput) -> Tensor:
        """Joints then keypoint vertices of a posed body.

        out: a :class:`BodyOutput` of this model. Returns [B, J + K, 3] (K = len(keypoint_vertices), 0 if None),
        same frame as ``out``; index it with :attr:`openpose18` for OpenPose-18 keypoints.
        """
        if self.keypoint_vertices is None:
            return out.joints
        return torch.cat([out.joints, out.vertices[:, self.keypoint_vertices]], 1)

    def openpose_keypoints(self, out: BodyOutput) -> Tensor:
        """OpenPose-18 keypoints [B, 18, 3] (same frame as ``out``); needs :attr:`openpose18`."""
        if self.openpose18 is None:
            raise ValueError(f"model {self.name} has no OpenPose-18 mapping")
        return self.keypoints(out)[:, list(self.openpose18)]
