"""Training-only content-dependence tools: feature-statistics swap (MixStyle) and the adversarial probes.

``swap_statistics(x, partner, weight)``: x (B, C, ...) re-styled with a mix of its own and its batch
partner's channel mean/std; ``channel_statistics(x)``: (B, 2C) mean and std over all but B, C.
"""

from __future__ import annotations

import torch
from torch import nn


def channel_statistics(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over every dimension after the channels, kept broadcastable: (B, C, 1, ...)."""
    dims = tuple(range(2, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    std = (x.var(dim=dims, keepdim=True, unbiased=False) + eps).sqrt()
    return mean, std


def swap_statistics(x: torch.Tensor, partner: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """MixStyle: normalise x, then re-style with weight * own + (1 - weight) * partner statistics.

    partner (B,) indexes the batch; weight (B,) in [0, 1]. Statistics are detached, as in MixStyle.
    """
    mean, std = channel_statistics(x)
    mean, std = mean.detach(), std.detach()
    w = weight.reshape((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)
    mixed_mean = w * mean + (1 - w) * mean[partner]
    mixed_std = w * std + (1 - w) * std[partner]
    return (x - mean) / std * mixed_std + mixed_mean


class StatisticsProbe(nn.Module):
    """An adversarial head that predicts the label from detached channel statistics (B, C, ...) -> (B, K).

    It trains only itself: its accuracy tells how much the label leaks through content statistics.
    """

    def __init__(self, channels: int, num_classes: int = 2) -> None:
        super().__init__()
        self.head = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = channel_statistics(x.detach())
        return self.head(torch.cat([mean.flatten(1), std.flatten(1)], dim=1))
