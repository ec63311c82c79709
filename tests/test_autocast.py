"""Autocast rules of the fused ops (avfused.ops._common.register_autocast), on the raw torch.ops calls.

Inside torch.autocast an op's activations take the region's dtype where its kernel reads that dtype on that
device, and float32 where it does not; weights stay float32. Here (CPU): the C++ kernels read float32, so a
bf16 activation is upcast instead of refused; the Triton interpreter reads fp16 when the tests allow it, so
fp32 activations come down to fp16. On a GPU (``gpu`` tests) both backends take bf16 and fp16.
"""

from __future__ import annotations

import pytest
import torch

from avfused import reference
from avfused.ops import (
    audio_frontend_stem,  # noqa: F401 (importing an op module registers its autocast rule)
    conv_mlp,
    joint_token_attention,
    large_kernel_attention,
)
from avfused.testing import assert_matches_reference, forward_and_grads, leaves, relative_error
from tests.helpers import EXT_CPU, allow_triton_low_precision_on_cpu
from tests.ops.test_conv_mlp import make_inputs as conv_mlp_inputs
from tests.ops.test_joint_token_attention import make_inputs as attention_inputs
from tests.ops.test_large_kernel_attention import make_inputs as lka_inputs

CASES = {  # op module, its reference, random inputs (odd map, batch 3)
    "large_kernel_attention": (large_kernel_attention, reference.large_kernel_attention,
                               lambda device: lka_inputs(3, 5, 7, 9, device=device)),
    "conv_mlp": (conv_mlp, reference.conv_mlp, lambda device: conv_mlp_inputs(3, 4, 16, 7, 9, device=device)),
    "joint_token_attention": (joint_token_attention, reference.joint_token_attention,
                              lambda device: attention_inputs(3, 13, 17, device=device)),
}
VPM_OPS = ["large_kernel_attention", "conv_mlp"]  # their raw ops' arguments: the inputs with flat weights


def raw_ext_args(name: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The arguments of ``torch.ops.avfused_ext.<name>``: the wrapper's inputs with flat weights."""
    module = CASES[name][0]
    x, w_a, b_a, w_b, b_b, w_c, b_c = inputs
    w_a, w_b, w_c = module._flat_weights(x, w_a, w_b, w_c)
    return [x, w_a, b_a, w_b, b_b, w_c, b_c]


@pytest.mark.parametrize("name", VPM_OPS)
@pytest.mark.parametrize("target", [EXT_CPU])
def test_extension_upcasts_low_precision_activations_on_cpu(target, name):
    """Without the rule the C++ kernel refuses a bf16 activation; with it the op runs in float32."""
    _, reference_fn, make = CASES[name]
    inputs = make("cpu")
    x = inputs[0].bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = getattr(torch.ops.avfused_ext, name)(x, *raw_ext_args(name, inputs)[1:])
    assert out.dtype == torch.float32
    grad = torch.randn_like(out)
    (dx,) = torch.autograd.grad(out, x, grad)
    assert dx.dtype == torch.bfloat16  # back through the cast
    ref_out, ref_grads = forward_and_grads(reference_fn, leaves([x.detach(), *inputs[1:]], torch.float64), grad)
    assert_matches_reference(out, ref_out, name="output")  # the float32 rule: the kernel computed in float32
    assert relative_error(dx, ref_grads[0]) < 1e-2  # rounded to bf16 at the end


def test_front_end_stays_float32_under_autocast():
    """The wave is not cut to half precision: log|y| of a half-precision band response loses the signal."""
    x = torch.randn(2, 300).bfloat16()
    filters = torch.randn(6, 31) / 31
    stem_weight = torch.randn(5, 6, 7)
    op = torch.ops.avfused_ext.audio_frontend_stem
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, mean = op(x, filters, stem_weight, 1e-2)
    assert out.dtype == mean.dtype == torch.float32
    expected, _ = op(x.float(), filters, stem_weight, 1e-2)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def check_under_autocast(fn, reference_fn, inputs, dtype: torch.dtype) -> None:
    """fn on float32 inputs inside autocast(dtype): output in dtype; output and every gradient within the
    low-precision rule (2x PyTorch's error in dtype against float64)."""
    device = inputs[0].device.type
    ref_inputs = leaves(inputs, torch.float64)
    ref_out = reference_fn(*ref_inputs)
    grad = torch.randn_like(ref_out)
    ref_grads = torch.autograd.grad(ref_out, ref_inputs, grad)

    def under_autocast(*tensors):
        with torch.autocast(device, dtype=dtype):
            return fn(*tensors)

    out, grads = forward_and_grads(under_autocast, leaves(inputs), grad)
    torch_out, torch_grads = forward_and_grads(reference_fn, leaves(inputs, dtype), grad)
    assert out.dtype == dtype
    assert_matches_reference(out, ref_out, torch_out, name="output")
    for i, (actual, expected, by_torch) in enumerate(zip(grads, ref_grads, torch_grads, strict=True)):
        assert_matches_reference(actual.to(dtype), expected, by_torch, name=f"grad {i}")


@pytest.mark.parametrize("name", list(CASES))
def test_triton_takes_the_autocast_dtype(name, monkeypatch):
    """The interpreter's fp16 dots are right: fp32 activations inside autocast(fp16) run the fp16 kernel."""
    allow_triton_low_precision_on_cpu(monkeypatch, "cpu")
    module, reference_fn, make = CASES[name]
    check_under_autocast(module.triton, reference_fn, make("cpu"), torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", ["triton", "ext"])
@pytest.mark.parametrize("name", list(CASES))
def test_gpu_ops_take_the_autocast_dtype(name, backend, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    module, reference_fn, make = CASES[name]
    check_under_autocast(getattr(module, backend), reference_fn, make("cuda"), dtype)
