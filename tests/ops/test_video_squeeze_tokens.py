"""video_squeeze_tokens, the extension's C++ kernel against the float64 reference.

A CPU forward for inference (no Triton or CUDA kernel): its gradients are checked on the raw op
``avfused_ext::video_squeeze_tokens``, whose autograd recomputes through the reference.
"""

from __future__ import annotations

import pytest
import torch

from avfused import reference
from avfused.errors import InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.ops import video_squeeze_tokens
from tests.helpers import (
    EXT_CPU,
    EXT_CUDA,
    check_float64_in_float64_out,
    check_forward_only_ext,
    check_wrapper_runs_reference_under_autograd,
    opcheck_forward_only,
)

NAMES = ("video", "dw_weight", "dw_bias", "weight", "bias")


def make_inputs(clips, frames, channels, height, width, device="cpu"):
    return [
        torch.randn(clips * frames, channels, height, width, device=device),
        torch.randn(channels, 1, 3, 3, device=device) / 3,
        0.1 * torch.randn(channels, device=device),
        torch.randn(1, channels, device=device) / channels**0.5,
        0.1 * torch.randn(1, device=device),
    ]


# (clips, frames, channels, height, width, window): maps the windows do not tile, a map smaller than one
# window, rows of several vectors, one and three clips
SHAPES = [(1, 3, 5, 13, 9, 7), (3, 2, 8, 14, 14, 7), (1, 2, 3, 1, 1, 7), (3, 1, 4, 30, 33, 4), (1, 2, 6, 20, 41, 7)]


@pytest.mark.parametrize("narrow", [False, True], ids=["best-isa", "8-lane"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", [EXT_CPU])
def test_matches_float64(target, shape, narrow, monkeypatch):
    if narrow:  # the AVX2 / baseline code path, also on AVX-512 machines
        monkeypatch.setenv("AVFUSED_CPU_NO_AVX512", "1")
    *sizes, window = shape
    check_forward_only_ext(video_squeeze_tokens, make_inputs(*sizes), (sizes[1], window), NAMES)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_non_contiguous_inputs(target):
    inputs = make_inputs(2, 3, 4, 9, 11)
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    inputs[3] = torch.randn(1, 8)[:, ::2]
    assert not inputs[0].is_contiguous() and not inputs[3].is_contiguous()
    check_forward_only_ext(video_squeeze_tokens, inputs, (3, 7), NAMES)
    inputs[0] = torch.randn(6, 8, 9, 11)[:, ::2]  # a channel slice
    check_forward_only_ext(video_squeeze_tokens, inputs, (3, 7), NAMES)


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
def test_wrapper_runs_the_reference_where_autograd_records(target, monkeypatch):
    check_wrapper_runs_reference_under_autograd(video_squeeze_tokens, make_inputs(1, 2, 3, 9, 10), (2, 7), monkeypatch)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_opcheck(target):
    opcheck_forward_only(video_squeeze_tokens, make_inputs(2, 2, 3, 5, 6), (2, 4))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_raw_op_rejects_bad_inputs_with_runtime_errors(target):
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    video, dw_weight, dw_bias, weight, bias = make_inputs(1, 2, 4, 8, 8)
    with pytest.raises(RuntimeError, match="weight"):
        torch.ops.avfused_ext.video_squeeze_tokens(video, dw_weight, dw_bias, weight[:, :3], bias, 2, 7)
    with pytest.raises(RuntimeError, match="whole clips"):
        torch.ops.avfused_ext.video_squeeze_tokens(video, dw_weight, dw_bias, weight, bias, 3, 7)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_tensors_run_the_reference(target):
    """No CUDA kernel for this op: CUDA tensors take the reference, never a dispatcher error."""
    inputs = make_inputs(2, 3, 8, 14, 14, device="cuda")
    expected = reference.video_squeeze_tokens(*inputs, 3, 7)
    torch.testing.assert_close(video_squeeze_tokens.ext(*inputs, 3, 7), expected)
