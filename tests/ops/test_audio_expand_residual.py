"""audio_expand_residual, the extension's kernels (forward and backward) and the Triton ones against the
float64 reference.

The ops ``avfused_ext::audio_expand_residual`` and ``_backward`` (C++ on the CPU, CUDA kernels on GPUs): the
wrapper runs them in inference and in training, so its forward and every gradient are checked through the
wrapper. The ``ext-cuda`` tests need a GPU session.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from avfused import reference
from avfused.errors import InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.nn.layers import LayerScale
from avfused.ops import audio_expand_residual
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

NAMES = ("audio", "tokens", "weight", "bias", "scale")


def make_inputs(clips, channels, length, frames, token_dim, kernel=33, device="cpu"):
    return [
        torch.randn(clips, channels, length, device=device),
        torch.randn(clips, frames, token_dim, device=device),
        torch.randn(channels, 1, kernel, device=device) / kernel**0.5,
        0.1 * torch.randn(channels, device=device),
        torch.randn(channels, device=device),
    ]


# (clips, channels, length, frames, token_dim, kernel): lengths that are no whole vectors, fewer
# positions than token values (interpolation down), a signal shorter than the kernel, the model's
# longest stage-0 signal (several backward tiles), one and three clips
SHAPES = [
    (1, 5, 301, 3, 49, 33),
    (3, 8, 1100, 2, 49, 33),
    (1, 3, 7, 2, 5, 9),
    (3, 9, 45, 4, 16, 7),
    (1, 2, 12000, 10, 49, 33),
]


@pytest.mark.parametrize("lanes", ["best-isa", "8-lane", "16-lane"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", [EXT_CPU])
def test_matches_float64(target, shape, lanes, monkeypatch):
    use_cpu_lanes(monkeypatch, lanes)
    check_trainable_ext(audio_expand_residual, make_inputs(*shape), (), NAMES)


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_inference_forward_matches_float64(target):
    inputs = target.put(make_inputs(3, 5, 301, 3, 49))
    with torch.no_grad():
        out = audio_expand_residual.ext(*inputs)
    assert_matches_reference(out, reference.audio_expand_residual(*(t.double() for t in inputs)))


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_non_contiguous_inputs(target):
    """Audio as a transposed view, and the audio tokens as the model passes them: a slice of all the tokens;
    the gradients flow back through both views."""
    inputs = make_inputs(2, 4, 130, 3, 49)
    inputs[0] = torch.randn(2, 130, 4)
    inputs[1] = torch.cat([torch.randn(2, 5, 49), inputs[1]], dim=1)
    inputs = target.put(inputs)

    def views(audio, tokens, *rest):
        audio, tokens = audio.transpose(1, 2), tokens[:, -3:]
        assert not audio.is_contiguous() and not tokens.is_contiguous()
        return audio, tokens, *rest

    check_trainable_ext(audio_expand_residual, inputs, (), NAMES, views)


@pytest.mark.parametrize("target", [EXT_CPU])
def test_bad_inputs_raise_named_errors(target):
    audio, tokens, weight, bias, scale = make_inputs(2, 4, 50, 2, 7)
    op = audio_expand_residual.ext
    with pytest.raises(InputRankError, match="audio"):
        op(audio[0], tokens, weight, bias, scale)
    with pytest.raises(InputShapeError, match="tokens"):
        op(audio, tokens[:1], weight, bias, scale)
    with pytest.raises(InputShapeError, match="weight"):
        op(audio, tokens, weight[:3], bias, scale)
    with pytest.raises(InputShapeError, match="odd"):
        op(audio, tokens, weight[..., :4], bias, scale)
    with pytest.raises(InputShapeError, match="scale"):
        op(audio, tokens, weight, bias, scale[:3])
    with pytest.raises(InputShapeError, match="tokens"):
        op(audio, tokens[:, :0], weight, bias, scale)
    with pytest.raises(InputDtypeError, match="int32"):
        op(audio, tokens, weight, bias.to(torch.int32), scale)
    with pytest.raises(InputDeviceError, match="meta"):
        op(audio.to("meta"), tokens, weight, bias, scale)


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_float64_inputs_give_float64_outputs(target):
    check_float64_in_float64_out(audio_expand_residual, target.put(make_inputs(1, 3, 80, 2, 7)))


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_wrapper_trains_through_the_extension_ops(target, monkeypatch):
    """On CUDA tensors too: the CUDA kernels, not the reference."""
    check_wrapper_trains_through_cpp(audio_expand_residual, target.put(make_inputs(1, 3, 80, 2, 7)), (), monkeypatch)


@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_opcheck(target):
    opcheck_trainable(audio_expand_residual, target.put(make_inputs(2, 3, 40, 2, 5, 7)))


@pytest.mark.parametrize("target", [EXT_CPU])
def test_raw_op_rejects_bad_inputs_with_runtime_errors(target):
    """Called directly, the C++ checks answer with RuntimeError (TORCH_CHECK), not a crash."""
    audio, tokens, weight, bias, scale = make_inputs(2, 4, 50, 2, 7)
    with pytest.raises(RuntimeError, match="tokens"):
        torch.ops.avfused_ext.audio_expand_residual(audio, tokens[:1], weight, bias, scale)
    with pytest.raises(RuntimeError, match="odd"):
        torch.ops.avfused_ext.audio_expand_residual(audio, tokens, weight[..., :4].contiguous(), bias, scale)
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.avfused_ext.audio_expand_residual_backward(audio[:1], audio, tokens, weight, bias, scale)


# (clips, channels, length, frames, token_dim, kernel): the small model's stage 0 and stage 3 (C L = 96000
# either way), lengths no multiple of a tile, fewer positions than token values, a signal shorter than the
# kernel, one and three clips
GPU_SHAPES = [(1, 8, 12000, 10, 49, 33), (1, 64, 1500, 10, 49, 33), (3, 5, 301, 3, 49, 33), (3, 8, 45, 2, 49, 7),
              (1, 3, 7, 2, 5, 9)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_matches_float64(target, shape, dtype):
    """The CUDA kernels, forward and every gradient: fp32 within 1e-4 of float64, bf16 / fp16 within twice
    PyTorch's own error in that dtype."""
    inputs = make_inputs(*shape, device="cuda")
    if dtype == torch.float32:
        check_against_reference(audio_expand_residual.ext, reference.audio_expand_residual, inputs, NAMES)
    else:
        check_low_precision(audio_expand_residual.ext, reference.audio_expand_residual, inputs, NAMES, dtype)


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_large_batch(target):
    """Enough clips that each block loops over several channels of its tile (one or few channel groups)."""
    check_trainable_ext(audio_expand_residual, make_inputs(96, 8, 3000, 10, 49, 33, device="cuda"), (), NAMES)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_raw_op_takes_the_autocast_dtype(target, dtype):
    """Inside autocast the CUDA kernels get the region's dtype (float32 weights): out comes in that dtype."""
    audio, tokens, weight, bias, scale = make_inputs(2, 4, 50, 2, 7, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = torch.ops.avfused_ext.audio_expand_residual(audio, tokens, weight, bias, scale)
    assert out.dtype == dtype
    expected = reference.audio_expand_residual(audio.to(dtype).double(), tokens.to(dtype).double(), weight.double(),
                                               bias.double(), scale.double())
    assert_matches_reference(out, expected, reference.audio_expand_residual(audio.to(dtype), tokens.to(dtype),
                                                                           weight.to(dtype), bias.to(dtype),
                                                                           scale.to(dtype)))


@pytest.mark.parametrize("target", [EXT_CUDA])
def test_gpu_raw_op_rejects_bad_inputs_with_runtime_errors(target):
    """Called directly, the CUDA host checks answer with RuntimeError (TORCH_CHECK), not a crash or a bad launch."""
    audio, tokens, weight, bias, scale = make_inputs(2, 4, 50, 2, 7, device="cuda")
    with pytest.raises(RuntimeError, match="tokens"):
        torch.ops.avfused_ext.audio_expand_residual(audio, tokens.half(), weight, bias, scale)
    with pytest.raises(RuntimeError, match="odd"):
        torch.ops.avfused_ext.audio_expand_residual(audio, tokens, weight[..., :4].contiguous(), bias, scale)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.avfused_ext.audio_expand_residual(audio, tokens, weight.half(), bias, scale)
    with pytest.raises(RuntimeError, match="shared memory"):  # the taps' tile is past any GPU's shared memory
        torch.ops.avfused_ext.audio_expand_residual(audio, tokens, torch.randn(4, 1, 100001, device="cuda"), bias,
                                                    scale)
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.avfused_ext.audio_expand_residual_backward(audio[:1], audio, tokens, weight, bias, scale)


# ---------------------------------------------------------------------------------------------
# the SAAVM's audio scatter-back in training: the layer scale folded into the op's weight and bias
# ---------------------------------------------------------------------------------------------
def fused_scatter_back(audio, tokens, weight, bias, layer_scale):
    return audio_expand_residual.ext(audio, tokens, weight * layer_scale[:, None, None], bias * layer_scale,
                                     torch.ones_like(bias))


def module_scatter_back(audio, tokens, weight, bias, layer_scale):
    """The SAAVM's own layers (avfused/nn/saavm.py): audio + LayerScale(Conv1d(1 -> C, K))(the interpolated tokens)."""
    channels, kernel = weight.shape[0], weight.shape[-1]
    expand = nn.Conv1d(1, channels, kernel, padding=kernel // 2).to(audio.dtype)
    scale = LayerScale(channels).to(audio.dtype)
    signal = reference.tokens_to_audio(tokens, audio.shape[-1])[:, None]
    expanded = torch.func.functional_call(expand, {"weight": weight, "bias": bias}, (signal,))
    return audio + torch.func.functional_call(scale, {"scale": layer_scale}, (expanded,))


# (clips, channels, length, frames, token_dim, kernel): T = 10 and several backward tiles, fewer positions than
# token values, one and three clips
@pytest.mark.parametrize("shape", [(1, 8, 3000, 10, 49, 33), (3, 5, 30, 2, 49, 33), (3, 4, 301, 3, 16, 7)])
@pytest.mark.parametrize("target", [EXT_CPU, EXT_CUDA])
def test_layer_scaled_op_matches_the_saavm_layers(target, shape):
    inputs = target.put(make_inputs(*shape))
    names = ("audio", "tokens", "expand weight", "expand bias", "layer scale")
    check_against_reference(fused_scatter_back, module_scatter_back, inputs, names)


# ---- triton: the interpreter here, the GPU where there is one ---------------------------------------------
# lengths no multiple of T D and shorter than T D, one and three clips
TRITON_SHAPES = [(3, 5, 301, 3, 49, 33), (1, 8, 1100, 2, 49, 33), (1, 3, 7, 2, 5, 9)]


def triton_case(shape, device):
    return make_inputs(*shape, device=device), ()


@pytest.mark.parametrize("shape", TRITON_SHAPES)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_matches_float64(target, shape):
    inputs, scalars = triton_case(shape, target.device)
    check_triton_op(audio_expand_residual, inputs, scalars, NAMES)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_non_contiguous_inputs(target):
    inputs, scalars = triton_case(TRITON_SHAPES[0], target.device)
    inputs[0] = inputs[0].transpose(1, 2).contiguous().transpose(1, 2)
    inputs[1] = inputs[1].transpose(0, 1).contiguous().transpose(0, 1)
    assert not inputs[0].is_contiguous() and not inputs[1].is_contiguous()
    check_triton_op(audio_expand_residual, inputs, scalars, NAMES)


@pytest.mark.parametrize("dtype", TRITON_LOW_PRECISION, ids=str)
@pytest.mark.parametrize("target", [TRITON])
def test_triton_low_precision(target, dtype, monkeypatch):
    allow_triton_low_precision_on_cpu(monkeypatch, target.device)
    inputs, scalars = triton_case(TRITON_SHAPES[1], target.device)
    check_triton_op(audio_expand_residual, inputs, scalars, NAMES, dtype)


@pytest.mark.parametrize("target", [TRITON])
def test_triton_opcheck(target, monkeypatch):
    inputs, scalars = triton_case(TRITON_SHAPES[2], target.device)
    opcheck_triton(audio_expand_residual, inputs, scalars, "triton_forward", monkeypatch)
