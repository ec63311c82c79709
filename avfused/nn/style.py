"""Training-only content-dependence tools: feature-statistics swap (MixStyle), mismatch partners and the
adversarial probes.

``swap_statistics(x, partner, weight)``: x (B, C, ...) re-styled with a mix of its own and its batch
partner's channel mean/std; ``channel_statistics(x)``: (B, 2C) mean and std over all but B, C.
``draw_statistics_swap`` / ``random_statistics_swap``: the per-batch random swap of SingleStreamNet's
training forward; ``derangement_partner``: the clip each clip is mismatched with. The random choices are
tensors (no Python branch on a random number), so ``torch.compile(fullgraph=True)`` traces training too.
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


def draw_statistics_swap(
    batch: int, probability: float, alpha: float, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch's swap: ``apply`` () bool, True with ``probability``; ``partner`` (B,) a uniformly random
    permutation of the batch; ``weight`` (B,) i.i.d. Beta(alpha, alpha). All are drawn on every call."""
    apply = torch.rand((), device=device) < probability
    partner = torch.randperm(batch, device=device)
    concentration = torch.full((), float(alpha), device=device)
    weight = torch.distributions.Beta(concentration, concentration, validate_args=False).sample((batch,))
    return apply, partner, weight


def random_statistics_swap(
    video: torch.Tensor, audio: torch.Tensor, probability: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """With ``probability`` per batch, swap_statistics on video (B, C, ...) and audio (B, C, ...) with one
    shared draw of partners and weights; else both unchanged. Shapes are kept."""
    apply, partner, weight = draw_statistics_swap(video.shape[0], probability, alpha, video.device)
    swapped = swap_statistics(video, partner, weight), swap_statistics(audio, partner, weight)
    # torch.where, not `if apply:`, so the choice stays in the graph (exact: the unswapped branch is x itself)
    return torch.where(apply, swapped[0], video), torch.where(apply, swapped[1], audio)


def derangement_partner(batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Partners (B,) for the mismatch pairs: (i + s) mod B with one shift s uniform on 1..B-1 per batch, so
    every clip gets another clip (a derangement). Needs B >= 2."""
    shift = torch.randint(1, batch, (), device=device)
    return (torch.arange(batch, device=device) + shift) % batch


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
