"""Real spherical harmonics for view-dependent Gaussian colour (degrees 0-3).

Basis order, constants and signs are those of 3D Gaussian Splatting and gsplat (so SH
coefficients trained with either, or read from a 3DGS PLY, give the same colours here):
index ``k = l * (l + 1) + m`` for ``l = 0..3``, ``m = -l..l``, with the first-order basis
``(-C1 y, C1 z, -C1 x)``. Directions are world-space directions *from the camera centre to
the Gaussian* (normalised here). The renderers add 0.5 to the SH sum and clamp at 0, as 3DGS
does, so a colour ``c`` is stored as DC coefficient ``(c - 0.5) / C0`` (:func:`rgb_to_sh`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SH_C0", "num_sh_bases", "sh_basis", "eval_sh", "rgb_to_sh", "sh_to_rgb"]

SH_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per channel for ``degree`` (1, 4, 9, 16)."""
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis functions at unit directions.

    Args:
        degree: 0..3.
        dirs: [..., 3] unit directions (not normalised here).

    Returns:
        [..., (degree + 1) ** 2] basis values, 3DGS order and signs.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _C2[0] * x * y,
            _C2[1] * y * z,
            _C2[2] * (2.0 * zz - xx - yy),
            _C2[3] * x * z,
            _C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            _C3[0] * y * (3.0 * xx - yy),
            _C3[1] * x * y * z,
            _C3[2] * y * (4.0 * zz - xx - yy),
            _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            _C3[4] * x * (4.0 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Raw SH colour sum (no +0.5 offset, no clamp), as gsplat's ``spherical_harmonics``.

    Args:
        degree: SH degree to use, 0..3; only the first ``(degree + 1) ** 2`` coefficients
            are read (the rest may be present and are ignored, as in gsplat).
        dirs: [..., 3] view directions (camera centre -> Gaussian), any length (normalised).
        coeffs: [..., K, C] coefficients with ``K >= (degree + 1) ** 2``.

    Returns:
        [..., C] the sum of basis * coefficient.
    """
    n = num_sh_bases(degree)
    if coeffs.shape[-2] < n:
        raise ValueError(f"SH degree {degree} needs {n} coefficients per channel, got {coeffs.shape[-2]}")
    d = torch.nn.functional.normalize(dirs, dim=-1)
    basis = sh_basis(degree, d)  # [..., n]
    return (basis[..., None] * coeffs[..., :n, :]).sum(dim=-2)


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """DC coefficient [..., C] that renders as colour ``rgb`` [..., C] (inverse of :func:`sh_to_rgb`)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(dc: Tensor) -> Tensor:
    """Colour [..., C] of DC coefficient ``dc`` [..., C] (before the renderer's clamp at 0)."""
    return dc * SH_C0 + 0.5
