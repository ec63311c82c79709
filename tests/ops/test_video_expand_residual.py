"""video_expand_residual, the extension's kernels (forward and backward) against the float64 reference.

The ops ``avfused_ext::video_expand_residual`` and ``_backward`` (C++ on the CPU, CUDA kernels on GPUs; no
Triton kernel): the wrapper runs them in inference and in training, so its forward and every gradient are
checked through the wrapper. The ``ext-cuda`` tests need a GPU session.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from avfused import reference
from avfused.errors import InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.nn.layers import LayerScale
from avfused.ops import video_expand_residual
from avfused.testing import assert_matches_reference, check_against_reference, check_low_precision
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


@pytest.mark.parametrize("lanes", ["best-isa", "8-lane", "16-lane"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", [EXT_CPU])
def test_matches_float64(target, shape, lanes, monkeypatch):
    use_cpu_lanes(monkeypatch, lanes)
    check_trainable_ext(video_expand_residual, make_inputs(*shape), (shape[-1],), NAMES)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_inference_forward_matches_float64(target):
    video, tokens, weight, bias, scale = make_inputs(3, 2, 5, 13, 9, 7)
    with torch.no_grad():
        out = video_expand_residual.ext(video, tokens, weight, bias, scale, 7)
    expected = reference.video_expand_residual(*(t.double() for t in (video, tokens, weight, bias, scale)), 7)
    assert_matches_reference(out, expected)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_non_contiguous_inputs(target):
    """Channels-last video, and the video tokens as the model passes them: a slice of all the tokens; the
    gradients flow back through both views."""
    inputs = make_inputs(2, 3, 4, 9, 11, 7)
    inputs[0] = inputs[0].permute(0, 2, 3, 1).contiguous()  # (N, H, W, C), seen as channels-last (N, C, H, W)
    inputs[1] = torch.cat([inputs[1], torch.randn(2, 3, 49)], dim=1)

    def views(video, tokens, *rest):
        video, tokens = video.permute(0, 3, 1, 2), tokens[:, :-3]
        assert not video.is_contiguous() and not tokens.is_contiguous()
        return video, tokens, *rest

    check_trainable_ext(video_expand_residual, inputs, (7,), NAMES, views)


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
def test_wrapper_trains_through_the_cpp_ops(target, monkeypatch):
    check_wrapper_trains_through_cpp(video_expand_residual, make_inputs(1, 2, 3, 9, 10, 7), (7,), monkeypatch)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_opcheck(target):
    opcheck_trainable(video_expand_residual, make_inputs(2, 2, 3, 5, 6, 4), (4,))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_raw_op_rejects_bad_inputs_with_runtime_errors(target):
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    video, tokens, weight, bias, scale = make_inputs(1, 2, 4, 8, 8, 7)
    with pytest.raises(RuntimeError, match="tokens"):
        torch.ops.avfused_ext.video_expand_residual(video, tokens[:, :-1], weight, bias, scale, 7)
    with pytest.raises(RuntimeError, match="scale"):
        torch.ops.avfused_ext.video_expand_residual(video, tokens, weight, bias, scale[:2], 7)
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.avfused_ext.video_expand_residual_backward(video[:1], video, tokens, weight, bias, scale, 7)


# (clips, frames, channels, height, width, window): the small model's stage 0 (T = 10, 56 x 56), maps the
# windows do not tile, a map smaller than a window, one clip
GPU_SHAPES = [(2, 10, 8, 56, 56, 7), (3, 2, 5, 13, 9, 7), (1, 2, 3, 1, 1, 7), (3, 1, 16, 30, 33, 4)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_matches_float64(target, shape, dtype):
    """The CUDA kernels, forward and every gradient: fp32 within 1e-4 of float64, bf16 / fp16 within twice
    PyTorch's own error in that dtype."""
    inputs = make_inputs(*shape, device="cuda")
    window = shape[-1]

    def fn(*t):
        return video_expand_residual.ext(*t, window)

    def reference_fn(*t):
        return reference.video_expand_residual(*t, window)

    if dtype == torch.float32:
        check_against_reference(fn, reference_fn, inputs, NAMES)
    else:
        check_low_precision(fn, reference_fn, inputs, NAMES, dtype)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_non_contiguous_inputs(target):
    inputs = make_inputs(2, 3, 4, 9, 11, 7, device="cuda")
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    inputs[1] = torch.cat([inputs[1], torch.randn(2, 3, 49, device="cuda")], dim=1)

    def views(video, tokens, *rest):
        return video, tokens[:, :-3], *rest

    check_trainable_ext(video_expand_residual, inputs, (7,), NAMES, views)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_wrapper_trains_through_the_cuda_kernels(target, monkeypatch):
    check_wrapper_trains_through_cpp(video_expand_residual, make_inputs(1, 2, 3, 9, 10, 7, device="cuda"), (7,),
                                     monkeypatch)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_opcheck(target):
    opcheck_trainable(video_expand_residual, make_inputs(2, 2, 3, 5, 6, 4, device="cuda"), (4,))


# ---------------------------------------------------------------------------------------------
# the SAAVM's video scatter-back in training: the layer scale folded into the op's weight and bias
# ---------------------------------------------------------------------------------------------
def fused_scatter_back(video, tokens, weight, bias, layer_scale, window):
    """video (B, C, T, H, W) + the layer-scaled expansion, through the op on (B*T, C, H, W) with scale = ones."""
    clips, channels, frames, height, width = video.shape
    images = video.transpose(1, 2).reshape(clips * frames, channels, height, width)
    scaled_weight = weight.reshape(channels, 1, 3, 3) * layer_scale[:, None, None, None]
    out = video_expand_residual.ext(images, tokens, scaled_weight, bias * layer_scale, torch.ones_like(bias), window)
    return out.reshape(clips, frames, channels, height, width).transpose(1, 2)


def module_scatter_back(video, tokens, weight, bias, layer_scale, window):
    """The SAAVM's own layers (avfused/nn/saavm.py): video + LayerScale(Conv3d(1 -> C, 1x3x3))(the token maps)."""
    _, channels, frames, height, width = video.shape
    expand = nn.Conv3d(1, channels, (1, 3, 3), padding=(0, 1, 1)).to(video.dtype)
    scale = LayerScale(channels).to(video.dtype)
    maps = reference.tokens_to_video(tokens, frames, height, width, window)[:, None]
    expanded = torch.func.functional_call(expand, {"weight": weight, "bias": bias}, (maps,))
    return video + torch.func.functional_call(scale, {"scale": layer_scale}, (expanded,))


# (clips, channels, frames, height, width, window): maps the windows do not tile, T = 10, one and three clips
@pytest.mark.parametrize("shape", [(3, 5, 2, 13, 9, 7), (1, 8, 10, 14, 14, 7), (3, 3, 3, 10, 11, 4)])
@pytest.mark.parametrize("target", [EXT_CPU])
def test_layer_scaled_op_matches_the_saavm_layers(target, shape):
    clips, channels, frames, height, width, window = shape
    windows = frames * -(-height // window) * -(-width // window)
    inputs = [
        torch.randn(clips, channels, frames, height, width),
        torch.randn(clips, windows, window * window),
        torch.randn(channels, 1, 1, 3, 3) / 3,
        0.1 * torch.randn(channels),
        torch.randn(channels),
    ]
    names = ("video", "tokens", "expand weight", "expand bias", "layer scale")
    check_against_reference(lambda *t: fused_scatter_back(*t, window), lambda *t: module_scatter_back(*t, window),
                            inputs, names)


# ---- triton: the interpreter here, the GPU where there is one ---------------------------------------------
# maps the windows do not tile, a map smaller than one window, T != 10, one and three clips
TRITON_SHAPES = [(3, 2, 5, 13, 9, 7), (1, 3, 4, 30, 33, 4), (1, 2, 3, 1, 1, 7)]


def triton_case(shape, device):
    return make_inputs(*shape, device=device), (shape[-1],)


@pytest.mark.parametrize("shape", TRITON_SHAPES)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_matches_float64(target, shape):
    inputs, scalars = triton_case(shape, target.device)
    check_triton_op(video_expand_residual, inputs, scalars, NAMES)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_non_contiguous_inputs(target):
    inputs, scalars = triton_case(TRITON_SHAPES[0], target.device)
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    inputs[1] = inputs[1].transpose(0, 1).contiguous().transpose(0, 1)
    assert not inputs[0].is_contiguous() and not inputs[1].is_contiguous()
    check_triton_op(video_expand_residual, inputs, scalars, NAMES)


@pytest.mark.parametrize("dtype", TRITON_LOW_PRECISION, ids=str)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_low_precision(target, dtype, monkeypatch):
    allow_triton_low_precision_on_cpu(monkeypatch, target.device)
    inputs, scalars = triton_case(TRITON_SHAPES[1], target.device)
    check_triton_op(video_expand_residual, inputs, scalars, NAMES, dtype)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_opcheck(target, monkeypatch):
    inputs, scalars = triton_case(TRITON_SHAPES[2], target.device)
    opcheck_triton(video_expand_residual, inputs, scalars, "triton_forward", monkeypatch)
