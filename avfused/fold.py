"""The exact algebra of inference-time folding: batch norm, layer scales and input normalisation moved into
the weights of the convolutions next to them (docs/design.md, section 2).

In eval mode a batch norm is a per-channel affine map y = s x + t (s = gamma / sqrt(var + eps),
t = beta - mean s). Folding is exact (only the rounding differs) where the affine map meets a linear map
without anything in between that treats positions differently:

    conv_then_affine     affine after a convolution:  s (W * x + b) + t = (s W) * x + (s b + t)
    affine_then_pointwise  affine before a 1x1 convolution (no padding): W (s x + t) + b = (W s) x + (W t + b)

Before a padded convolution the padding zeros would have to become -t / s, so that case is not folded
here (the video stem handles its border itself: see ``normalisation_into_conv``). Every fold is computed
in float64 and cast back to the weight's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

Tensor = torch.Tensor


def batch_norm_affine(norm: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """(scale, shift) (C,) in float64 of an eval-mode batch norm: norm(x) = scale x + shift per channel."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("a batch norm without running statistics cannot be folded (track_running_stats=False)")
    var, mean = norm.running_var.double(), norm.running_mean.double()
    scale = torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    return scale, shift


def _per_output(vector: Tensor, weight: Tensor) -> Tensor:
    """A (O,) vector shaped to scale the output channels (dim 0) of ``weight``."""
    return vector.reshape((-1,) + (1,) * (weight.dim() - 1))


def conv_then_affine(weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Weights (O, ...) and bias (O,) of ``scale * conv(x, weight, bias) + shift``, in weight's dtype."""
    w = weight.double() * _per_output(scale, weight)
    b = shift.double() if bias is None else bias.double() * scale + shift
    return w.to(weight.dtype), b.to(weight.dtype)


def affine_then_pointwise(
    scale: Tensor, shift: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Weights (O, I) and bias (O,) of ``pointwise(scale * x + shift)``; ``weight`` (O, I) or (O, I, 1, ...)."""
    w = weight.double().reshape(weight.shape[0], weight.shape[1])
    b = w @ shift.double()
    if bias is not None:
        b = b + bias.double()
    return (w * scale.double()[None, :]).to(weight.dtype), b.to(weight.dtype)


def normalisation_into_conv(
    weight: Tensor, bias: Tensor, mean: Tensor, std: Tensor
) -> tuple[Tensor, Tensor]:
    """Weights and bias of ``conv((x - mean) / std)`` (per input channel) applied to the raw x.

    Exact inside the image; at the border the raw input must be padded with ``mean`` (not zero), so the
    padded values normalise to the zeros the original convolution saw. weight (O, I, ...), mean/std (I,).
    """
    shape = (1, -1) + (1,) * (weight.dim() - 2)
    w = weight.double() / std.double().reshape(shape)
    b = bias.double() - (w * mean.double().reshape(shape)).sum(dim=tuple(range(1, weight.dim())))
    return w.to(weight.dtype), b.to(weight.dtype)
