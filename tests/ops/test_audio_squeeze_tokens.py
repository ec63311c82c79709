"""audio_squeeze_tokens, the extension's kernels (forward and backward) against the float64 reference.

The ops ``avfused_ext::audio_squeeze_tokens`` and ``_backward`` run C++ kernels on the CPU and CUDA kernels on
GPUs (the ``ext-cuda`` tests need a GPU session): the wrapper runs them in inference and in training, so its
forward and every gradient are checked through the wrapper. The Triton kernels are checked at the end.
"""

from __future__ import annotations

import pytest
import torch

from avfused import reference
from avfused.errors import InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.ops import audio_squeeze_tokens
from avfused.testing import assert_matches_reference, check_low_precision, leaves
from tests.helpers import (
    EXT_CPU,
    EXT_CUDA,
    TRITON,
    TRITON_LOW_PRECISION,
    allow_triton_low_precision_on_cpu,
    check_float64_in_float64_out,
    check_trainable_ext,
    check_triton_op,
    check_wrapper_trains_through_cpp,
    opcheck_trainable,
    opcheck_triton,
    use_cpu_lanes,
)

NAMES = ("audio", "weight", "bias", "to_one", "to_one_bias")


def make_inputs(clips, channels, length, kernel=3, to_one_kernel=33, device="cpu"):
    return [
        torch.randn(clips, channels, length, device=device),
        torch.randn(channels, channels, kernel, device=device) / (channels * kernel) ** 0.5,
        0.1 * torch.randn(channels, device=device),
        torch.randn(1, channels, to_one_kernel, device=device) / (channels * to_one_kernel) ** 0.5,
        0.1 * torch.randn(1, device=device),
    ]


# (clips, channels, length, K1, K2, frames, token_dim): lengths that split into no whole tiles or
# vectors, lengths that are no multiple of T D, fewer positions than token values (overlapping pooling
# windows), a signal shorter than the kernel, K1 wider than K2, one and three clips
SHAPES = [
    (1, 5, 301, 3, 33, 3, 49),
    (3, 8, 1100, 3, 33, 2, 49),
    (1, 3, 7, 3, 9, 2, 5),
    (3, 9, 45, 5, 7, 4, 16),
    (3, 4, 70, 7, 3, 3, 30),
    (1, 16, 700, 3, 33, 10, 49),
]


@pytest.mark.parametrize("lanes", ["best-isa", "8-lane", "16-lane"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", [EXT_CPU])
def test_matches_float64(target, shape, lanes, monkeypatch):
    use_cpu_lanes(monkeypatch, lanes)
    *sizes, frames, token_dim = shape
    check_trainable_ext(audio_squeeze_tokens, make_inputs(*sizes), (frames, token_dim), NAMES)


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_inference_forward_matches_float64(target):
    inputs = make_inputs(3, 5, 301, device=target.device)
    with torch.no_grad():
        out = audio_squeeze_tokens.ext(*inputs, 3, 49)
    assert_matches_reference(out, reference.audio_squeeze_tokens(*(t.double() for t in inputs), 3, 49))


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_non_contiguous_inputs(target):
    """Audio as a transposed view and a weight with its channel axes swapped; gradients flow back through both."""
    inputs = make_inputs(2, 4, 130)
    inputs[0] = torch.randn(2, 130, 4)
    inputs[1] = inputs[1].transpose(0, 1).contiguous()
    inputs = target.put(inputs)

    def views(audio, weight, *rest):
        audio, weight = audio.transpose(1, 2), weight.transpose(0, 1)
        assert not audio.is_contiguous() and not weight.is_contiguous()
        return audio, weight, *rest

    check_trainable_ext(audio_squeeze_tokens, inputs, (3, 7), NAMES, views)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_bad_inputs_raise_named_errors(target):
    audio, weight, bias, to_one, to_one_bias = make_inputs(1, 4, 50)
    op = audio_squeeze_tokens.ext
    with pytest.raises(InputRankError, match="audio"):
        op(audio[0], weight, bias, to_one, to_one_bias, 2, 7)
    with pytest.raises(InputShapeError, match="weight"):
        op(audio, weight[:3], bias, to_one, to_one_bias, 2, 7)
    with pytest.raises(InputShapeError, match="odd"):
        op(audio, weight[..., :2], bias, to_one, to_one_bias, 2, 7)
    with pytest.raises(InputShapeError, match="to_one"):
        op(audio, weight, bias, to_one[:, :3], to_one_bias, 2, 7)
    with pytest.raises(InputShapeError, match="to_one_bias"):
        op(audio, weight, bias, to_one, torch.randn(2), 2, 7)
    with pytest.raises(InputShapeError, match="frames"):
        op(audio, weight, bias, to_one, to_one_bias, 0, 7)
    with pytest.raises(InputShapeError, match="audio"):
        op(audio[:, :, :0], weight, bias, to_one, to_one_bias, 2, 7)
    with pytest.raises(InputDtypeError, match="int32"):
        op(audio, weight.to(torch.int32), bias, to_one, to_one_bias, 2, 7)
    with pytest.raises(InputDeviceError, match="meta"):
        op(audio, weight, bias, to_one.to("meta"), to_one_bias, 2, 7)


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_float64_inputs_give_float64_outputs(target):
    check_float64_in_float64_out(audio_squeeze_tokens, make_inputs(1, 3, 80, device=target.device), (2, 7))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_wrapper_trains_through_the_cpp_ops(target, monkeypatch):
    check_wrapper_trains_through_cpp(audio_squeeze_tokens, make_inputs(1, 3, 80), (2, 7), monkeypatch)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_opcheck(target):
    opcheck_trainable(audio_squeeze_tokens, make_inputs(2, 3, 40, 3, 7), (2, 5))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_raw_op_rejects_bad_inputs_with_runtime_errors(target):
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    audio, weight, bias, to_one, to_one_bias = make_inputs(1, 4, 50)
    with pytest.raises(RuntimeError, match="to_one"):
        torch.ops.avfused_ext.audio_squeeze_tokens(audio, weight, bias, to_one[:, :3], to_one_bias, 2, 7)
    with pytest.raises(RuntimeError, match="odd"):
        torch.ops.avfused_ext.audio_squeeze_tokens(audio, weight[..., :2].contiguous(), bias, to_one, to_one_bias,
                                                   2, 7)
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.avfused_ext.audio_squeeze_tokens_backward(torch.randn(1, 2, 6), audio, weight, bias, to_one,
                                                            to_one_bias, 2, 7)


# GPU shapes: the small model's stage 0 (batch 2 of 3 s clips: more tiles than multiprocessors, one channel
# slice) and stage 3 at batch 1 (few tiles: eight slices of 8 channels), 20 channels in slices of 8, 8 and 4,
# the CPU shapes (odd sizes, overlapping pooling windows, K1 wider than K2), and 40 short clips
GPU_SHAPES = [(2, 8, 12000, 3, 33, 10, 49), (1, 64, 1500, 3, 33, 10, 49), (1, 20, 300, 3, 33, 3, 49), *SHAPES,
              (40, 8, 300, 3, 33, 2, 49)]


def gpu_case(shape):
    *sizes, frames, token_dim = shape
    return make_inputs(*sizes, device="cuda"), (frames, token_dim)


@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_matches_float64(target, shape, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the float64 reference's own convolutions
    inputs, scalars = gpu_case(shape)
    check_trainable_ext(audio_squeeze_tokens, inputs, scalars, NAMES)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [GPU_SHAPES[0], GPU_SHAPES[1], GPU_SHAPES[2], SHAPES[3]])
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_low_precision(target, shape, dtype, monkeypatch):
    """bf16 / fp16 audio read as it is (float32 weights and accumulation): within twice PyTorch's own error in
    that dtype, tokens and every gradient."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    inputs, (frames, token_dim) = gpu_case(shape)

    def fn(*t):
        return audio_squeeze_tokens.ext(*t, frames, token_dim)

    def reference_fn(*t):
        return reference.audio_squeeze_tokens(*t, frames, token_dim)

    check_low_precision(fn, reference_fn, inputs, NAMES, dtype)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_runs_the_same_every_time(target):
    """No atomics: the tokens and gradients are bit for bit the same from run to run."""
    inputs = leaves(make_inputs(3, 16, 1000, device="cuda"))
    grad = torch.randn(3, 4, 49, device="cuda")
    first, second = (torch.autograd.grad(audio_squeeze_tokens.ext(*inputs, 4, 49), inputs, grad) for _ in range(2))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_wrapper_trains_through_the_cuda_kernels(target, monkeypatch):
    check_wrapper_trains_through_cpp(audio_squeeze_tokens, make_inputs(1, 3, 80, device="cuda"), (2, 7), monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_opcheck(target, dtype):
    inputs = make_inputs(2, 3, 40, 3, 7, device="cuda")
    inputs[0] = inputs[0].to(dtype)
    opcheck_trainable(audio_squeeze_tokens, inputs, (2, 5))


# ---- triton: the interpreter here, the GPU where there is one ---------------------------------------------
# lengths no multiple of T D, fewer positions than token values, a signal shorter than the kernel
TRITON_SHAPES = [(3, 5, 301, 3, 33, 3, 49), (1, 8, 1100, 3, 33, 2, 49), (1, 3, 7, 3, 9, 2, 5)]


def triton_case(shape, device):
    *sizes, frames, token_dim = shape
    return make_inputs(*sizes, device=device), (frames, token_dim)


@pytest.mark.parametrize("shape", TRITON_SHAPES)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_matches_float64(target, shape):
    inputs, scalars = triton_case(shape, target.device)
    check_triton_op(audio_squeeze_tokens, inputs, scalars, NAMES)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_non_contiguous_inputs(target):
    inputs, scalars = triton_case(TRITON_SHAPES[0], target.device)
    inputs[0] = inputs[0].transpose(1, 2).contiguous().transpose(1, 2)
    assert not inputs[0].is_contiguous()
    check_triton_op(audio_squeeze_tokens, inputs, scalars, NAMES)


@pytest.mark.parametrize("dtype", TRITON_LOW_PRECISION, ids=str)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_low_precision(target, dtype, monkeypatch):
    allow_triton_low_precision_on_cpu(monkeypatch, target.device)
    inputs, scalars = triton_case(TRITON_SHAPES[1], target.device)
    check_triton_op(audio_squeeze_tokens, inputs, scalars, NAMES, dtype)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_opcheck(target, monkeypatch):
    inputs, scalars = triton_case(TRITON_SHAPES[2], target.device)
    opcheck_triton(audio_squeeze_tokens, inputs, scalars, "triton_signal", monkeypatch)
