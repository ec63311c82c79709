"""Triton joint_token_attention against the float64 reference: forward and all six gradients."""

import pytest
import torch

from avfused import reference
from avfused.errors import InputDeviceError, InputDtypeError, InputRankError, InputShapeError
from avfused.ops import triton_impl, triton_joint_attention
from tests.test_triton_support import (
    check_against_reference,
    check_low_precision,
    on_triton_device,  # noqa: F401  (autouse: tests run on the Triton device)
)

NAMES = ("tokens", "pos", "ln_weight", "ln_bias", "lin_weight", "lin_bias")


def make_inputs(batch, length, dim=49, device="cpu"):
    return [
        torch.randn(batch, length, dim, device=device),
        0.5 * torch.randn(length, dim, device=device),
        1 + 0.2 * torch.randn(dim, device=device),
        0.2 * torch.randn(dim, device=device),
        torch.randn(dim, dim, device=device) / dim**0.5,
        0.2 * torch.randn(dim, device=device),
    ]


# L: a single token, odd lengths, more than one 64-row block (with a ragged last block)
@pytest.mark.parametrize("batch,length", [(1, 1), (3, 13), (1, 70), (3, 131)])
def test_matches_reference(batch, length):
    check_against_reference(
        triton_impl.joint_token_attention, reference.joint_token_attention, make_inputs(batch, length), NAMES
    )


def test_other_token_sizes():
    check_against_reference(
        triton_impl.joint_token_attention, reference.joint_token_attention, make_inputs(2, 21, dim=9), NAMES
    )


def test_peaked_attention_stays_accurate():
    """Large LayerNorm gains make the softmax nearly one-hot: tests the online max and rescaling."""
    inputs = make_inputs(2, 77)
    inputs[2] = 4 + torch.rand(49)
    check_against_reference(triton_impl.joint_token_attention, reference.joint_token_attention, inputs, NAMES)


def test_non_contiguous_inputs():
    tokens = torch.randn(49, 19, 2).permute(2, 1, 0)  # (2, 19, 49)
    pos = torch.randn(49, 19).t()
    lin_weight = torch.randn(49, 49).t() / 7
    ln_weight = (1 + 0.2 * torch.randn(98))[::2]
    inputs = [tokens, pos, ln_weight, 0.2 * torch.randn(49), lin_weight, 0.2 * torch.randn(49)]
    assert not tokens.is_contiguous() and not pos.is_contiguous() and not ln_weight.is_contiguous()
    check_against_reference(triton_impl.joint_token_attention, reference.joint_token_attention, inputs, NAMES)


def test_opcheck_joint_attention_op():
    args = (*make_inputs(2, 11, dim=10), 1e-5)
    torch.library.opcheck(
        triton_joint_attention.joint_attention,
        args,
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


def test_bad_inputs_raise_named_errors():
    tokens, pos, ln_w, ln_b, lin_w, lin_b = make_inputs(2, 5)
    op = triton_impl.joint_token_attention
    with pytest.raises(InputDtypeError, match="float64"):
        op(tokens, pos.double(), ln_w, ln_b, lin_w, lin_b)
    with pytest.raises(InputDeviceError, match="meta"):
        op(tokens, pos, ln_w, ln_b, lin_w.to("meta"), lin_b)
    with pytest.raises(InputRankError, match=r"\(B, L, D\)"):
        op(tokens[0], pos, ln_w, ln_b, lin_w, lin_b)
    with pytest.raises(InputShapeError, match="pos"):
        op(tokens, pos[:4], ln_w, ln_b, lin_w, lin_b)
    with pytest.raises(InputShapeError, match="lin_weight"):
        op(tokens, pos, ln_w, ln_b, lin_w[:, :48], lin_b)
    with pytest.raises(InputShapeError, match="non-empty"):
        op(tokens[:0], pos, ln_w, ln_b, lin_w, lin_b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("length", [650, 170, 50, 20])
def test_gpu_matches_reference(dtype, length):
    inputs = make_inputs(4, length, device="cuda")
    if dtype == torch.float32:
        check_against_reference(triton_impl.joint_token_attention, reference.joint_token_attention, inputs, NAMES)
    else:
        check_low_precision(triton_impl.joint_token_attention, reference.joint_token_attention, inputs, NAMES, dtype)
