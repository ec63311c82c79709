"""video_expand_residual, the extension's C++ kernel against the float64 reference.

A CPU forward for inference (no Triton or CUDA kernel): its gradients are checked on the raw op
``avfused_ext::video_expand_residual``, whose autograd recomputes through the reference.
"""

from __future__ import annotations

import pytest
import torch

from avfused import reference
from avfused.errors import InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.ops import video_expand_residual
from tests.helpers import (
    EXT_CPU,
    EXT_CUDA,
    check_float64_in_float64_out,
    check_forward_only_ext,
    check_wrapper_runs_reference_under_autograd,
    opcheck_forward_only,
)

NAMES = ("video", "tokens", "weight", "bias", "scale")


def make_inputs(clips, frames, channels, height, width, window, device="cpu"):
    windows = frames * -(-height // window) * -(-width // window)
    return [
        torch.randn(clips * frames, channels, height, width, device=device),
        torch.randn(clips, windows, window * window, device=device),
        torch.randn(channels, 1, 3, 3, device=device) / 3,
        0.1 * torch.randn(channels, device=device),
        torch.randn(channels, device=device),
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
    check_forward_only_ext(video_expand_residual, make_inputs(*shape), (shape[-1],), NAMES)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_non_contiguous_inputs(target):
    """Channels-last video, and the video tokens as the model passes them: a slice of all the tokens."""
    inputs = make_inputs(2, 3, 4, 9, 11, 7)
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    inputs[1] = torch.cat([inputs[1], torch.randn(2, 3, 49)], dim=1)[:, :-3]
    assert not inputs[0].is_contiguous() and not inputs[1].is_contiguous()
    check_forward_only_ext(video_expand_residual, inputs, (7,), NAMES)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_bad_inputs_raise_named_errors(target):
    video, tokens, weight, bias, scale = make_inputs(1, 2, 4, 8, 8, 7)
    op = video_expand_residual.ext
    with pytest.raises(InputRankError, match="video"):
        op(video[0], tokens, weight, bias, scale, 7)
    with pytest.raises(InputShapeError, match="tokens"):
        op(video, tokens[:, :-1], weight, bias, scale, 7)
    with pytest.raises(InputShapeError, match="whole clips"):
        op(video[:1], tokens.expand(2, -1, -1), weight, bias, scale, 7)
    with pytest.raises(InputShapeError, match="weight"):
        op(video, tokens, torch.randn(4, 1, 5, 5), bias, scale, 7)
    with pytest.raises(InputShapeError, match="scale"):
        op(video, tokens, weight, bias, scale[:3], 7)
    with pytest.raises(InputDtypeError, match="int32"):
        op(video, tokens.to(torch.int32), weight, bias, scale, 7)
    with pytest.raises(InputDeviceError, match="meta"):
        op(video, tokens, weight, bias.to("meta"), scale, 7)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_float64_inputs_give_float64_outputs(target):
    check_float64_in_float64_out(video_expand_residual, make_inputs(1, 2, 3, 9, 10, 7), (7,))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_wrapper_runs_the_reference_where_autograd_records(target, monkeypatch):
    check_wrapper_runs_reference_under_autograd(video_expand_residual, make_inputs(1, 2, 3, 9, 10, 7), (7,),
                                                monkeypatch)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_opcheck(target):
    opcheck_forward_only(video_expand_residual, make_inputs(2, 2, 3, 5, 6, 4), (4,))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_raw_op_rejects_bad_inputs_with_runtime_errors(target):
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    video, tokens, weight, bias, scale = make_inputs(1, 2, 4, 8, 8, 7)
    with pytest.raises(RuntimeError, match="tokens"):
        torch.ops.avfused_ext.video_expand_residual(video, tokens[:, :-1], weight, bias, scale, 7)
    with pytest.raises(RuntimeError, match="scale"):
        torch.ops.avfused_ext.video_expand_residual(video, tokens, weight, bias, scale[:2], 7)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_tensors_run_the_reference(target):
    """No CUDA kernel for this op: CUDA tensors take the reference, never a dispatcher error."""
    inputs = make_inputs(2, 3, 8, 14, 14, 7, device="cuda")
    torch.testing.assert_close(video_expand_residual.ext(*inputs, 7), reference.video_expand_residual(*inputs, 7))
