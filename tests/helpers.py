"""Small shared test fixtures: a tiny config that keeps every code path but runs in milliseconds."""

import torch

from avfused import ModelConfig


def tiny_config(**overrides) -> ModelConfig:
    """Two stages, 3 frames of 30x30 (not a multiple of the 7x7 window), 0.06 s of audio, 8 sinc filters."""
    base = dict(
        widths=(4, 8),
        depths=(1, 2),
        frames=3,
        image_size=30,
        clip_seconds=0.06,
        sinc_filters=8,
        sinc_kernel_size=31,
    )
    return ModelConfig(**{**base, **overrides})


def random_batch(config: ModelConfig, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    video = torch.rand(batch, config.frames, 3, config.image_size, config.image_size)
    audio = torch.randn(batch, config.num_samples) * 0.1
    return video, audio
