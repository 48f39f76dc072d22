"""3D Gaussian Splatting PLY files in the Inria layout, and Gaussians placed in the world.

Layout (one ``vertex`` element, all float32, binary little-endian), as written by the
reference 3DGS code and read by every splat viewer::

    x y z  nx ny nz  f_dc_0..2  f_rest_0..f_rest_{3(K-1)-1}  opacity  scale_0..2  rot_0..3

``f_rest`` is channel-major (all red coefficients of degree >= 1, then green, then blue),
``opacity`` is the logit, ``scale_*`` are log standard deviations, ``rot_*`` a wxyz
quaternion. Files are written in world coordinates (metres, +Z up), never in a training
frame, and with one numpy structured array (no per-Gaussian Python loop).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from layerforge.assets.atomic import atomic_path
from layerforge.assets.types import GaussianCloud, Part, sh_degree_for
from layerforge.errors import InputError

_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def inria_properties(sh_degree: int) -> list[str]:
    """Property names of the Inria layout for ``sh_degree``, in file order."""
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_splat_ply(path: str | os.PathLike[str], cloud: GaussianCloud, transform: np.ndarray | None = None) -> Path:
    """Write ``cloud`` as an Inria-layout 3DGS PLY, atomically.

    Args:
        path: destination ``.ply``.
        cloud: Gaussians in their local frame.
        transform: optional [4, 4] local-to-world matrix baked into the file (see
            :func:`transform_gaussians`), so the file is in world coordinates.
    """
    if transform is not None:
        cloud = transform_gaussians(cloud, transform)
    n, k = len(cloud), cloud.sh.shape[1]
    names = inria_properties(cloud.sh_degree)
    table = np.zeros(n, dtype=np.dtype([(name, "<f4") for name in names]))
    flat = table.view("<f4").reshape(n, len(names))
    flat[:, 0:3] = cloud.means
    flat[:, 6:9] = cloud.sh[:, 0, :]
    rest = 3 * (k - 1)
    # [N, K-1, 3] -> [N, 3, K-1]: channel-major, as the reference implementation flattens it
    flat[:, 9 : 9 + rest] = cloud.sh[:, 1:, :].transpose(0, 2, 1).reshape(n, rest)
    flat[:, 9 + rest] = cloud.opacity_logits
    flat[:, 10 + rest : 13 + rest] = cloud.log_scales
    flat[:, 13 + rest : 17 + rest] = cloud.quats
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in names] + ["end_header"]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(("\n".join(header) + "\n").encode("ascii"))
            f.write(table.tobytes())
    return Path(path)


def read_splat_ply(path: str | os.PathLike[str]) -> GaussianCloud:
    """Read a 3DGS PLY in the Inria layout (from any tool: any property order, ascii or binary).

    Returns a :class:`GaussianCloud`; its SH degree follows from the number of ``f_rest_*``.
    """
    from plyfile import PlyData, PlyParseError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file", "check the path")
    try:
        ply = PlyData.read(str(path))
    except (PlyParseError, ValueError, EOFError, OSError) as exc:
        raise InputError(f"{path}: not a readable PLY ({exc})", "re-export it as a binary PLY") from None
    if "vertex" not in ply:
        raise InputError(f"{path}: PLY has no vertex element", "export the Gaussians as the 'vertex' element")
    v = ply["vertex"].data
    have = set(v.dtype.names or ())
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [p for p in need if p not in have]
    if missing:
        raise InputError(f"{path}: not a 3DGS PLY, missing properties {missing}", "export it in the Inria 3DGS layout")
    n = len(v)
    if n == 0:
        raise InputError(f"{path}: PLY has no Gaussians", "export a non-empty splat")

    def cols(names: list[str]) -> np.ndarray:
        return np.stack([np.asarray(v[c], np.float32) for c in names], axis=1) if names else np.zeros((n, 0), np.float32)

    rest_names = sorted((c for c in have if c.startswith("f_rest_")), key=lambda c: int(c[7:]))
    if len(rest_names) % 3:
        raise InputError(f"{path}: {len(rest_names)} f_rest properties is not a multiple of 3", "export RGB SH coefficients")
    k = len(rest_names) // 3 + 1
    sh_degree_for(k)
    sh = np.empty((n, k, 3), np.float32)
    sh[:, 0] = cols(["f_dc_0", "f_dc_1", "f_dc_2"])
    sh[:, 1:] = cols(rest_names).reshape(n, 3, k - 1).transpose(0, 2, 1)
    means = cols(["x", "y", "z"])
    if not np.isfinite(means).all():
        raise InputError(f"{path}: Gaussian positions contain NaN/Inf", "re-export the splat from a finite model")
    return GaussianCloud(
        means=means,
        quats=cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        log_scales=cols(["scale_0", "scale_1", "scale_2"]),
        opacity_logits=np.asarray(v["opacity"], np.float32),
        sh=sh,
    )


def merge_gaussian_parts(parts: list[Part]) -> GaussianCloud:
    """Gaussian-cloud parts placed in the world and concatenated (SH padded to the highest degree)."""
    clouds = [transform_gaussians(p.geometry, p.transform) for p in parts if isinstance(p.geometry, GaussianCloud)]
    if not clouds:
        raise InputError("no Gaussian parts to merge", "pass parts whose geometry is a GaussianCloud")
    k = max(c.sh.shape[1] for c in clouds)
    sh = [np.concatenate([c.sh, np.zeros((len(c), k - c.sh.shape[1], 3), np.float32)], 1) for c in clouds]
    return GaussianCloud(
        np.concatenate([c.means for c in clouds]),
        np.concatenate([c.quats for c in clouds]),
        np.concatenate([c.log_scales for c in clouds]),
        np.concatenate([c.opacity_logits for c in clouds]),
        np.concatenate(sh),
    )


def transform_gaussians(cloud: GaussianCloud, matrix: np.ndarray) -> GaussianCloud:
    """``cloud`` with the affine ``matrix`` ([4, 4], column vectors) applied.

    A rotation + uniform scale (+ translation) keeps each Gaussian's axes and rotates its
    quaternion; any other linear part is applied to the covariances (re-diagonalised).
    View-dependent colour follows: SH bands are rotated by the rotation part (degree <= 3).
    """
    m = np.asarray(matrix, np.float64)
    if np.allclose(m, np.eye(4), atol=1e-7):
        return cloud
    a, t = m[:3, :3], m[:3, 3]
    det = np.linalg.det(a)
    if abs(det) < 1e-12:
        raise InputError("transform is singular", "pass an invertible part transform")
    u, _, vt = np.linalg.svd(a)
    rot = u @ vt
    if np.linalg.det(rot) < 0:
        raise InputError("transform mirrors the Gaussians", "use a transform without reflection")
    means = cloud.means.astype(np.float64) @ a.T + t
    s = np.cbrt(det)
    if np.allclose(a, s * rot, atol=1e-6 * max(1.0, abs(s))):
        quats = _quat_mul(_quat_from_matrix(rot), cloud.quats.astype(np.float64))
        log_scales = cloud.log_scales.astype(np.float64) + np.log(s)
    else:
        r = _matrix_from_quat(cloud.quats.astype(np.float64))
        sc = np.exp(2.0 * cloud.log_scales.astype(np.float64))
        cov = np.einsum("ij,njk,nk,nlk,ml->nim", a, r, sc, r, a)
        evals, evecs = np.linalg.eigh(cov)
        evecs[np.linalg.det(evecs) < 0, :, 0] *= -1
        quats = _quat_from_matrix(evecs)
        log_scales = 0.5 * np.log(np.maximum(evals, 1e-30))
    return GaussianCloud(means, quats, log_scales, cloud.opacity_logits, rotate_sh(cloud.sh, rot))


def sh_basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    """Real SH basis in the 3DGS convention. dirs: [M, 3] unit vectors -> [M, (degree+1)^2]."""
    if degree > 3:
        raise InputError(f"SH degree {degree} > 3 cannot be rotated", "bake the transform before raising the degree")
    x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    xx, yy, zz = x * x, y * y, z * z
    cols = [np.full_like(x, 0.28209479177387814)]
    if degree >= 1:
        cols += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        cols += [_C2[0] * x * y, _C2[1] * y * z, _C2[2] * (2 * zz - xx - yy), _C2[3] * x * z, _C2[4] * (xx - yy)]
    if degree >= 3:
        cols += [_C3[0] * y * (3 * xx - yy), _C3[1] * x * y * z, _C3[2] * y * (4 * zz - xx - yy),
                 _C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _C3[4] * x * (4 * zz - xx - yy),
                 _C3[5] * z * (xx - yy), _C3[6] * x * (xx - 3 * yy)]
    return np.stack(cols, axis=1)


def rotate_sh(sh: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """SH coefficients [N, K, 3] of colour(d), re-expressed for the rotated field colour(rot^T d)."""
    degree = sh_degree_for(sh.shape[1])
    if degree == 0 or np.allclose(rot, np.eye(3), atol=1e-9):
        return sh
    # each band is rotation-invariant, so a least-squares fit on sample directions is exact
    rng = np.random.default_rng(0)
    d = rng.normal(size=(64, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    y_new = sh_basis(d, degree)
    y_old = sh_basis(d @ rot, degree)  # rows: rot^T d
    coef, *_ = np.linalg.lstsq(y_new, y_old, rcond=None)  # y_old ~= y_new @ coef
    return np.einsum("kj,njc->nkc", coef, sh.astype(np.float64))


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = np.moveaxis(np.broadcast_to(a, b.shape), -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def _matrix_from_quat(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _quat_from_matrix(r: np.ndarray) -> np.ndarray:
    """wxyz quaternion(s) of rotation matrix/matrices [..., 3, 3] (robust branch per element)."""
    r = np.asarray(r, np.float64)
    m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    # 4w^2, 4x^2, 4y^2, 4z^2: pick the largest for stability
    cand = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    k = np.argmax(cand, -1)
    s = np.sqrt(np.maximum(np.take_along_axis(cand, k[..., None], -1)[..., 0], 1e-30))
    w = np.stack([s * s, r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    x = np.stack([r[..., 2, 1] - r[..., 1, 2], s * s, r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0]], -1)
    y = np.stack([r[..., 0, 2] - r[..., 2, 0], r[..., 0, 1] + r[..., 1, 0], s * s, r[..., 1, 2] + r[..., 2, 1]], -1)
    z = np.stack([r[..., 1, 0] - r[..., 0, 1], r[..., 0, 2] + r[..., 2, 0], r[..., 1, 2] + r[..., 2, 1], s * s], -1)
    q = np.choose(k[..., None], [w, x, y, z])
    q = q / (2 * s[..., None])
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return q * np.where(q[..., :1] < 0, -1.0, 1.0)
