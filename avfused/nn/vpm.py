"""Visual Preprocessing Module (VPM): frame fusion, large-kernel spatial attention, conv MLP, un-fusion.

All modules take video features (B, C, T, H, W) unless noted; the per-frame parts work on
(N = B*T, C, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avfused import backends
from avfused.nn.batch_norm_fold import pointwise_after_norm
from avfused.nn.layers import DropPath, LayerScale


class FrameMix(nn.Module):
    """A learnable T x T linear map over the frame axis, initialised to the identity.

    forward(x (B, C, T, H, W)) -> (B, C, T, H, W).
    """

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(frames))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # out[:, :, s] = sum_t W[s, t] x[:, :, t], as one batched W @ (T, H*W) product
        batch, channels, frames, height, width = x.shape
        mixed = torch.matmul(self.weight, x.reshape(batch * channels, frames, height * width))
        return mixed.reshape(batch, channels, frames, height, width)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """forward(x) laid out as (B*T, C, H, W) images: one W @ (T, C*H*W) product per clip, straight into
        the per-frame layout (no transpose copy after it)."""
        batch, channels, frames, height, width = x.shape
        mixed = torch.matmul(self.weight, x.transpose(1, 2).reshape(batch, frames, -1))
        return mixed.reshape(batch * frames, channels, height, width)

    def from_images(self, images: torch.Tensor, batch: int) -> torch.Tensor:
        """forward of (B*T, C, H, W) images back in (B, C, T, H, W) (a view of the (B, T, C, H, W) product)."""
        _, channels, height, width = images.shape
        mixed = torch.matmul(self.weight, images.reshape(batch, -1, channels * height * width))
        return mixed.reshape(batch, -1, channels, height, width).transpose(1, 2)


class LargeKernelAttention(nn.Module):
    """Gate by large-kernel context: p * 1x1(dw7x7 dilation 3(dw5x5(p))). (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int, backend: str = "auto") -> None:
        super().__init__()
        self.backend = backend
        backends.prepare()  # imports and lookups now, not inside a call torch.compile traces
        self.dw5 = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.dw7 = nn.Conv2d(channels, channels, 7, padding=9, dilation=3, groups=channels)
        self.pw = nn.Conv2d(channels, channels, 1)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        op = backends.module_op("large_kernel_attention", self, p.device)
        return op(p, self.dw5.weight, self.dw5.bias, self.dw7.weight, self.dw7.bias, self.pw.weight, self.pw.bias)


class ConvMLP(nn.Module):
    """1x1 expand (x ratio) -> depthwise 3x3 -> ReLU -> 1x1 project. (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int, ratio: int = 4, backend: str = "auto") -> None:
        super().__init__()
        self.backend = backend
        backends.prepare()  # imports and lookups now, not inside a call torch.compile traces
        hidden = channels * ratio
        self.expand = nn.Conv2d(channels, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.project = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor, norm: nn.modules.batchnorm._BatchNorm | None = None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        """MLP(x); with ``norm``, MLP(norm(x)), the batch norm folded into the expansion; with ``scale`` (C,),
        scale * MLP(.), the scale folded into the projection (neither norm(x) nor the unscaled MLP in memory)."""
        op = backends.module_op("conv_mlp", self, x.device)
        expand_weight, expand_bias = self.expand.weight, self.expand.bias
        if norm is not None:
            expand_weight, expand_bias = pointwise_after_norm(norm, expand_weight, expand_bias, x)
        project_weight, project_bias = self.project.weight, self.project.bias
        if scale is not None:
            project_weight, project_bias = project_weight * scale.reshape(-1, 1, 1, 1), project_bias * scale
        return op(x, expand_weight, expand_bias, self.dw.weight, self.dw.bias, project_weight, project_bias)


class VPM(nn.Module):
    """Frame fusion, then per frame: x + ls1 * 1x1(LKA(ReLU(1x1(BN(x))))), x + ls2 * MLP(BN(x)); un-fusion.

    forward(x (B, C, T, H, W)) -> (B, C, T, H, W).

    Where the conv MLP runs a fused backend, both batch norms are folded into the 1x1 convolutions after them
    (batch statistics in training, running ones in eval; avfused.nn.batch_norm_fold) and both layer scales into
    the 1x1 convolutions before them: same function and gradients, and four of the (B*T, C, H, W) maps the
    plain layers keep for the backward are neither written nor kept.
    """

    def __init__(
        self,
        channels: int,
        frames: int,
        mlp_ratio: int = 4,
        layer_scale_init: float = 1e-2,
        drop_path: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.fuse = FrameMix(frames)
        self.norm1 = nn.BatchNorm2d(channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.attention = LargeKernelAttention(channels, backend)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.scale1 = LayerScale(channels, layer_scale_init)
        self.norm2 = nn.BatchNorm2d(channels)
        self.mlp = ConvMLP(channels, mlp_ratio, backend)
        self.scale2 = LayerScale(channels, layer_scale_init)
        self.drop = DropPath(drop_path)
        self.unfuse = FrameMix(frames)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames = x.shape[0], x.shape[2]
        y = self.fuse.to_images(x)
        if self._folds(y.device):
            p = torch.relu(F.conv2d(y, *pointwise_after_norm(self.norm1, self.proj_in.weight, self.proj_in.bias, y)))
            scale = self.scale1.scale
            attention = F.conv2d(self.attention(p), self.proj_out.weight * scale.reshape(-1, 1, 1, 1),
                                 self.proj_out.bias * scale)
            y = y + self.drop(attention, frames)
            y = y + self.drop(self.mlp(y, self.norm2, self.scale2.scale), frames)
        else:
            p = torch.relu(self.proj_in(self.norm1(y)))
            y = y + self.drop(self.scale1(self.proj_out(self.attention(p))), frames)
            y = y + self.drop(self.scale2(self.mlp(self.norm2(y))), frames)
        return self.unfuse.from_images(y, batch)

    def _folds(self, device: torch.device) -> bool:
        """Whether the batch norms and layer scales fold: where the conv MLP runs fused (the torch backend keeps
        the plain layers)."""
        training = self.training and torch.is_grad_enabled()
        return backends.resolve_op_backend("conv_mlp", self.mlp.backend, device, training) != "torch"
