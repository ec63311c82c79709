"""Shared helpers of the Triton equivalence tests (no tests here): fresh inputs, float64 reference, gradients."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from avfused.testing import assert_matches_reference, relative_error

# The equivalence tests run where the Triton kernels run: the GPU when there is one, else the CPU under
# the interpreter (tests/conftest.py sets TRITON_INTERPRET=1 only when no GPU is visible).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def on_triton_device():
    """Autouse in every module that imports it: tensors and modules the test makes land on DEVICE."""
    with torch.device(DEVICE):
        yield


def leaves(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Detached copies (optionally cast) that require grad."""
    return [t.detach().to(dtype or t.dtype).clone().requires_grad_() for t in tensors]


def forward_and_grads(fn: Callable, inputs: Sequence[torch.Tensor], grad: torch.Tensor, **kwargs):
    """fn(*inputs) and the gradient of <fn(*inputs), grad> for every input."""
    out = fn(*inputs, **kwargs)
    grads = torch.autograd.grad(out, inputs, grad.to(out.dtype))
    return out, grads


def check_against_reference(
    fn: Callable,
    reference_fn: Callable,
    inputs: Sequence[torch.Tensor],
    names: Sequence[str],
    *,
    conditioned_by_torch: bool = False,
    **kwargs,
) -> None:
    """Forward and every input gradient of ``fn`` against the float64 reference.

    conditioned_by_torch: for ill-conditioned settings (a log near 0) where even PyTorch's own fp32
    misses 1e-4, require at most twice PyTorch's fp32 error instead (the low-precision rule).
    """
    ref_inputs = leaves(inputs, torch.float64)
    ref_out = reference_fn(*ref_inputs, **kwargs)
    grad = torch.randn_like(ref_out)
    ref_grads = torch.autograd.grad(ref_out, ref_inputs, grad)
    out, grads = forward_and_grads(fn, leaves(inputs), grad, **kwargs)
    if conditioned_by_torch:
        torch_out, torch_grads = forward_and_grads(reference_fn, leaves(inputs), grad, **kwargs)
        pairs = [(out, ref_out, torch_out, "output")]
        pairs += list(zip(grads, ref_grads, torch_grads, [f"grad {n}" for n in names], strict=True))
        for actual, expected, by_torch, name in pairs:
            limit = max(1e-4, 2 * relative_error(by_torch, expected))
            error = relative_error(actual, expected)
            assert error <= limit, f"{name}: relative error {error:.3e} > {limit:.3e}"
        return
    assert_matches_reference(out, ref_out, name="output")
    for actual, expected, name in zip(grads, ref_grads, names, strict=True):
        assert_matches_reference(actual, expected, name=f"grad {name}")


def check_low_precision(fn: Callable, reference_fn: Callable, inputs, names, dtype: torch.dtype, **kwargs) -> None:
    """bf16 / fp16 rule: error at most 2x PyTorch's own error in that dtype, forward and gradients."""
    ref_inputs = leaves(inputs, torch.float64)
    ref_out = reference_fn(*ref_inputs, **kwargs)
    grad = torch.randn_like(ref_out)
    ref_grads = torch.autograd.grad(ref_out, ref_inputs, grad)
    out, grads = forward_and_grads(fn, leaves(inputs, dtype), grad, **kwargs)
    torch_out, torch_grads = forward_and_grads(reference_fn, leaves(inputs, dtype), grad, **kwargs)
    assert out.dtype == dtype
    assert_matches_reference(out, ref_out, torch_out, name="output")
    for actual, expected, by_torch, name in zip(grads, ref_grads, torch_grads, names, strict=True):
        assert_matches_reference(actual, expected, by_torch, name=f"grad {name}")
