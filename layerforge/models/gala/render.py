"""Image operations of GALA's losses (the renders themselves: :mod:`layerforge.renderers.layers`)."""

from __future__ import annotations

import torch
from torch import Tensor


def min_pool(x: Tensor, size: int) -> Tensor:
    """[B, H, W] or [B, H, W, C] erosion by a ``size`` square (GALA's ``-maxpool(-x)``)."""
    return -max_pool(-x, size)


def max_pool(x: Tensor, size: int) -> Tensor:
    """[B, H, W] or [B, H, W, C] dilation by a ``size`` square."""
    squeeze = x.dim() == 3
    y = x[..., None] if squeeze else x
    y = torch.nn.functional.max_pool2d(y.permute(0, 3, 1, 2), size, stride=1, padding=size // 2).permute(0, 2, 3, 1)
    return y[..., 0] if squeeze else y
