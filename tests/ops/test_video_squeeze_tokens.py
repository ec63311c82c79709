"""video_squeeze_tokens, the extension's kernels against the float64 reference: forward and every gradient.

The op ``avfused_ext::video_squeeze_tokens`` and its backward op ``avfused_ext::video_squeeze_tokens_backward``
run C++ kernels on the CPU and CUDA kernels on GPUs, in inference and in training (no Triton kernel); the
``ext-cuda`` tests need a GPU session. The training composition with ``video_squeeze_stats`` (batch norm on
batch statistics) is checked in tests/ops/test_video_squeeze_stats.py.
"""

from __future__ import annotations

import pytest
import torch

from avfused import reference
from avfused.errors import InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.ops import video_squeeze_tokens
from avfused.testing import assert_matches_reference, check_against_reference, check_low_precision
from tests.helpers import (
    CPU_LANES,
    EXT_CPU,
    EXT_CUDA,
    TRITON,
    TRITON_LOW_PRECISION,
    allow_triton_low_precision_on_cpu,
    check_float64_in_float64_out,
    check_triton_op,
    float64_reference,
    opcheck_triton,
    use_cpu_lanes,
)

NAMES = ("video", "dw_weight", "dw_bias", "weight", "bias")
ext_ops = torch.ops.avfused_ext


def make_inputs(clips, frames, channels, height, width, device="cpu"):
    return [
        torch.randn(clips * frames, channels, height, width, device=device),
        torch.randn(channels, 1, 3, 3, device=device) / 3,
        0.1 * torch.randn(channels, device=device),
        torch.randn(1, channels, device=device) / channels**0.5,
        0.1 * torch.randn(1, device=device),
    ]


def check(inputs, frames, window):
    """The wrapper's inference forward, then its forward and every gradient under autograd, against float64."""
    with torch.no_grad():
        out = video_squeeze_tokens.ext(*inputs, frames, window)
    assert out.dtype == inputs[0].dtype
    expected = reference.video_squeeze_tokens(*(t.double() for t in inputs), frames, window)
    assert_matches_reference(out, expected, name="forward")
    check_against_reference(lambda *t: video_squeeze_tokens.ext(*t, frames, window),
                            lambda *t: reference.video_squeeze_tokens(*t, frames, window), inputs, NAMES)


# (clips, frames, channels, height, width, window): maps the windows do not tile, a map smaller than one
# window (and one pixel), rows of several vectors, one and three clips, T = 1 to 4 (not the model's 10)
SHAPES = [(1, 3, 5, 13, 9, 7), (3, 2, 8, 14, 14, 7), (1, 2, 3, 1, 1, 7), (3, 1, 4, 30, 33, 4), (1, 2, 6, 20, 41, 7),
          (3, 4, 3, 5, 6, 7)]


@pytest.mark.parametrize("lanes", CPU_LANES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", [EXT_CPU])
def test_matches_float64(target, shape, lanes, monkeypatch):
    use_cpu_lanes(monkeypatch, lanes)
    *sizes, window = shape
    check(make_inputs(*sizes), sizes[1], window)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_non_contiguous_inputs(target):
    inputs = make_inputs(2, 3, 4, 9, 11)
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    inputs[3] = torch.randn(1, 8)[:, ::2]
    assert not inputs[0].is_contiguous() and not inputs[3].is_contiguous()
    check(inputs, 3, 7)
    inputs[0] = torch.randn(6, 8, 9, 11)[:, ::2]  # a channel slice
    check(inputs, 3, 7)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_backward_op_takes_a_non_contiguous_gradient(target):
    inputs = make_inputs(2, 3, 4, 9, 11)
    grad = torch.randn(2, 7 * 7, 3 * 2 * 2).transpose(1, 2)  # (B, T R Q, w^2) as a transposed view
    assert not grad.is_contiguous()
    _, expected = float64_reference(lambda *t: reference.video_squeeze_tokens(*t, 3, 7), inputs, grad)
    grads = ext_ops.video_squeeze_tokens_backward(grad, *inputs, 3, 7)
    for name, mine, theirs in zip(NAMES, grads, expected, strict=True):
        assert_matches_reference(mine, theirs, name=f"grad {name}")


@pytest.mark.parametrize("target", [EXT_CPU])
def test_trains_through_its_own_kernels(target, monkeypatch):
    """Forward and backward run the extension's ops under autograd, never the reference."""
    inputs = make_inputs(2, 3, 4, 9, 10)
    want = reference.video_squeeze_tokens(*(t.double() for t in inputs), 3, 7)
    calls = []
    raw = ext_ops.video_squeeze_tokens

    def refuse(*args):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(reference, "video_squeeze_tokens", refuse)
    monkeypatch.setattr(ext_ops, "video_squeeze_tokens", lambda *a: calls.append(1) or raw(*a),
                        raising=False)
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = video_squeeze_tokens.ext(*leaves, 3, 7)
    out.square().sum().backward()
    assert calls == [1]
    assert_matches_reference(out, want)
    assert all(leaf.grad is not None for leaf in leaves)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_bad_inputs_raise_named_errors(target):
    video, dw_weight, dw_bias, weight, bias = make_inputs(1, 2, 4, 8, 8)
    op = video_squeeze_tokens.ext
    with pytest.raises(InputRankError, match=r"\(B\*T, C, H, W\)"):
        op(video[0], dw_weight, dw_bias, weight, bias, 2, 7)
    with pytest.raises(InputShapeError, match="dw_weight"):
        op(video, dw_weight[:3], dw_bias, weight, bias, 2, 7)
    with pytest.raises(InputShapeError, match="dw_weight"):
        op(video, torch.randn(4, 1, 5, 5), dw_bias, weight, bias, 2, 7)  # only 3x3
    with pytest.raises(InputShapeError, match="weight"):
        op(video, dw_weight, dw_bias, weight[:, :3], bias, 2, 7)
    with pytest.raises(InputShapeError, match="bias"):
        op(video, dw_weight, dw_bias, weight, torch.randn(2), 2, 7)
    with pytest.raises(InputShapeError, match="whole clips"):
        op(video, dw_weight, dw_bias, weight, bias, 3, 7)
    with pytest.raises(InputShapeError, match="video"):
        op(video[:, :, :0], dw_weight, dw_bias, weight, bias, 2, 7)
    with pytest.raises(InputDtypeError, match="int32"):
        op(video.to(torch.int32), dw_weight, dw_bias, weight, bias, 2, 7)
    with pytest.raises(InputDeviceError, match="meta"):
        op(video, dw_weight, dw_bias, weight, bias.to("meta"), 2, 7)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_float64_inputs_give_float64_outputs(target):
    check_float64_in_float64_out(video_squeeze_tokens, make_inputs(1, 2, 3, 9, 10), (2, 7))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_opcheck(target):
    inputs = make_inputs(2, 2, 3, 5, 6)
    torch.library.opcheck(ext_ops.video_squeeze_tokens.default, [t.requires_grad_() for t in inputs] + [2, 4])
    inputs = make_inputs(2, 2, 3, 5, 6)
    grad = torch.randn(2, 2 * 2 * 2, 16)
    torch.library.opcheck(ext_ops.video_squeeze_tokens_backward.default, [grad, *inputs, 2, 4])


@pytest.mark.parametrize("target", [EXT_CPU])
def test_raw_op_rejects_bad_inputs_with_runtime_errors(target):
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    video, dw_weight, dw_bias, weight, bias = make_inputs(1, 2, 4, 8, 8)
    with pytest.raises(RuntimeError, match="weight"):
        ext_ops.video_squeeze_tokens(video, dw_weight, dw_bias, weight[:, :3], bias, 2, 7)
    with pytest.raises(RuntimeError, match="whole clips"):
        ext_ops.video_squeeze_tokens(video, dw_weight, dw_bias, weight, bias, 3, 7)
    with pytest.raises(RuntimeError, match="grad_tokens"):  # one token short
        ext_ops.video_squeeze_tokens_backward(torch.randn(1, 7, 49), video, dw_weight, dw_bias, weight, bias, 2, 7)
    with pytest.raises(RuntimeError, match="float32"):
        ext_ops.video_squeeze_tokens_backward(torch.randn(1, 8, 49).double(), video, dw_weight, dw_bias, weight, bias,
                                              2, 7)


# GPU shapes: the small model's stage 0 and 3 (batch 2 of 10 frames), odd maps the windows do not tile, a map
# of one pixel, one and three clips
GPU_SHAPES = [(2, 10, 8, 56, 56, 7), (2, 10, 64, 7, 7, 7), (1, 3, 5, 13, 9, 7), (1, 2, 3, 1, 1, 7),
              (3, 1, 4, 30, 33, 4)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_matches_float64(target, shape, dtype, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # PyTorch's own fp32 / low-precision baselines
    *sizes, window = shape
    inputs = make_inputs(*sizes, device="cuda")
    frames = sizes[1]

    def fn(*t):
        return video_squeeze_tokens.ext(*t, frames, window)

    def reference_fn(*t):
        return reference.video_squeeze_tokens(*t, frames, window)

    if dtype == torch.float32:
        check_against_reference(fn, reference_fn, inputs, NAMES)
    else:
        check_low_precision(fn, reference_fn, inputs, NAMES, dtype)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_channels_last_and_views(target):
    inputs = make_inputs(2, 3, 6, 19, 30, device="cuda")
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    check(inputs, 3, 7)
    inputs[0] = torch.randn(6, 12, 19, 30, device="cuda")[:, ::2]
    check(inputs, 3, 7)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_trains_through_its_own_kernels(target, monkeypatch):
    inputs = make_inputs(2, 3, 4, 9, 10, device="cuda")
    want = reference.video_squeeze_tokens(*(t.double() for t in inputs), 3, 7)

    def refuse(*args):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(reference, "video_squeeze_tokens", refuse)
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = video_squeeze_tokens.ext(*leaves, 3, 7)
    out.square().sum().backward()
    assert_matches_reference(out, want)
    assert all(leaf.grad is not None for leaf in leaves)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_opcheck(target):
    inputs = make_inputs(2, 2, 3, 5, 6, device="cuda")
    torch.library.opcheck(ext_ops.video_squeeze_tokens.default, [t.requires_grad_() for t in inputs] + [2, 4])
    inputs = make_inputs(2, 2, 3, 5, 6, device="cuda")
    grad = torch.randn(2, 2 * 2 * 2, 16, device="cuda")
    torch.library.opcheck(ext_ops.video_squeeze_tokens_backward.default, [grad, *inputs, 2, 4])


# ---- triton: the interpreter here, the GPU where there is one ---------------------------------------------
# maps the windows do not tile, a map smaller than one window, T != 10, one and three clips
TRITON_SHAPES = [(3, 2, 5, 13, 9, 7), (1, 3, 4, 30, 33, 4), (1, 2, 3, 1, 1, 7)]


def triton_case(shape, device):
    *sizes, window = shape
    return make_inputs(*sizes, device=device), (sizes[1], window)


@pytest.mark.parametrize("shape", TRITON_SHAPES)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_matches_float64(target, shape):
    inputs, scalars = triton_case(shape, target.device)
    check_triton_op(video_squeeze_tokens, inputs, scalars, NAMES)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_non_contiguous_inputs(target):
    inputs, scalars = triton_case(TRITON_SHAPES[0], target.device)
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    assert not inputs[0].is_contiguous()
    check_triton_op(video_squeeze_tokens, inputs, scalars, NAMES)


@pytest.mark.parametrize("dtype", TRITON_LOW_PRECISION, ids=str)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_low_precision(target, dtype, monkeypatch):
    allow_triton_low_precision_on_cpu(monkeypatch, target.device)
    inputs, scalars = triton_case(TRITON_SHAPES[1], target.device)
    check_triton_op(video_squeeze_tokens, inputs, scalars, NAMES, dtype)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_opcheck(target, monkeypatch):
    inputs, scalars = triton_case(TRITON_SHAPES[2], target.device)
    opcheck_triton(video_squeeze_tokens, inputs, scalars, "triton_forward", monkeypatch)
