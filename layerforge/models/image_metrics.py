"""Image metrics shared by the view-synthesis methods (UDC-NeRF, DP-Recon, LayerPano3D).

Images are float tensors [..., H, W, C] in [0, 1] (linear, as everywhere in code; papers
report PSNR/SSIM on sRGB images, so :func:`psnr` and :func:`ssim` take what the caller gives
and the pipelines pass sRGB-encoded renders to match the papers' protocol).

- PSNR: ``-10 log10(MSE)`` over the pixels (optionally a mask), data range 1.
- SSIM: Wang et al. 2004 with a Gaussian window (11 taps, sigma 1.5, K1 0.01, K2 0.03), the
  mean over valid positions, as ``skimage.metrics.structural_similarity(gaussian_weights=True,
  use_sample_covariance=False)`` computes it (tested against it).
- mIoU: mean over classes present in the ground truth or the prediction of
  ``|pred = k and gt = k| / |pred = k or gt = k|``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11  # Wang et al. 2004
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """PSNR in dB of ``pred`` against ``target`` ([..., H, W, C] in [0, 1]); ``mask`` [..., H, W] bool.

    Returns ``inf`` for identical images and ``nan`` for an empty mask.
    """
    err = (pred.float() - target.float()) ** 2
    if mask is not None:
        m = mask.bool()
        if not bool(m.any()):
            return float("nan")
        err = err[m]
    mse = float(err.mean())
    return float("inf") if mse == 0 else float(-10.0 * torch.log10(torch.tensor(mse)))


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_tensor(pred: Tensor, target: Tensor, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
                padding: str = "valid") -> Tensor:
    """Mean SSIM (a differentiable 0-d tensor) of images [H, W, C] or [B, H, W, C] in [0, 1].

    ``padding="valid"``: only positions where the whole window fits count (``skimage`` crops the
    same border; the metric). ``"same"``: every pixel, the window zero-padded at the border (3DGS's
    ``ssim`` in its D-SSIM loss, ``F.conv2d(..., padding=window // 2)``).
    """
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    x = pred.reshape(-1, *pred.shape[-3:]).permute(0, 3, 1, 2)
    y = target.reshape(-1, *target.shape[-3:]).permute(0, 3, 1, 2).to(x.dtype)
    c = x.shape[1]
    g = _gaussian_window(window, sigma, x.dtype, x.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)
    pad = window // 2 if padding == "same" else 0

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=c, padding=pad)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()


def ssim(pred: Tensor, target: Tensor, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> float:
    """Mean SSIM of images [H, W, C] or [B, H, W, C] in [0, 1] (channels averaged).

    Only positions where the whole window fits count (``skimage`` crops the same border).
    """
    return float(ssim_tensor(pred.float(), target.float(), window, sigma))


def mean_iou(pred: Tensor, target: Tensor, ignore: int = -1) -> float:
    """mIoU of integer label maps [..., H, W] over the classes either of them has (``ignore`` skipped)."""
    valid = target != ignore
    p, t = pred[valid], target[valid]
    ious = []
    for k in torch.unique(torch.cat([p, t])).tolist():
        union = ((p == k) | (t == k)).sum()
        ious.append(float(((p == k) & (t == k)).sum()) / float(union))
    return float(sum(ious) / len(ious)) if ious else float("nan")


def mask_iou(pred: Tensor, target: Tensor) -> float:
    """IoU of two boolean masks (``nan`` when both are empty)."""
    p, t = pred.bool(), target.bool()
    union = float((p | t).sum())
    return float((p & t).sum()) / union if union else float("nan")
