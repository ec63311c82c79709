"""Self-Attention based Audio-Visual Module (SAAVM): the cross-modal mixing of the CAVL block.

forward(video (B, C, T, H, W), audio (B, C, L)) -> (video', audio'), same shapes.

Each modality is squeezed to one channel and cut into tokens of ``window**2`` values: video maps in
window x window patches (zero-padded to a multiple of the window, see ModelConfig), audio pooled to one
token per frame. All tokens attend to each other in one head (``joint_token_attention``), and the
result is spread back with a 1 -> C convolution, scaled by a layer scale, and added to each modality.

Where the module's backend has all the ops that fuse the squeeze and spread-back layers on that device
(avfused.backends LAYER_OPS: C++ CPU and Triton kernels, CUDA for the video squeeze), they run instead:
the batch norms of the squeeze convolutions are folded into them from the batch's statistics (computed by
``*_squeeze_stats`` without writing the convolution's output) in training, from the running ones in eval,
and the running statistics are updated as nn.BatchNorm updates them. Same function, same gradients, no
(B, C, T, H, W) hidden layer.
"""

from __future__ import annotations

import torch
from torch import nn

from avfused import backends, reference
from avfused.errors import InputShapeError
from avfused.nn.batch_norm_fold import batch_norm_affine
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
        backends.prepare()  # imports and lookups now, not inside a call torch.compile traces
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
        ops = {op: backends.optional_module_op(op, self, video.device) for op in backends.LAYER_OPS}
        if all(ops.values()):
            return self._forward_fused(video, audio, ops)
        height, width, length = video.shape[-2], video.shape[-1], audio.shape[-1]
        video_tokens, audio_tokens = self._mix(self.tokens(video, audio), video)
        video_map = reference.tokens_to_video(video_tokens, self.frames, height, width, self.window)
        audio_map = reference.tokens_to_audio(audio_tokens, length)
        video = video + self.video_scale(self.video_expand(video_map[:, None]))
        audio = audio + self.audio_scale(self.audio_expand(audio_map[:, None]))
        return video, audio

    def _mix(self, tokens: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The joint token attention; its output split into the video tokens and the audio tokens."""
        if tokens.shape[1] != self.pos.shape[0]:
            raise InputShapeError(
                f"SAAVM was built for {self.pos.shape[0]} tokens but a {video.shape[-2]}x{video.shape[-1]} map "
                f"with {video.shape[2]} frames makes {tokens.shape[1]}; build it with "
                "num_tokens=token_count(frames, H, W, window) for this input size"
            )
        op = backends.module_op("joint_token_attention", self, tokens.device)
        mixed = op(tokens, self.pos, self.norm.weight, self.norm.bias, self.mix.weight, self.mix.bias)
        return mixed[:, : -self.frames], mixed[:, -self.frames :]

    def _forward_fused(self, video: torch.Tensor, audio: torch.Tensor, ops: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """forward with the fused squeeze and spread-back ops (the module docstring)."""
        batch, channels, frames, height, width = video.shape
        images = video.transpose(1, 2).reshape(batch * frames, channels, height, width)  # the ops' (B*T, C, H, W)
        dw, dw_norm, _, to_one = self.video_squeeze
        dw_weight = dw.weight[:, :, 0]
        scale, shift = batch_norm_affine(dw_norm, lambda: ops["video_squeeze_stats"](images, dw_weight, dw.bias),
                                          images.numel() // channels)
        video_tokens = ops["video_squeeze_tokens"](images, dw_weight * scale[:, None, None, None],
                                                   dw.bias * scale + shift, to_one.weight.flatten(1), to_one.bias,
                                                   frames, self.window)
        conv, conv_norm, _, audio_to_one = self.audio_squeeze
        scale, shift = batch_norm_affine(conv_norm, lambda: ops["audio_squeeze_stats"](audio, conv.weight, conv.bias),
                                          audio.numel() // channels)
        audio_tokens = ops["audio_squeeze_tokens"](audio, conv.weight * scale[:, None, None], conv.bias * scale + shift,
                                                   audio_to_one.weight, audio_to_one.bias, frames,
                                                   self.window * self.window)
        video_tokens, audio_tokens = self._mix(torch.cat([video_tokens, audio_tokens], dim=1), video)
        # the layer scale goes into the spread-back convolution; the residual's own scale stays 1
        video_scale, audio_scale = self.video_scale.scale, self.audio_scale.scale
        ones = torch.ones_like(video_scale)
        images = ops["video_expand_residual"](images, video_tokens, self.video_expand.weight[:, :, 0]
                                              * video_scale[:, None, None, None], self.video_expand.bias * video_scale,
                                              ones, self.window)
        audio = ops["audio_expand_residual"](audio, audio_tokens, self.audio_expand.weight * audio_scale[:, None, None],
                                             self.audio_expand.bias * audio_scale, ones)
        return images.reshape(batch, frames, channels, height, width).transpose(1, 2), audio

