"""Self-Attention based Audio-Visual Module (SAAVM): the cross-modal mixing of the CAVL block.

forward(video (B, C, T, H, W), audio (B, C, L)) -> (video', audio'), same shapes.

Each modality is squeezed to one channel and cut into tokens of ``window**2`` values: video maps in
window x window patches (zero-padded to a multiple of the window, see ModelConfig), audio pooled to one
token per frame. All tokens attend to each other in one head (``joint_token_attention``), and the
result is spread back with a 1 -> C convolution, scaled by a layer scale, and added to each modality.
"""

from __future__ import annotations

import torch
from torch import nn

from avfused import backends, reference
from avfused.errors import InputShapeError
from avfused.nn.layers import LayerScale


def token_count(frames: int, height: int, width: int, window: int = 7) -> int:
    """Tokens of one SAAVM on (H, W) video maps of ``frames`` frames: T * ceil(H/w) * ceil(W/w) video + T audio."""
    return frames * -(-height // window) * -(-width // window) + frames


class SAAVM(nn.Module):
    """Cross-modal token attention between a video and an audio feature map of the same width.

    forward(video (B, C, T, H, W), audio (B, C, L)) -> (video (B, C, T, H, W), audio (B, C, L)).

    Args:
        channels: C, the width of both inputs.
        frames: T; the audio map becomes one token per frame, so L needs no relation to T.
        num_tokens: the token count of the input size, ``token_count(frames, H, W, window)`` (it sizes
            the position embedding; another input size raises InputShapeError).
        window: video tokens are window x window patches (maps are zero-padded to a multiple).
        audio_kernel: kernel of the audio squeeze and expand convolutions (odd).
        layer_scale_init: initial scale of the residual additions.
        backend: "auto", "torch", "triton" or "cuda": who computes the joint token attention.
    """

    def __init__(
        self,
        channels: int,
        frames: int,
        num_tokens: int,
        window: int = 7,
        audio_kernel: int = 33,
        layer_scale_init: float = 1e-2,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.backend = backend
        self.frames, self.window = frames, window
        dim = window * window
        self.video_squeeze = nn.Sequential(
            nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1), groups=channels),
            nn.BatchNorm3d(channels),
            nn.ReLU(),
            nn.Conv3d(channels, 1, 1),
        )
        self.audio_squeeze = nn.Sequential(
            nn.Conv1d(channels, channels, 3, padding=1),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Conv1d(channels, 1, audio_kernel, padding=audio_kernel // 2),
        )
        self.pos = nn.Parameter(torch.zeros(num_tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.mix = nn.Linear(dim, dim)
        self.video_expand = nn.Conv3d(1, channels, (1, 3, 3), padding=(0, 1, 1))
        self.audio_expand = nn.Conv1d(1, channels, audio_kernel, padding=audio_kernel // 2)
        self.video_scale = LayerScale(channels, layer_scale_init)
        self.audio_scale = LayerScale(channels, layer_scale_init)

    def tokens(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Video and audio tokens side by side: (B, T * windows + T, window**2)."""
        video_map = self.video_squeeze(video)[:, 0]
        audio_map = self.audio_squeeze(audio)[:, 0]
        video_tokens = reference.video_to_tokens(video_map, self.window)
        audio_tokens = reference.audio_to_tokens(audio_map, self.frames, self.window * self.window)
        return torch.cat([video_tokens, audio_tokens], dim=1)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width, length = video.shape[-2], video.shape[-1], audio.shape[-1]
        tokens = self.tokens(video, audio)
        if tokens.shape[1] != self.pos.shape[0]:
            raise InputShapeError(
                f"SAAVM was built for {self.pos.shape[0]} tokens but a {height}x{width} map with "
                f"{video.shape[2]} frames makes {tokens.shape[1]}; build it with "
                "num_tokens=token_count(frames, H, W, window) for this input size"
            )
        op = backends.module_op("joint_token_attention", self, tokens.device)
        mixed = op(tokens, self.pos, self.norm.weight, self.norm.bias, self.mix.weight, self.mix.bias)
        video_tokens, audio_tokens = mixed[:, : -self.frames], mixed[:, -self.frames :]
        video_map = reference.tokens_to_video(video_tokens, self.frames, height, width, self.window)
        audio_map = reference.tokens_to_audio(audio_tokens, length)
        video = video + self.video_scale(self.video_expand(video_map[:, None]))
        audio = audio + self.audio_scale(self.audio_expand(audio_map[:, None]))
        return video, audio
