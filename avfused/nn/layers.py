"""Small shared layers: stochastic depth and per-channel layer scale."""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: zero a whole residual branch per sample with probability ``p`` in training.

    forward(x (N, ...), group) -> same shape; the identity in eval mode.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor, group: int = 1) -> torch.Tensor:
        """``group`` consecutive rows form one sample (the frames of one clip share a decision)."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0] // group,) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.repeat_interleave(group, dim=0) / keep


class LayerScale(nn.Module):
    """Multiply channel dimension 1 by a learnable vector initialised small (1e-2 by default).

    forward(x (B, C, ...)) -> same shape.
    """

    def __init__(self, channels: int, init: float = 1e-2) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.reshape((1, -1) + (1,) * (x.dim() - 2))
