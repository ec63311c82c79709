"""video_stem, the extension's C++ kernel against the float64 reference.

The kernel is a CPU forward for inference (no Triton or CUDA kernel): its gradients are checked on the
raw op ``avfused_ext::video_stem``, whose autograd recomputes through the reference.
"""

from __future__ import annotations

import pytest
import torch

from avfused import reference
from avfused.errors import InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.ops import video_stem
from tests.helpers import (
    EXT_CPU,
    EXT_CUDA,
    check_float64_in_float64_out,
    check_forward_only_ext,
    check_wrapper_runs_reference_under_autograd,
    opcheck_forward_only,
)

NAMES = ("frames", "weight", "bias", "border")
ext_ops = torch.ops.avfused_ext


def make_inputs(images, in_channels, height, width, channels, kernel, device="cpu"):
    return [
        torch.randn(images, in_channels, height, width, device=device),
        torch.randn(channels, in_channels, kernel, kernel, device=device) / (in_channels * kernel * kernel) ** 0.5,
        0.1 * torch.randn(channels, device=device),
        torch.randn(in_channels, device=device),  # a padding value per input channel, as the folded stem has
    ]


def check(inputs):
    check_forward_only_ext(video_stem, inputs, names=NAMES)


# (images, input channels, height, width, channels, kernel): odd sizes, channels that fill no whole block
# of the kernel, a 1x1 image, rows of several vectors, one and three images
SHAPES = [
    (1, 3, 31, 29, 8, 7),
    (3, 3, 30, 33, 5, 7),
    (2, 2, 1, 1, 3, 3),
    (1, 4, 9, 16, 13, 5),
    (3, 1, 17, 8, 9, 3),
    (1, 3, 66, 75, 8, 7),
]


@pytest.mark.parametrize("narrow", [False, True], ids=["best-isa", "8-lane"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", [EXT_CPU])
def test_matches_float64(target, shape, narrow, monkeypatch):
    if narrow:  # the AVX2 / baseline code path, also on AVX-512 machines
        monkeypatch.setenv("AVFUSED_CPU_NO_AVX512", "1")
    check(make_inputs(*shape))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_the_border_is_what_the_convolution_pads_with(target):
    """A frame equal to the border everywhere convolves like an infinite plane of that value: every output
    of one channel is the same, also at the edges, where zero padding would differ."""
    frames, weight, bias, border = make_inputs(1, 3, 12, 10, 4, 7)
    frames = border[None, :, None, None].expand_as(frames).contiguous()
    weight = weight.abs()  # positive responses, so ReLU keeps them
    with torch.no_grad():
        out = video_stem.ext(frames, weight, bias, border)
    expected = bias + (weight * border[None, :, None, None]).sum(dim=(1, 2, 3))
    torch.testing.assert_close(out, expected[None, :, None, None].expand_as(out).clamp_min(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_non_contiguous_inputs(target):
    inputs = make_inputs(2, 3, 13, 11, 6, 7)
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    inputs[1] = inputs[1].transpose(2, 3).contiguous().transpose(2, 3)
    assert not inputs[0].is_contiguous() and not inputs[1].is_contiguous()
    check(inputs)
    inputs[0] = torch.randn(2, 6, 13, 11)[:, ::2]  # a channel slice
    inputs[3] = torch.randn(6)[::2]
    check(inputs)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_bad_inputs_raise_named_errors(target):
    frames, weight, bias, border = make_inputs(1, 3, 8, 8, 4, 7)
    op = video_stem.ext
    with pytest.raises(InputRankError, match=r"\(N, I, H, W\)"):
        op(frames[0], weight, bias, border)
    with pytest.raises(InputShapeError, match="weight"):
        op(frames, weight[:, :2], bias, border)  # input channel mismatch
    with pytest.raises(InputShapeError, match="odd"):
        op(frames, weight[..., :6, :6], bias, border)
    with pytest.raises(InputShapeError, match="weight"):
        op(frames, weight[..., :5], bias, border)  # not square
    with pytest.raises(InputShapeError, match="bias"):
        op(frames, weight, bias[:3], border)
    with pytest.raises(InputShapeError, match="border"):
        op(frames, weight, bias, border[:2])
    with pytest.raises(InputShapeError, match="frames"):
        op(frames[:, :, :0], weight, bias, border)
    with pytest.raises(InputDtypeError, match="int32"):
        op(frames.to(torch.int32), weight, bias, border)
    with pytest.raises(InputDeviceError, match="meta"):
        op(frames, weight, bias, border.to("meta"))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_float64_inputs_give_float64_outputs(target):
    check_float64_in_float64_out(video_stem, make_inputs(1, 3, 9, 12, 5, 7))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_wrapper_runs_the_reference_where_autograd_records(target, monkeypatch):
    check_wrapper_runs_reference_under_autograd(video_stem, make_inputs(1, 3, 9, 12, 5, 7), (), monkeypatch)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_opcheck(target):
    opcheck_forward_only(video_stem, make_inputs(2, 2, 7, 6, 3, 3))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_raw_op_rejects_bad_inputs_with_runtime_errors(target):
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    frames, weight, bias, border = make_inputs(1, 3, 8, 8, 4, 7)
    with pytest.raises(RuntimeError, match="border"):
        ext_ops.video_stem(frames, weight, bias, border[:2])
    with pytest.raises(RuntimeError, match="odd"):
        ext_ops.video_stem(frames, weight[..., :6, :6].contiguous(), bias, border)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_tensors_run_the_reference(target):
    """No CUDA kernel for this op: CUDA tensors take the reference, never a dispatcher error."""
    inputs = make_inputs(2, 3, 17, 15, 8, 7, device="cuda")
    torch.testing.assert_close(video_stem.ext(*inputs), reference.video_stem(*inputs))
