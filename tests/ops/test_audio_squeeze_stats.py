"""audio_squeeze_stats, the extension's ops (forward and backward) against the float64 reference; and the
SAAVM's training-time audio token building made of it: batch statistics, the batch norm folded into the
convolution in torch, then audio_squeeze_tokens, against Conv1d -> BatchNorm1d (train mode) -> ReLU -> Conv1d
-> reference.audio_to_tokens in float64, forward and every gradient.

The ops ``avfused_ext::audio_squeeze_stats`` and ``_backward`` run C++ kernels on the CPU and CUDA kernels on
GPUs (the ``ext-cuda`` tests need a GPU session); the Triton kernels are checked at the end.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from avfused import reference
from avfused.errors import InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.ops import audio_squeeze_stats, audio_squeeze_tokens
from avfused.testing import (
    assert_matches_reference,
    check_against_reference,
    check_low_precision,
    leaves,
    relative_error,
)
from tests.helpers import (
    EXT_CPU,
    EXT_CUDA,
    TRITON,
    TRITON_LOW_PRECISION,
    allow_triton_low_precision_on_cpu,
    check_triton_op,
    check_wrapper_trains_through_cpp,
    opcheck_trainable,
    opcheck_triton,
    use_cpu_lanes,
)

NAMES = ("audio", "weight", "bias")


def make_inputs(clips, channels, length, kernel=3, bias_offset=0.0, device="cpu"):
    return [
        torch.randn(clips, channels, length, device=device),
        torch.randn(channels, channels, kernel, device=device) / (channels * kernel) ** 0.5,
        0.1 * torch.randn(channels, device=device) + bias_offset,
    ]


def check_stats(inputs, views=lambda *tensors: tensors):
    """mean, var and the gradient of every input (through both outputs) against float64."""
    ref_inputs = leaves(inputs, torch.float64)
    expected = reference.audio_squeeze_stats(*views(*ref_inputs))
    grad_outputs = [torch.randn_like(e) for e in expected]
    expected_grads = torch.autograd.grad(expected, ref_inputs, grad_outputs)
    actual_inputs = leaves(inputs)
    actual = audio_squeeze_stats.ext(*views(*actual_inputs))
    grads = torch.autograd.grad(actual, actual_inputs, [g.float() for g in grad_outputs])
    for name, a, e in zip(("mean", "var"), actual, expected, strict=True):
        assert a.dtype == torch.float32
        assert_matches_reference(a, e, name=name)
    for name, a, e in zip(NAMES, grads, expected_grads, strict=True):
        assert_matches_reference(a, e, name=f"grad {name}")


# (clips, channels, length, kernel): lengths of no whole vectors, a signal shorter than the kernel, one
# position, a wider kernel, one and three clips
SHAPES = [(1, 5, 301, 3), (3, 8, 1100, 3), (1, 3, 7, 5), (3, 9, 45, 3), (3, 2, 1, 3), (1, 16, 700, 3)]


@pytest.mark.parametrize("lanes", ["best-isa", "8-lane", "16-lane"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", [EXT_CPU])
def test_matches_float64(target, shape, lanes, monkeypatch):
    use_cpu_lanes(monkeypatch, lanes)
    check_stats(make_inputs(*shape))


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_variance_stays_exact_under_a_large_mean(target):
    """z with mean ~300 and spread ~1: float32 E[z^2] - E[z]^2 loses the variance; the op's is within 1e-4."""
    inputs = make_inputs(3, 4, 500, bias_offset=300.0, device=target.device)
    with torch.no_grad():
        z = torch.nn.functional.conv1d(inputs[0], inputs[1], inputs[2], padding=1)
        naive = (z * z).mean(dim=(0, 2)) - z.mean(dim=(0, 2)) ** 2
        _, expected = reference.audio_squeeze_stats(*(t.double() for t in inputs))
    assert relative_error(naive, expected) > 1e-4  # the check below can tell the two apart
    check_stats(inputs)


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_non_contiguous_inputs(target):
    """Audio as a transposed view and a weight with its channel axes swapped; gradients flow back through both."""
    audio, weight, bias = make_inputs(2, 4, 130, device=target.device)

    def views(audio, weight, bias):
        audio, weight = audio.transpose(1, 2), weight.transpose(0, 1)
        assert not audio.is_contiguous() and not weight.is_contiguous()
        return audio, weight, bias

    check_stats([audio.transpose(1, 2).contiguous(), weight.transpose(0, 1).contiguous(), bias], views)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_bad_inputs_raise_named_errors(target):
    audio, weight, bias = make_inputs(2, 4, 50)
    op = audio_squeeze_stats.ext
    with pytest.raises(InputRankError, match="audio"):
        op(audio[0], weight, bias)
    with pytest.raises(InputShapeError, match="weight"):
        op(audio, weight[:3], bias)
    with pytest.raises(InputShapeError, match="odd"):
        op(audio, weight[..., :2], bias)
    with pytest.raises(InputShapeError, match="bias"):
        op(audio, weight, bias[:3])
    with pytest.raises(InputShapeError, match="audio"):
        op(audio[:, :, :0], weight, bias)
    with pytest.raises(InputDtypeError, match="int32"):
        op(audio, weight.to(torch.int32), bias)
    with pytest.raises(InputDeviceError, match="meta"):
        op(audio, weight, bias.to("meta"))


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_float64_inputs_give_float64_outputs(target):
    inputs = [t.double() for t in make_inputs(2, 3, 80, device=target.device)]
    with torch.no_grad():
        mean, var = audio_squeeze_stats.ext(*inputs)
    assert mean.dtype == var.dtype == torch.float64
    expected = reference.audio_squeeze_stats(*inputs)
    assert_matches_reference(mean.float(), expected[0])
    assert_matches_reference(var.float(), expected[1])


@pytest.mark.parametrize("target", [EXT_CPU])
def test_wrapper_trains_through_the_cpp_ops(target, monkeypatch):
    check_wrapper_trains_through_cpp(audio_squeeze_stats, make_inputs(2, 3, 80), (), monkeypatch)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_opcheck(target):
    opcheck_trainable(audio_squeeze_stats, make_inputs(2, 3, 40), (), backward_extra=lambda out: [out[0]])


@pytest.mark.parametrize("target", [EXT_CPU])
def test_raw_op_rejects_bad_inputs_with_runtime_errors(target):
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    audio, weight, bias = make_inputs(2, 4, 50)
    with pytest.raises(RuntimeError, match="weight"):
        torch.ops.avfused_ext.audio_squeeze_stats(audio, weight[:3].contiguous(), bias)
    with pytest.raises(RuntimeError, match="odd"):
        torch.ops.avfused_ext.audio_squeeze_stats(audio, weight[..., :2].contiguous(), bias)
    with pytest.raises(RuntimeError, match="grad_var"):
        torch.ops.avfused_ext.audio_squeeze_stats_backward(bias, bias[:2], audio, weight, bias, bias)


# GPU shapes: the small model's stage 0 and 3 (batch 2 of 3 s clips: one tile of 128 positions a block, one
# group of 8 channels or eight), the CPU shapes (odd sizes, a wider kernel, one position), and 40 short clips
# (more tiles than multiprocessors: other tile sizes and splits of the weight sums)
GPU_SHAPES = [(2, 8, 12000, 3), (2, 64, 1500, 3), *SHAPES, (40, 8, 300, 3)]


def stacked(fn):
    """(mean, var) as one (2, C) tensor, so the low-precision harness checks both and the gradient through both."""
    return lambda *tensors: torch.stack(fn(*tensors))


@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_matches_float64(target, shape, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the float64 reference's own convolutions
    check_stats(make_inputs(*shape, device="cuda"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [GPU_SHAPES[0], GPU_SHAPES[1], (3, 9, 45, 3), (1, 16, 700, 3)])
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_low_precision(target, shape, dtype, monkeypatch):
    """bf16 / fp16 audio read as it is (float32 weights and sums): within twice PyTorch's own error in that dtype,
    mean, var and every gradient."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    inputs = make_inputs(*shape, device="cuda")
    check_low_precision(stacked(audio_squeeze_stats.ext), stacked(reference.audio_squeeze_stats), inputs, NAMES, dtype)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_runs_the_same_every_time(target):
    """No atomics: the statistics and gradients are bit for bit the same from run to run."""
    inputs = leaves(make_inputs(3, 16, 1000, device="cuda"))
    grad_outputs = [torch.randn(16, device="cuda"), torch.randn(16, device="cuda")]
    first, second = (torch.autograd.grad(audio_squeeze_stats.ext(*inputs), inputs, grad_outputs) for _ in range(2))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_wrapper_trains_through_the_cuda_kernels(target, monkeypatch):
    check_wrapper_trains_through_cpp(audio_squeeze_stats, make_inputs(2, 3, 80, device="cuda"), (), monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_opcheck(target, dtype):
    """Schema, fakes (float32 statistics whatever the audio's dtype), autograd registration, AOT tracing."""
    inputs = make_inputs(2, 3, 40, device="cuda")
    inputs[0] = inputs[0].to(dtype)
    opcheck_trainable(audio_squeeze_stats, inputs, (), backward_extra=lambda out: [out[0]])


# ---------------------------------------------------------------------------------------------
# the SAAVM's audio squeeze in training, from the fused ops
# ---------------------------------------------------------------------------------------------
def fused_audio_tokens(audio, w3, b3, gamma, beta, to_one, to_one_bias, frames, token_dim, eps=1e-5):
    """Batch statistics of the first convolution, the batch norm folded into it, then the fused squeeze."""
    mean, var = audio_squeeze_stats.ext(audio, w3, b3)
    inv = gamma / torch.sqrt(var + eps)
    weight, bias = w3 * inv[:, None, None], (b3 - mean) * inv + beta
    return audio_squeeze_tokens.ext(audio, weight, bias, to_one, to_one_bias, frames, token_dim)


def module_audio_tokens(audio, w3, b3, gamma, beta, to_one, to_one_bias, frames, token_dim):
    """The SAAVM's own layers (avfused/nn/saavm.py) in train mode, on these parameters."""
    channels, kernel = w3.shape[0], to_one.shape[-1]
    squeeze = nn.Sequential(nn.Conv1d(channels, channels, 3, padding=1), nn.BatchNorm1d(channels), nn.ReLU(),
                            nn.Conv1d(channels, 1, kernel, padding=kernel // 2)).to(audio.device, audio.dtype).train()
    names = ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias")
    params = dict(zip(names, (w3, b3, gamma, beta, to_one, to_one_bias), strict=True))
    signal = torch.func.functional_call(squeeze, params, (audio,))
    return reference.audio_to_tokens(signal[:, 0], frames, token_dim)


# (clips, channels, length, K2, frames, token_dim): the stage-0 shape's channels and kernel on a short clip,
# L no multiple of T D, L below T D, one and three clips
COMPOSITION_SHAPES = [(3, 8, 301, 33, 3, 49), (1, 5, 40, 9, 2, 25), (3, 4, 130, 7, 10, 6)]


def composition_inputs(clips, channels, length, kernel):
    return [
        torch.randn(clips, channels, length),
        torch.randn(channels, channels, 3) / (3 * channels) ** 0.5,
        0.1 * torch.randn(channels),
        1 + 0.2 * torch.randn(channels),
        0.1 * torch.randn(channels),
        torch.randn(1, channels, kernel) / (channels * kernel) ** 0.5,
        0.1 * torch.randn(1),
    ]


@pytest.mark.parametrize("shape", COMPOSITION_SHAPES)
@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_training_audio_tokens_match_the_saavm_layers(target, shape):
    """Forward and every gradient but the convolution bias's, which the batch norm cancels (next test)."""
    clips, channels, length, kernel, frames, token_dim = shape
    audio, w3, b3, *rest = target.put(composition_inputs(clips, channels, length, kernel))
    names = ("audio", "conv weight", "norm weight", "norm bias", "to_one", "to_one_bias")
    check_against_reference(lambda a, w, *t: fused_audio_tokens(a, w, b3, *t, frames, token_dim),
                            lambda a, w, *t: module_audio_tokens(a, w, b3.double(), *t, frames, token_dim),
                            [audio, w3, *rest], names)


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_training_audio_tokens_cancel_the_conv_bias_gradient(target):
    """Batch norm in train mode removes the convolution bias, so its exact gradient is 0: through the fold the
    stats' share cancels the weight's to float32 rounding of the norm bias's gradient (what it would be
    without the norm)."""
    inputs = leaves(target.put(composition_inputs(3, 8, 301, 33)))
    tokens = fused_audio_tokens(*inputs, 3, 49)
    grads = torch.autograd.grad(tokens, inputs, torch.randn_like(tokens))
    assert grads[2].abs().max() <= 1e-4 * grads[4].abs().max()


# ---- triton: the interpreter here, the GPU where there is one ---------------------------------------------
# lengths across several blocks and of one sample, one and three clips (the triton kernel: 3 taps)
TRITON_SHAPES = [(3, 5, 301, 3), (1, 8, 1100, 3), (3, 2, 1, 3)]


def triton_case(shape, device):
    return make_inputs(*shape, device=device), ()


@pytest.mark.parametrize("shape", TRITON_SHAPES)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_matches_float64(target, shape):
    inputs, scalars = triton_case(shape, target.device)
    check_triton_op(audio_squeeze_stats, inputs, scalars, NAMES)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_non_contiguous_inputs(target):
    inputs, scalars = triton_case(TRITON_SHAPES[0], target.device)
    inputs[0] = inputs[0].transpose(1, 2).contiguous().transpose(1, 2)
    assert not inputs[0].is_contiguous()
    check_triton_op(audio_squeeze_stats, inputs, scalars, NAMES)


@pytest.mark.parametrize("dtype", TRITON_LOW_PRECISION, ids=str)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_low_precision(target, dtype, monkeypatch):
    allow_triton_low_precision_on_cpu(monkeypatch, target.device)
    inputs, scalars = triton_case(TRITON_SHAPES[1], target.device)
    check_triton_op(audio_squeeze_stats, inputs, scalars, NAMES, dtype)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_opcheck(target, monkeypatch):
    inputs, scalars = triton_case(TRITON_SHAPES[2], target.device)
    opcheck_triton(audio_squeeze_stats, inputs, scalars, "triton_forward", monkeypatch)
