"""Multi-modal classification module: pooled visual and audio features and three bias-free heads.

forward(video (B, C, T, H, W), audio (B, C, L)) -> (visual (B, K), audio (B, K), clip (B, K)); the
pooled features are returned by ``features`` and can be re-paired with ``clip_logits`` (used for the
audio-visual mismatch pairs in training).
"""

from __future__ import annotations

import torch
from torch import nn


class ClassificationModule(nn.Module):
    """forward(video (B, C, T, H, W), audio (B, C, L)) -> (visual, audio, clip) logits, each (B, num_classes).

    Depthwise Conv3d 3x3x3 / Conv1d(audio_kernel) then global averages give f_v, f_a (B, C); bias-free heads
    read f_v, f_a and their concatenation (B, 2C).
    """

    def __init__(self, channels: int, num_classes: int = 2, audio_kernel: int = 31) -> None:
        super().__init__()
        self.video_pool = nn.Conv3d(channels, channels, 3, padding=1, groups=channels)
        self.audio_pool = nn.Conv1d(channels, channels, audio_kernel, padding=audio_kernel // 2, groups=channels)
        self.visual_head = nn.Linear(channels, num_classes, bias=False)
        self.audio_head = nn.Linear(channels, num_classes, bias=False)
        self.clip_head = nn.Linear(2 * channels, num_classes, bias=False)

    def features(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features f_v (B, C) and f_a (B, C)."""
        return self.video_pool(video).mean(dim=(2, 3, 4)), self.audio_pool(audio).mean(dim=2)

    def clip_logits(self, visual_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        return self.clip_head(torch.cat([visual_features, audio_features], dim=1))

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f_v, f_a = self.features(video, audio)
        return self.visual_head(f_v), self.audio_head(f_a), self.clip_logits(f_v, f_a)
