"""Learning-rate schedule: linear warm-up from 0 to the base rate, then linear decay to ``final`` x base.

``warmup_then_linear(step)`` is the factor applied to the base learning rate at optimizer step ``step``
(0-based); ``make_scheduler`` wraps it in a LambdaLR whose state is just its step counter.
"""

from __future__ import annotations

import torch


def warmup_linear_factor(step: int, warmup_steps: int, total_steps: int, final: float = 0.0) -> float:
    """Factor in [final, 1]: (step + 1) / warmup during warm-up, then linear down to ``final`` at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    done = min(max(step - warmup_steps, 0) / span, 1.0)
    return 1.0 - (1.0 - final) * done


def make_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, final: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_linear_factor(step, warmup_steps, total_steps, final)
    )
