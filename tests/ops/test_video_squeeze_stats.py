"""video_squeeze_stats, the extension's kernels against the float64 reference: forward and every gradient;
and the SAAVM's video squeeze trained through it and video_squeeze_tokens against the eager modules.

The op ``avfused_ext::video_squeeze_stats`` and its backward op ``avfused_ext::video_squeeze_stats_backward``
run C++ kernels on the CPU and CUDA kernels on GPUs (no Triton kernel); the ``ext-cuda`` tests need a GPU
session.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from avfused import reference
from avfused.errors import EmptyBatchError, InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.ops import video_squeeze_stats, video_squeeze_tokens
from avfused.testing import assert_matches_reference, check_against_reference, check_low_precision, leaves
from tests.helpers import (
    CPU_LANES,
    EXT_CPU,
    EXT_CUDA,
    TRITON,
    TRITON_LOW_PRECISION,
    allow_triton_low_precision_on_cpu,
    check_triton_op,
    opcheck_triton,
    use_cpu_lanes,
)

NAMES = ("video", "dw_weight", "dw_bias")
ext_ops = torch.ops.avfused_ext


def make_inputs(images, channels, height, width, offset=0.0, device="cpu"):
    return [
        torch.randn(images, channels, height, width, device=device),
        torch.randn(channels, 1, 3, 3, device=device) / 3,
        offset + 0.1 * torch.randn(channels, device=device),
    ]


def stacked(fn):
    """(mean, var) as one (2, C) tensor, so the harness checks both and the gradient through both."""
    return lambda *tensors: torch.stack(fn(*tensors))


def check(inputs):
    """The wrapper's inference forward, then its forward and every gradient under autograd, against float64."""
    with torch.no_grad():
        mean, var = video_squeeze_stats.ext(*inputs)
    assert mean.dtype == var.dtype == inputs[0].dtype
    expected_mean, expected_var = reference.video_squeeze_stats(*(t.double() for t in inputs))
    assert_matches_reference(mean, expected_mean, name="mean")
    assert_matches_reference(var, expected_var, name="var")
    check_against_reference(stacked(video_squeeze_stats.ext), stacked(reference.video_squeeze_stats), inputs, NAMES)


# (images, channels, height, width): odd maps, maps smaller than one vector and one pixel, rows of several
# vectors, one and three images
SHAPES = [(1, 5, 13, 9), (3, 8, 14, 14), (3, 3, 1, 1), (1, 4, 30, 33), (3, 6, 20, 41), (2, 3, 5, 6)]


@pytest.mark.parametrize("lanes", CPU_LANES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", [EXT_CPU])
def test_matches_float64(target, shape, lanes, monkeypatch):
    use_cpu_lanes(monkeypatch, lanes)
    check(make_inputs(*shape))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_variance_of_a_mean_far_above_the_spread(target):
    """|mean| = 300 std: E[z^2] - E[z]^2 in float32 would lose the variance's leading digits."""
    check(make_inputs(20, 3, 17, 19, offset=300.0))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_non_contiguous_inputs(target):
    inputs = make_inputs(3, 4, 9, 11)
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    inputs[1] = torch.randn(4, 1, 3, 6)[..., ::2]
    assert not inputs[0].is_contiguous() and not inputs[1].is_contiguous()
    check(inputs)
    inputs[0] = torch.randn(3, 8, 9, 11)[:, ::2]  # a channel slice
    check(inputs)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_trains_through_its_own_kernels(target, monkeypatch):
    """Forward and backward run the extension's ops under autograd, never the reference."""
    inputs = make_inputs(2, 3, 6, 5)
    want = reference.video_squeeze_stats(*(t.double() for t in inputs))

    def refuse(*args):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(reference, "video_squeeze_stats", refuse)
    grads = [t.clone().requires_grad_() for t in inputs]
    mean, var = video_squeeze_stats.ext(*grads)
    (mean.square().sum() + var.sum()).backward()
    assert_matches_reference(mean, want[0])
    assert_matches_reference(var, want[1])
    assert all(leaf.grad is not None for leaf in grads)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_bad_inputs_raise_named_errors(target):
    video, dw_weight, dw_bias = make_inputs(2, 4, 8, 8)
    op = video_squeeze_stats.ext
    with pytest.raises(InputRankError, match=r"\(B\*T, C, H, W\)"):
        op(video[0], dw_weight, dw_bias)
    with pytest.raises(InputShapeError, match="dw_weight"):
        op(video, dw_weight[:3], dw_bias)
    with pytest.raises(InputShapeError, match="dw_weight"):
        op(video, torch.randn(4, 1, 5, 5), dw_bias)  # only 3x3
    with pytest.raises(InputShapeError, match="dw_bias"):
        op(video, dw_weight, dw_bias[:3])
    with pytest.raises(EmptyBatchError, match="non-empty"):
        op(video[:0], dw_weight, dw_bias)
    with pytest.raises(InputShapeError, match="video"):
        op(video[:, :, :0], dw_weight, dw_bias)
    with pytest.raises(InputDtypeError, match="int32"):
        op(video.to(torch.int32), dw_weight, dw_bias)
    with pytest.raises(InputDeviceError, match="meta"):
        op(video, dw_weight, dw_bias.to("meta"))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_float64_inputs_give_float64_outputs(target):
    inputs = make_inputs(2, 3, 9, 10)
    with torch.no_grad():
        mean, var = video_squeeze_stats.ext(*(t.double() for t in inputs))
    assert mean.dtype == var.dtype == torch.float64
    expected = reference.video_squeeze_stats(*(t.double() for t in inputs))
    assert_matches_reference(mean.float(), expected[0], name="mean")
    assert_matches_reference(var.float(), expected[1], name="var")


@pytest.mark.parametrize("target", [EXT_CPU])
def test_opcheck(target):
    torch.library.opcheck(ext_ops.video_squeeze_stats.default, [t.requires_grad_() for t in make_inputs(2, 3, 5, 6)])
    inputs = make_inputs(2, 3, 5, 6)
    mean, _ = ext_ops.video_squeeze_stats(*inputs)
    torch.library.opcheck(ext_ops.video_squeeze_stats_backward.default, [torch.randn(3), torch.randn(3), *inputs, mean])


@pytest.mark.parametrize("target", [EXT_CPU])
def test_raw_op_rejects_bad_inputs_with_runtime_errors(target):
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    video, dw_weight, dw_bias = make_inputs(2, 4, 8, 8)
    with pytest.raises(RuntimeError, match="dw_bias"):
        ext_ops.video_squeeze_stats(video, dw_weight, dw_bias[:3])
    with pytest.raises(RuntimeError, match="float32"):
        ext_ops.video_squeeze_stats(video.double(), dw_weight, dw_bias)
    with pytest.raises(RuntimeError, match="grad_var"):
        ext_ops.video_squeeze_stats_backward(torch.randn(4), torch.randn(3), video, dw_weight, dw_bias, dw_bias)


# GPU shapes: the small model's stage 0 and 3 (batch 2 of 10 frames), odd maps, a map of one pixel, planes of
# several blocks of pixels
GPU_SHAPES = [(20, 8, 56, 56), (20, 64, 7, 7), (3, 5, 13, 9), (3, 3, 1, 1), (1, 4, 30, 33)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_matches_float64(target, shape, dtype, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # PyTorch's own fp32 / low-precision baselines
    inputs = make_inputs(*shape, device="cuda")
    fn, reference_fn = stacked(video_squeeze_stats.ext), stacked(reference.video_squeeze_stats)
    if dtype == torch.float32:
        check_against_reference(fn, reference_fn, inputs, NAMES)
    else:
        check_low_precision(fn, reference_fn, inputs, NAMES, dtype)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_variance_of_a_mean_far_above_the_spread(target):
    check(make_inputs(20, 3, 17, 19, offset=300.0, device="cuda"))


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_channels_last_and_views(target):
    inputs = make_inputs(3, 6, 19, 30, device="cuda")
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    check(inputs)
    inputs[0] = torch.randn(3, 12, 19, 30, device="cuda")[:, ::2]
    check(inputs)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_opcheck(target):
    inputs = [t.requires_grad_() for t in make_inputs(2, 3, 5, 6, device="cuda")]
    torch.library.opcheck(ext_ops.video_squeeze_stats.default, inputs)
    inputs = make_inputs(2, 3, 5, 6, device="cuda")
    mean, _ = ext_ops.video_squeeze_stats(*inputs)
    grads = [torch.randn(3, device="cuda"), torch.randn(3, device="cuda")]
    torch.library.opcheck(ext_ops.video_squeeze_stats_backward.default, [*grads, *inputs, mean])


# ---------------------------------------------------------------------------------------------
# the SAAVM's video squeeze in training: statistics, batch norm folded per batch, squeeze into tokens
# ---------------------------------------------------------------------------------------------
SQUEEZE_NAMES = ("video", "dw_weight", "dw_bias", "bn_weight", "bn_bias", "to_one_weight", "to_one_bias")
EPS = 1e-5  # nn.BatchNorm3d's default


def fused_squeeze(video, dw_weight, dw_bias, bn_weight, bn_bias, to_one_weight, to_one_bias, window):
    """video (B, C, T, H, W) -> tokens: the two ops with the batch norm folded in by plain torch (autograd)."""
    batch, channels, frames, height, width = video.shape
    images = video.transpose(1, 2).reshape(batch * frames, channels, height, width)
    dw = dw_weight.reshape(channels, 1, 3, 3)
    mean, var = video_squeeze_stats.ext(images, dw, dw_bias)
    scale = bn_weight * torch.rsqrt(var + EPS)
    folded_weight, folded_bias = dw * scale[:, None, None, None], (dw_bias - mean) * scale + bn_bias
    return video_squeeze_tokens.ext(images, folded_weight, folded_bias, to_one_weight.reshape(1, channels),
                                    to_one_bias, frames, window)


def eager_squeeze(video, dw_weight, dw_bias, bn_weight, bn_bias, to_one_weight, to_one_bias, window):
    """The SAAVM's own modules (train mode) on these parameters, then reference.video_to_tokens."""
    channels = video.shape[1]
    squeeze = nn.Sequential(nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1), groups=channels),
                            nn.BatchNorm3d(channels, eps=EPS), nn.ReLU(), nn.Conv3d(channels, 1, 1))
    squeeze.to(video.dtype).train()
    params = (dw_weight, dw_bias, bn_weight, bn_bias, to_one_weight, to_one_bias)
    names = ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias")
    state = dict(zip(names, params, strict=True))
    out = torch.func.functional_call(squeeze, state, (video,))
    return reference.video_to_tokens(out[:, 0], window)


def squeeze_inputs(batch, channels, frames, height, width, device="cpu"):
    return [
        torch.randn(batch, channels, frames, height, width, device=device),
        torch.randn(channels, 1, 1, 3, 3, device=device) / 3,
        0.5 + 0.1 * torch.randn(channels, device=device),  # the batch mean is not zero: the fold must take it out
        1 + 0.3 * torch.randn(channels, device=device),
        0.1 * torch.randn(channels, device=device),
        torch.randn(1, channels, 1, 1, 1, device=device) / channels**0.5,
        0.1 * torch.randn(1, device=device),
    ]


# (batch, channels, frames, height, width): the windows do not tile the map, T != 10, batch 1 and 3
@pytest.mark.parametrize("shape", [(1, 4, 3, 13, 9), (3, 5, 2, 8, 15)])
@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_fused_training_squeeze_matches_the_eager_modules_in_float64(target, shape):
    """Batch norm on batch statistics: forward and every gradient of the fused composition (float32, the
    extension's ops) against nn.Conv3d + nn.BatchNorm3d + ReLU + nn.Conv3d in train mode and video_to_tokens,
    in float64."""
    inputs = squeeze_inputs(*shape, device=target.device)
    expected_inputs = leaves(inputs, torch.float64)
    expected = eager_squeeze(*expected_inputs, 7)
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, expected_inputs, grad)
    mine = leaves(inputs)
    out = fused_squeeze(*mine, 7)
    grads = torch.autograd.grad(out, mine, grad.float())
    assert_matches_reference(out, expected, name="tokens")
    for name, actual, want in zip(SQUEEZE_NAMES, grads, expected_grads, strict=True):
        if name == "dw_bias":  # zero: the batch norm takes the conv's bias out again; float32 leaves rounding
            scale = expected_grads[SQUEEZE_NAMES.index("bn_bias")].abs().max()
            assert want.abs().max() <= 1e-12 * scale
            assert actual.abs().max() <= 1e-4 * scale, f"grad dw_bias {actual.abs().max():.3e}, not zero"
            continue
        assert_matches_reference(actual, want, name=f"grad {name}")


# ---- triton: the interpreter here, the GPU where there is one ---------------------------------------------
# odd maps, a 1x1 map, one and three images
TRITON_SHAPES = [(3, 5, 13, 9), (1, 4, 30, 33), (3, 3, 1, 1)]


def triton_case(shape, device):
    return make_inputs(*shape, device=device), ()


@pytest.mark.parametrize("shape", TRITON_SHAPES)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_matches_float64(target, shape):
    inputs, scalars = triton_case(shape, target.device)
    check_triton_op(video_squeeze_stats, inputs, scalars, NAMES)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_non_contiguous_inputs(target):
    inputs, scalars = triton_case(TRITON_SHAPES[0], target.device)
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    assert not inputs[0].is_contiguous()
    check_triton_op(video_squeeze_stats, inputs, scalars, NAMES)


@pytest.mark.parametrize("dtype", TRITON_LOW_PRECISION, ids=str)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_low_precision(target, dtype, monkeypatch):
    allow_triton_low_precision_on_cpu(monkeypatch, target.device)
    inputs, scalars = triton_case(TRITON_SHAPES[1], target.device)
    check_triton_op(video_squeeze_stats, inputs, scalars, NAMES, dtype)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_opcheck(target, monkeypatch):
    inputs, scalars = triton_case(TRITON_SHAPES[2], target.device)
    opcheck_triton(video_squeeze_stats, inputs, scalars, "triton_forward", monkeypatch)
