"""The SAAVM on its fused squeeze / spread-back ops (the extension's C++ CPU kernels) against its plain layers
in float64: output, the gradient of every input and parameter, and the batch norms' running statistics,
in training (batch statistics) and in eval (running ones)."""

from __future__ import annotations

import copy

import pytest
import torch

from avfused import backends
from avfused.nn.saavm import SAAVM, token_count
from avfused.testing import assert_matches_reference
from tests.helpers import EXT_CPU, TRITON


def build(channels: int, frames: int, height: int, width: int, window: int) -> SAAVM:
    """A SAAVM with every parameter and running statistic random (no identity or zero left to hide behind)."""
    saavm = SAAVM(channels, frames, token_count(frames, height, width, window), window, audio_kernel=9,
                  layer_scale_init=0.5, backend="cuda")
    with torch.no_grad():
        for parameter in saavm.parameters():
            parameter.copy_(torch.randn_like(parameter) / max(1, parameter[0].numel()) ** 0.5)
        for norm in (saavm.video_squeeze[1], saavm.audio_squeeze[1]):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.add_(1.0)
    return saavm


# a bias right before a training-mode batch norm: the batch mean takes it away again
CANCELLED_IN_TRAINING = ("video_squeeze.0.bias", "audio_squeeze.0.bias")

# (batch, channels, frames, height, width, window, audio length): maps the windows do not tile, a map
# smaller than one window, T != 10, one and three clips, audio shorter and longer than T * window**2
SHAPES = [(1, 4, 3, 9, 11, 7, 160), (3, 5, 2, 14, 14, 7, 90), (3, 3, 4, 5, 6, 4, 70)]


CASES = [pytest.param(EXT_CPU.values[0], shape, training, id=f"{EXT_CPU.id}-{i}-{'train' if training else 'eval'}",
                      marks=EXT_CPU.marks) for i, shape in enumerate(SHAPES) for training in (True, False)]
# Triton: under the interpreter one shape in training (the token attention runs on Triton too)
CASES += [pytest.param(TRITON.values[0], SHAPES[2], True, id=f"{TRITON.id}-train", marks=TRITON.marks)]


@pytest.mark.parametrize(("target", "shape", "training"), CASES)
def test_fused_saavm_matches_its_layers_in_float64(target, shape, training):
    batch, channels, frames, height, width, window, length = shape
    fused = build(channels, frames, height, width, window).to(target.device).train(training)
    fused.backend = target.backend
    plain = copy.deepcopy(fused).double()
    plain.backend = "torch"
    device = torch.device(target.device)
    assert all(backends.optional_module_op(op, fused, device) for op in backends.LAYER_OPS)
    video = torch.randn(batch, frames, channels, height, width, device=device).transpose(1, 2)  # not contiguous
    audio = torch.randn(batch, channels, length, device=device)
    inputs = [video.requires_grad_(), audio.requires_grad_()]
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    outs = fused(*inputs)
    outs64 = plain(*inputs64)
    grads_out = [torch.randn_like(o64) for o64 in outs64]
    params = list(fused.parameters())
    params64 = list(plain.parameters())
    grads = torch.autograd.grad(outs, inputs + params, [g.float() for g in grads_out])
    grads64 = torch.autograd.grad(outs64, inputs64 + params64, grads_out)
    for name, out, out64 in zip(("video", "audio"), outs, outs64, strict=True):
        assert out.shape == out64.shape
        assert_matches_reference(out, out64, name=f"output {name}")
    names = ["video", "audio"] + [name for name, _ in fused.named_parameters()]
    by_name = dict(zip(names, zip(grads, grads64, strict=True), strict=True))
    for name, (grad, grad64) in by_name.items():
        if training and name in CANCELLED_IN_TRAINING:  # zero in exact arithmetic: rounding, on the weight's scale
            scale = by_name[name.replace("bias", "weight")][1].abs().max()
            assert grad64.abs().max() < 1e-12 * scale and grad.abs().max() < 1e-4 * scale, name
            continue
        assert_matches_reference(grad, grad64, name=f"grad {name}")
    for squeeze in ("video_squeeze", "audio_squeeze"):
        norm, norm64 = getattr(fused, squeeze)[1], getattr(plain, squeeze)[1]
        assert int(norm.num_batches_tracked) == int(norm64.num_batches_tracked) == int(training)
        assert_matches_reference(norm.running_mean, norm64.running_mean, name=f"{squeeze} running mean")
        assert_matches_reference(norm.running_var, norm64.running_var, name=f"{squeeze} running var")


@pytest.mark.parametrize("target", [EXT_CPU])
def test_fused_saavm_refuses_one_value_per_channel_in_training(target):
    """nn.BatchNorm's own error, not a division by zero in the running variance."""
    saavm = build(2, 1, 1, 1, 7).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        saavm(torch.randn(1, 2, 1, 1, 1), torch.randn(1, 2, 49))
