"""The collaborative audio-visual learning (CAVL) block: VPM -> BN -> SAAVM -> BN.

forward(video (B, C, T, H, W), audio (B, C, L)) -> (video', audio'), same shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from avfused.nn.saavm import SAAVM
from avfused.nn.vpm import VPM


class CAVLBlock(nn.Module):
    """VPM -> BN -> SAAVM -> BN on a video and an audio feature map of one width.

    forward(video (B, C, T, H, W), audio (B, C, L)) -> (video (B, C, T, H, W), audio (B, C, L)).

    Args:
        channels: C. frames: T. num_tokens: the SAAVM's, ``avfused.nn.token_count(T, H, W, window)``.
        window, audio_kernel, layer_scale_init: as in SAAVM. mlp_ratio: the VPM's conv-MLP expansion.
        drop_path: stochastic-depth rate of the VPM's two residual branches (training only).
        backend: "auto", "torch", "triton" or "cuda" for the block's fused ops (large-kernel attention,
            conv MLP, joint token attention); each submodule's ``backend`` attribute can also be set alone.
    """

    def __init__(
        self,
        channels: int,
        frames: int,
        num_tokens: int,
        window: int = 7,
        mlp_ratio: int = 4,
        audio_kernel: int = 33,
        layer_scale_init: float = 1e-2,
        drop_path: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.vpm = VPM(channels, frames, mlp_ratio, layer_scale_init, drop_path, backend)
        self.vpm_norm = nn.BatchNorm3d(channels)
        self.saavm = SAAVM(channels, frames, num_tokens, window, audio_kernel, layer_scale_init, backend)
        self.video_norm = nn.BatchNorm3d(channels)
        self.audio_norm = nn.BatchNorm1d(channels)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        video = self.vpm_norm(self.vpm(video))
        video, audio = self.saavm(video, audio)
        return self.video_norm(video), self.audio_norm(audio)
