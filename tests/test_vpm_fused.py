"""The VPM with its batch norms folded into the 1x1 convolutions after them (where its conv MLP runs fused)
against its plain layers in float64: output, the gradient of the input and of every parameter, and the batch
norms' running statistics, in training (batch statistics) and in eval (running ones)."""

from __future__ import annotations

import copy

import pytest
import torch

from avfused.nn.batch_norm_fold import channel_moments
from avfused.nn.vpm import VPM
from avfused.testing import assert_matches_reference
from tests.helpers import EXT_CPU, TRITON


def build(channels: int, frames: int) -> VPM:
    """A VPM with every parameter and running statistic random (no identity or zero left to hide behind)."""
    vpm = VPM(channels, frames, mlp_ratio=2, layer_scale_init=0.5, backend="cuda")
    with torch.no_grad():
        for parameter in vpm.parameters():
            parameter.copy_(torch.randn_like(parameter) / max(1, parameter[0].numel()) ** 0.5)
        for norm in (vpm.norm1, vpm.norm2):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.add_(1.0)
    return vpm


# (batch, channels, frames, height, width): odd maps, T != 10, one and three clips
SHAPES = [(1, 4, 3, 9, 11), (3, 5, 2, 6, 7)]

CASES = [pytest.param(EXT_CPU.values[0], shape, training, id=f"{EXT_CPU.id}-{i}-{'train' if training else 'eval'}",
                      marks=EXT_CPU.marks) for i, shape in enumerate(SHAPES) for training in (True, False)]
CASES += [pytest.param(TRITON.values[0], SHAPES[1], True, id=f"{TRITON.id}-train", marks=TRITON.marks)]


def _norms_never_run(vpm: VPM) -> list[str]:
    """Forward hooks that record any plain batch norm call (the fold must leave them out)."""
    calls: list[str] = []
    for name in ("norm1", "norm2"):
        getattr(vpm, name).register_forward_hook(lambda module, args, out, name=name: calls.append(name))
    return calls


@pytest.mark.parametrize(("target", "shape", "training"), CASES)
def test_folded_vpm_matches_its_layers_in_float64(target, shape, training):
    batch, channels, frames, height, width = shape
    fused = build(channels, frames).to(target.device).train(training)
    for module in (fused.attention, fused.mlp):
        module.backend = target.backend
    plain = copy.deepcopy(fused).double()
    for module in (plain.attention, plain.mlp):
        module.backend = "torch"
    calls = _norms_never_run(fused)
    device = torch.device(target.device)
    video = torch.randn(batch, frames, channels, height, width, device=device).transpose(1, 2)  # not contiguous
    video64 = video.detach().double().requires_grad_()
    video.requires_grad_()
    out = fused(video)
    out64 = plain(video64)
    assert calls == [], "the VPM ran a plain batch norm instead of folding it"
    assert_matches_reference(out, out64, name="output")
    grad_out = torch.randn_like(out64)
    grads = torch.autograd.grad(out, [video, *fused.parameters()], grad_out.float())
    grads64 = torch.autograd.grad(out64, [video64, *plain.parameters()], grad_out)
    names = ["video"] + [name for name, _ in fused.named_parameters()]
    for name, grad, grad64 in zip(names, grads, grads64, strict=True):
        assert_matches_reference(grad, grad64, name=f"grad {name}")
    for name in ("norm1", "norm2"):
        norm, norm64 = getattr(fused, name), getattr(plain, name)
        assert int(norm.num_batches_tracked) == int(norm64.num_batches_tracked) == int(training)
        assert_matches_reference(norm.running_mean, norm64.running_mean, name=f"{name} running mean")
        assert_matches_reference(norm.running_var, norm64.running_var, name=f"{name} running var")


def test_reference_vpm_keeps_its_batch_norms():
    """The torch backend is the oracle: its VPM runs the plain layers."""
    vpm = build(3, 2)
    vpm.attention.backend = vpm.mlp.backend = "torch"
    calls = _norms_never_run(vpm)
    vpm(torch.randn(1, 3, 2, 5, 5))
    assert calls == ["norm1", "norm2"]


def test_channel_moments_match_their_definition():
    """Forward against float64 with a mean 300 standard deviations from zero (no E[x^2] - E[x]^2 cancellation),
    and every gradient by torch.autograd.gradcheck in float64, on a non-contiguous input."""
    x = (300.0 + torch.randn(3, 7, 5, 6, dtype=torch.float64)).transpose(2, 3)
    mean, var = channel_moments(x.float())
    expected_var, expected_mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), expected_var, rtol=1e-3, atol=0)
    small = torch.randn(2, 3, 4, 5, dtype=torch.float64).transpose(2, 3).requires_grad_()
    assert torch.autograd.gradcheck(channel_moments, (small,))
