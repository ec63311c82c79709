"""Triton large_kernel_attention and conv_mlp against the float64 reference: forward and every gradient."""

import pytest
import torch

from avfused import reference
from avfused.errors import InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.ops import triton_conv_mlp, triton_impl, triton_large_kernel_attention
from tests.test_triton_support import (
    check_against_reference,
    check_low_precision,
    on_triton_device,  # noqa: F401  (autouse: tests run on the Triton device)
)

LKA_NAMES = ("p", "w5", "b5", "w7", "b7", "w1", "b1")
MLP_NAMES = ("x", "w_in", "b_in", "w_dw", "b_dw", "w_out", "b_out")


def lka_inputs(images, channels, height, width, conv_1x1=False, device="cpu"):
    w1 = torch.randn(channels, channels, device=device) / channels**0.5
    return [
        torch.randn(images, channels, height, width, device=device),
        torch.randn(channels, 1, 5, 5, device=device) / 5,
        0.1 * torch.randn(channels, device=device),
        torch.randn(channels, 1, 7, 7, device=device) / 7,
        0.1 * torch.randn(channels, device=device),
        w1[:, :, None, None] if conv_1x1 else w1,
        0.1 * torch.randn(channels, device=device),
    ]


def mlp_inputs(images, channels, expanded, height, width, conv_1x1=False, device="cpu"):
    w_in = torch.randn(expanded, channels, device=device) / channels**0.5
    w_out = torch.randn(channels, expanded, device=device) / expanded**0.5
    return [
        torch.randn(images, channels, height, width, device=device),
        w_in[:, :, None, None] if conv_1x1 else w_in,
        0.1 * torch.randn(expanded, device=device),
        torch.randn(expanded, 1, 3, 3, device=device) / 3,
        0.1 * torch.randn(expanded, device=device),
        w_out[:, :, None, None] if conv_1x1 else w_out,
        0.1 * torch.randn(channels, device=device),
    ]


# odd maps smaller than the 19x19 dilated footprint, one and three images, > 16 channels (two blocks)
@pytest.mark.parametrize("images,channels,height,width,conv_1x1", [(1, 5, 7, 9, False), (3, 20, 6, 11, True)])
def test_large_kernel_attention_matches_reference(images, channels, height, width, conv_1x1):
    inputs = lka_inputs(images, channels, height, width, conv_1x1)
    check_against_reference(triton_impl.large_kernel_attention, reference.large_kernel_attention, inputs, LKA_NAMES)


def test_large_kernel_attention_non_contiguous():
    inputs = lka_inputs(2, 6, 9, 8)
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    inputs[5] = inputs[5].t()
    assert not inputs[0].is_contiguous() and not inputs[5].is_contiguous()
    check_against_reference(triton_impl.large_kernel_attention, reference.large_kernel_attention, inputs, LKA_NAMES)


@pytest.mark.parametrize(
    "images,channels,expanded,height,width,conv_1x1", [(1, 5, 20, 7, 9, False), (3, 8, 40, 6, 11, True)]
)
def test_conv_mlp_matches_reference(images, channels, expanded, height, width, conv_1x1, monkeypatch):
    # a few expanded channels per backward chunk, so chunk seams are tested
    monkeypatch.setattr(triton_conv_mlp, "BACKWARD_CHUNK_ELEMENTS", 7 * images * height * width)
    inputs = mlp_inputs(images, channels, expanded, height, width, conv_1x1)
    check_against_reference(triton_impl.conv_mlp, reference.conv_mlp, inputs, MLP_NAMES)


def test_conv_mlp_non_contiguous():
    inputs = mlp_inputs(2, 4, 16, 5, 7)
    inputs[0] = inputs[0].to(memory_format=torch.channels_last)
    inputs[1] = inputs[1].t().contiguous().t()
    assert not inputs[0].is_contiguous() and not inputs[1].is_contiguous()
    check_against_reference(triton_impl.conv_mlp, reference.conv_mlp, inputs, MLP_NAMES)


def test_opcheck_vpm_ops():
    checks = ("test_schema", "test_faketensor", "test_autograd_registration")
    p, w5, b5, w7, b7, w1, b1 = lka_inputs(1, 3, 5, 4)
    lka_args = (p, w5.reshape(3, 25), b5, w7.reshape(3, 49), b7, w1, b1)
    torch.library.opcheck(triton_large_kernel_attention.lka_op, lka_args, test_utils=checks)
    x, w_in, b_in, w_dw, b_dw, w_out, b_out = mlp_inputs(1, 3, 12, 4, 5)
    mlp_args = (x, w_in, b_in, w_dw.reshape(12, 9), b_dw, w_out, b_out)
    torch.library.opcheck(triton_conv_mlp.conv_mlp_op, mlp_args, test_utils=checks)


def test_bad_inputs_raise_named_errors():
    lka = lka_inputs(1, 4, 5, 5)
    with pytest.raises(InputDtypeError, match="float64"):
        triton_impl.large_kernel_attention(lka[0].double(), *lka[1:])
    with pytest.raises(InputRankError, match=r"\(N, C, H, W\)"):
        triton_impl.large_kernel_attention(lka[0][0], *lka[1:])
    with pytest.raises(InputShapeError, match="w7"):
        triton_impl.large_kernel_attention(lka[0], lka[1], lka[2], lka[3][:, :, :5, :5], *lka[4:])
    mlp = mlp_inputs(1, 4, 16, 5, 5)
    with pytest.raises(InputDeviceError, match="meta"):
        triton_impl.conv_mlp(*mlp[:6], mlp[6].to("meta"))
    with pytest.raises(InputShapeError, match="w_out"):
        triton_impl.conv_mlp(*mlp[:5], mlp[5][:, :15], mlp[6])
    with pytest.raises(InputShapeError, match="w_in"):
        triton_impl.conv_mlp(mlp[0], mlp[1][:, :3], *mlp[2:])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_vpm_ops_match_reference(dtype):
    lka = (triton_impl.large_kernel_attention, reference.large_kernel_attention)
    mlp = (triton_impl.conv_mlp, reference.conv_mlp)
    cases = [
        (*lka, lka_inputs(20, 8, 56, 56, device="cuda"), LKA_NAMES),
        (*lka, lka_inputs(20, 64, 7, 7, device="cuda"), LKA_NAMES),
        (*mlp, mlp_inputs(20, 8, 32, 56, 56, device="cuda"), MLP_NAMES),
        (*mlp, mlp_inputs(20, 64, 256, 7, 7, device="cuda"), MLP_NAMES),
    ]
    for fn, reference_fn, inputs, names in cases:
        if dtype == torch.float32:
            check_against_reference(fn, reference_fn, inputs, names)
        else:
            check_low_precision(fn, reference_fn, inputs, names, dtype)
