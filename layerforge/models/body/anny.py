"""Anny (NAVER LABS, Apache-2.0 code, CC0 MakeHuman data) as a :class:`BodyModel`.

Anny is a parametric human body: 13,718 vertices, 27,420 triangles, 104 bones (the pruned "anny"
rig), Z-up, metres, the person facing -Y with their left at +X, which is the layerforge world
frame, so ``to_world`` is the identity. The PyPI package ``anny`` is an optional dependency: it is
imported lazily here. Its first build (48 s on an idle 2-core machine, 85 s under load, 2.2 GB
peak memory) writes a ~790 MB cache; later loads take ~0.01 s (``load_anny`` ~1.5 s in all). Only
the ``build_compact_model_data_*.safetensors`` file (49 MB) is read once built: the two
intermediate files (``load_data_*``, ``build_model_data_*``) may be deleted.

What the conversion does (see ``load_anny``):

- ``v_template``: anny's rest mesh for ``phenotype`` (anny's own ``rest_vertices``), exactly.
- ``shapedirs`` [V, 3, 6]: anny's phenotype -> mesh map is a nonlinear (piecewise multilinear)
  blend-shape interpolation. We linearise it about ``phenotype`` by central finite differences:
  column s is d(vertices)/d(phenotype[ANNY_SHAPE_PARAMS[s]]) in metres per unit of that phenotype
  (each phenotype lives in [0, 1]), so ``betas[s] = phenotype_s - phenotype0_s``. Exact at
  betas = 0, first-order elsewhere (at a kink of anny's interpolation the two one-sided slopes
  are averaged).
- joints: bone i is joint i, and the joint is the bone's *head*. ``J_regressor`` [J, V] is fitted
  per bone on the 200 vertices nearest its head so that ``J_regressor @ (v_template + shapedirs @
  betas)`` equals anny's heads (linearised like the mesh) for every betas, rows sum to 1 (exact in
  float64; ~1e-5 m in float32: the rows have signed weights up to ~4, since anny's heads move with
  the phenotype in ways no local vertex mean does).
- ``lbs_weights``: anny's per-vertex bone weights (up to 9 bones per vertex, 2.5 on average),
  densified to [V, 104], rows normalised.
- posing: our LBS rotates joint c by a local rotation ``Rot_c`` about its rest head, in the
  world-aligned rest frame (SMPL-style). Anny's default "local-ref" deltas ``D_c`` are relative to
  its *reference* bone orientations ``U_c``, which differ from the shape's rest orientations
  ``R_c`` by up to ~6 degrees (so anny's identity pose is not its rest mesh). With
  ``A_c = U_c R_c^T`` the two are related by ``D_c = A_parent Rot_c A_c^T`` (root:
  ``D_0 = U_0 Rot_0 R_0 U_0^T``, ``d_0 = U_0 h_0``); :func:`anny_deltas_from_rotations` builds
  anny's pose tensor from ours.
- ``openpose18``: bone heads for neck/shoulders/elbows/wrists/hips/knees/ankles and five
  ``keypoint_vertices`` (nose, right eye, left eye, right ear, left ear): the vertex nearest each of
  anny's own COCO keypoints (``anny.KeypointsRegressor.coco``) on the rest mesh.
- ``posedirs``, ``expr_dirs`` and ``hands`` are None (anny has no pose correctives; its facial
  actions and hand PCA are not converted).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import Tensor

if TYPE_CHECKING:
    from layerforge.models.body.model import BodyModel

#: anny's phenotype parameters, in ``shapedirs`` column order. Each is in [0, 1], default 0.5.
ANNY_SHAPE_PARAMS: tuple[str, ...] = ("gender", "age", "muscle", "weight", "height", "proportions")
#: the finite-difference half step (phenotype units) used to linearise the shape.
FD_STEP = 0.05
#: vertices per joint-regressor row.
REGRESSOR_SUPPORT = 200

# OpenPose-18 joint -> anny bone whose head is the keypoint, or "@<coco label>" for a keypoint vertex.
_OPENPOSE18_SOURCES: tuple[str, ...] = (
    "@nose", "neck01", "upperarm01.R", "lowerarm01.R", "wrist.R", "upperarm01.L", "lowerarm01.L",
    "wrist.L", "upperleg01.R", "lowerleg01.R", "foot.R", "upperleg01.L", "lowerleg01.L", "foot.L",
    "@right_eye", "@left_eye", "@right_ear", "@left_ear",
)
_KEYPOINT_LABELS: tuple[str, ...] = ("nose", "right_eye", "left_eye", "right_ear", "left_ear")


def _import_anny() -> Any:
    try:
        import anny  # noqa: PLC0415
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the Anny body model needs the optional package `anny` (pip install anny; "
            "Apache-2.0 code, CC0 data)"
        ) from err
    return anny


def default_cache_dir() -> Path:
    """Where anny's build cache goes: $ANNY_CACHE_DIR, else ``build/anny`` of this checkout.

    Outside a source checkout (no pyproject.toml three levels above the package) it falls back to
    anny's own default, ``~/.cache/anny``.
    """
    env = os.environ.get("ANNY_CACHE_DIR")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").exists():
        return root / "build" / "anny"
    return Path.home() / ".cache" / "anny"


@contextmanager
def _anny_cache(path: Path) -> Iterator[None]:
    import anny.paths  # noqa: PLC0415

    old = anny.paths.get_anny_cache_path()
    anny.paths.set_anny_cache_path(path)
    try:
        yield
    finally:
        anny.paths.set_anny_cache_path(old)


def build_anny(*, cache_dir: str | os.PathLike | None = None) -> Any:
    """anny's own model (``anny.Anny``, float64, CPU) with its cache under ``cache_dir``.

    Uses anny's dense torch LBS (``skinning_method="lbs"``), so NVIDIA Warp is never imported
    (Warp would otherwise JIT-compile kernels into ``~/.cache/warp``).
    """
    anny = _import_anny()
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    with _anny_cache(path):
        return anny.Anny(skinning_method="lbs")


def _phenotype_values(phenotype: dict[str, float] | None) -> dict[str, float]:
    values = dict.fromkeys(ANNY_SHAPE_PARAMS, 0.5)
    for key, value in (phenotype or {}).items():
        if key not in values:
            raise ValueError(f"unknown anny phenotype {key!r}; known: {', '.join(ANNY_SHAPE_PARAMS)}")
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"anny phenotype {key}={value} is outside [0, 1]")
        values[key] = value
    return values


def anny_rest(model: Any, phenotypes: Tensor) -> dict[str, Tensor]:
    """anny's rest state for a batch of phenotypes.

    phenotypes: [B, 6] in ANNY_SHAPE_PARAMS order. Returns anny's ``rest_vertices`` [B, V, 3],
    ``rest_bone_heads`` [B, J, 3] and ``rest_bone_poses`` [B, J, 4, 4] (float64).
    """
    kwargs = {k: phenotypes[:, i].to(model.dtype) for i, k in enumerate(ANNY_SHAPE_PARAMS)}
    with torch.no_grad():
        out = model(pose_parameters=None, phenotype_kwargs=kwargs)
    return {k: out[k] for k in ("rest_vertices", "rest_bone_heads", "rest_bone_poses")}


def _fit_regressor(v0: Tensor, dirs: Tensor, heads0: Tensor, dheads: Tensor, support: int) -> Tensor:
    """[J, V] rows r_j, each on the ``support`` vertices nearest head j, with sum(r_j) = 1,
    r_j @ v0 = heads0[j] and r_j @ dirs[..., s] = dheads[j, :, s] (minimum-norm change from the
    uniform mean of those vertices). All float64."""
    V, J, S = v0.shape[0], heads0.shape[0], dirs.shape[-1]
    near = torch.cdist(heads0, v0).topk(support, largest=False).indices  # [J, K]
    pos = v0[near].transpose(1, 2)  # [J, 3, K]
    shp = dirs[near].permute(0, 3, 2, 1).reshape(J, 3 * S, support)  # [J, 3S, K]
    A = torch.cat([pos, shp, torch.ones(J, 1, support, dtype=v0.dtype)], 1)  # [J, 3 + 3S + 1, K]
    b = torch.cat([heads0, dheads.permute(0, 2, 1).reshape(J, 3 * S), torch.ones(J, 1, dtype=v0.dtype)], 1)
    r0 = torch.full((J, support), 1.0 / support, dtype=v0.dtype)
    # minimum-norm correction r - r0 = A^T (A A^T)^-1 (b - A r0)
    res = b - (A @ r0[..., None])[..., 0]
    y = torch.linalg.lstsq(A @ A.transpose(1, 2), res[..., None]).solution
    r = r0 + (A.transpose(1, 2) @ y)[..., 0]
    reg = torch.zeros(J, V, dtype=v0.dtype)
    reg.scatter_(1, near, r)
    return reg


def load_anny(
    *,
    cache_dir: str | os.PathLike | None = None,
    phenotype: dict[str, float] | None = None,
    device: str = "cpu",
) -> BodyModel:
    """Anny's body as a :class:`~layerforge.models.body.model.BodyModel` (module docstring).

    cache_dir: anny's build cache (default :func:`default_cache_dir`, i.e. $ANNY_CACHE_DIR or
        ``build/anny``). phenotype: values in [0, 1] for any of ANNY_SHAPE_PARAMS (others 0.5).
    device: where the returned tensors live (float32). ``shapedirs`` has 6 columns, the
    phenotype offsets from ``phenotype`` in ANNY_SHAPE_PARAMS order.
    """
    from layerforge.models.body.model import BodyModel  # noqa: PLC0415

    anny = _import_anny()
    model = build_anny(cache_dir=cache_dir)
    values = _phenotype_values(phenotype)
    p0 = torch.tensor([values[k] for k in ANNY_SHAPE_PARAMS], dtype=torch.float64)
    S = len(ANNY_SHAPE_PARAMS)
    hi = (p0 + FD_STEP).clamp(max=1.0)
    lo = (p0 - FD_STEP).clamp(min=0.0)
    batch = [p0]
    for s in range(S):
        for end in (hi, lo):
            p = p0.clone()
            p[s] = end[s]
            batch.append(p)
    rest = anny_rest(model, torch.stack(batch))
    verts, heads = rest["rest_vertices"], rest["rest_bone_heads"]
    v0, heads0 = verts[0], heads[0]
    span = (hi - lo).view(1, 1, S)
    dirs = (verts[1::2] - verts[2::2]).permute(1, 2, 0) / span  # [V, 3, S]
    dheads = (heads[1::2] - heads[2::2]).permute(1, 2, 0) / span  # [J, 3, S]

    J = model.bone_count
    regressor = _fit_regressor(v0, dirs, heads0, dheads, REGRESSOR_SUPPORT)
    weights = torch.zeros(v0.shape[0], J, dtype=torch.float64)
    weights.scatter_add_(1, model.vertex_bone_indices, model.vertex_bone_weights.to(torch.float64))
    weights = weights / weights.sum(1, keepdim=True)
    parents = torch.tensor(model.bone_parents, dtype=torch.int64)
    if not all(int(p) < j for j, p in enumerate(parents.tolist())):
        raise ValueError("anny's bone order does not put parents before children")

    # Keypoint vertices: nearest rest vertex to each of anny's COCO face keypoints.
    coco = anny.KeypointsRegressor.coco(model, labels=list(_KEYPOINT_LABELS))
    with torch.no_grad():
        kp = coco({"vertices": v0[None]})[0]
    keypoint_vertices = torch.cdist(kp, v0).argmin(1)
    names = tuple(model.bone_labels)
    openpose = tuple(
        J + _KEYPOINT_LABELS.index(src[1:]) if src.startswith("@") else names.index(src)
        for src in _OPENPOSE18_SOURCES
    )
    tag = ",".join(f"{k}={values[k]:g}" for k in ANNY_SHAPE_PARAMS if values[k] != 0.5)
    f32 = dict(dtype=torch.float32, device=device)
    return BodyModel(
        name="anny" + (f"[{tag}]" if tag else ""),
        v_template=v0.to(**f32),
        faces=model.faces.to(torch.int64).to(device),
        shapedirs=dirs.to(**f32),
        posedirs=None,
        J_regressor=regressor.to(**f32),
        parents=parents.to(device),
        lbs_weights=weights.to(**f32),
        joint_names=names,
        to_world=torch.eye(4, **f32),
        expr_dirs=None,
        openpose18=openpose,
        keypoint_vertices=keypoint_vertices.to(device),
        hands=None,
    )


def anny_deltas_from_rotations(model: Any, rest_bone_poses: Tensor, rotations: Tensor) -> Tensor:
    """anny "local-ref" pose parameters equivalent to our local joint rotations.

    model: ``anny.Anny`` (:func:`build_anny`). rest_bone_poses: [B, J, 4, 4] anny's rest bone poses
    for the shape (:func:`anny_rest`). rotations: [B, J, 3, 3] our rotations (row 0: the root's,
    about its rest joint), as ``BodyModel.forward`` takes them. Returns [B, J, 4, 4] deltas for
    ``model(pose_parameters=..., pose_parameterization="local-ref")`` that give the same bone
    transforms, hence the same skinned mesh. Identity rotations give anny's rest mesh.
    """
    R = rest_bone_poses[..., :3, :3]
    h = rest_bone_poses[..., :3, 3]
    dtype = R.dtype
    rot = rotations.to(dtype)
    ref = model.reference_bone_orientations
    U = R if ref is None else ref.to(dtype).expand_as(R)
    A = U @ R.transpose(-1, -2)  # rest -> reference orientation, per bone
    parents = list(model.bone_parents)
    par = torch.tensor([max(int(p), 0) for p in parents])
    D = A[:, par] @ rot @ A.transpose(-1, -2)
    d = torch.zeros_like(h)
    # anny takes the root's offset rotation A_0 as I: children of the root get a translation fix.
    root_children = torch.tensor([int(p) == 0 for p in parents])
    eye = torch.eye(3, dtype=dtype)
    fix = ((A[:, :1] - eye) @ (h - h[:, :1])[..., None])[..., 0]
    d = torch.where(root_children[None, :, None], fix, d)
    D[:, 0] = U[:, 0] @ rot[:, 0] @ R[:, 0] @ U[:, 0].transpose(-1, -2)
    d[:, 0] = (U[:, 0] @ h[:, 0, :, None])[..., 0]
    out = torch.zeros(rest_bone_poses.shape, dtype=dtype)
    out[..., :3, :3] = D
    out[..., :3, 3] = d
    out[..., 3, 3] = 1.0
    return out
