"""The accuracy rule for checking a backend against the reference, and the harness the op tests share.

The rule (docs/design.md, section 4): errors are measured against a float64 reference, relative to the
reference's largest magnitude, forward and every gradient.

* fp32, well conditioned: at most 1e-4 (``FP32_RTOL``).
* bf16 / fp16: at most twice the error PyTorch's own reference makes in that dtype (plus a tiny floor
  for outputs PyTorch happens to get exact).
* fp32 where the problem is ill conditioned (the front end's log(|y| + 1e-6) near a zero crossing of a
  band response, where PyTorch's own fp32 misses 1e-4 by far): at most twice PyTorch's fp32 error, with
  1e-4 as the floor.

The harness builds fresh leaves, runs forward and backward with one random output gradient, and applies
the rule to the output and to the gradient of every input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

FP32_RTOL = 1e-4
LOW_PRECISION_FACTOR = 2.0


def relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """max |actual - reference| / max |reference|, computed in float64."""
    reference = reference.detach().double()
    diff = (actual.detach().double().to(reference.device) - reference).abs().max().item()
    scale = reference.abs().max().item()
    return diff / scale if scale > 0 else diff


def assert_matches_reference(
    actual: torch.Tensor,
    reference64: torch.Tensor,
    torch_low_precision: torch.Tensor | None = None,
    name: str = "output",
) -> None:
    """Check ``actual`` against the float64 reference with the rule for actual's dtype.

    For bf16/fp16 pass ``torch_low_precision``: the reference computed by PyTorch in that dtype.
    """
    if actual.shape != reference64.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != reference {tuple(reference64.shape)}")
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{name}: non-finite values")
    error = relative_error(actual, reference64)
    if actual.dtype in (torch.float32, torch.float64):
        limit = FP32_RTOL
    else:
        if torch_low_precision is None:
            raise ValueError(f"{name}: a {actual.dtype} check needs PyTorch's own {actual.dtype} result")
        # floored at the dtype's unit roundoff: storing the largest value in that dtype may cost that much, so
        # no kernel can promise less (PyTorch's own error fell below half of it on a CPU with AVX512-FP16)
        limit = max(LOW_PRECISION_FACTOR * relative_error(torch_low_precision, reference64),
                    torch.finfo(actual.dtype).eps / 2) + 1e-3 * FP32_RTOL
    if error > limit:
        raise AssertionError(f"{name}: relative error {error:.3e} exceeds {limit:.3e} ({actual.dtype})")


def assert_within_twice_torch(actual: torch.Tensor, reference64: torch.Tensor, torch32: torch.Tensor,
                              name: str = "output") -> None:
    """The ill-conditioned fp32 rule: at most twice PyTorch's own fp32 error against float64 (floor 1e-4)."""
    if actual.shape != reference64.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != reference {tuple(reference64.shape)}")
    limit = max(LOW_PRECISION_FACTOR * relative_error(torch32, reference64), FP32_RTOL)
    error = relative_error(actual, reference64)
    if error > limit:
        raise AssertionError(f"{name}: relative error {error:.3e} exceeds {limit:.3e} (2x torch float32)")


def leaves(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Detached copies (optionally cast) that require grad."""
    return [t.detach().to(dtype or t.dtype).clone().requires_grad_() for t in tensors]


def forward_and_grads(fn: Callable, inputs: Sequence[torch.Tensor], grad: torch.Tensor, **kwargs):
    """fn(*inputs) and the gradient of <fn(*inputs), grad> for every input."""
    out = fn(*inputs, **kwargs)
    grads = torch.autograd.grad(out, inputs, grad.to(device=out.device, dtype=out.dtype))
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
    """Forward and every input gradient of ``fn`` (fp32) against ``reference_fn`` in float64.

    conditioned_by_torch: the ill-conditioned rule (at most twice PyTorch's fp32 error) instead of 1e-4.
    """
    ref_inputs = leaves(inputs, torch.float64)
    ref_out = reference_fn(*ref_inputs, **kwargs)
    grad = torch.randn_like(ref_out)
    ref_grads = torch.autograd.grad(ref_out, ref_inputs, grad)
    out, grads = forward_and_grads(fn, leaves(inputs), grad, **kwargs)
    pairs = [(out, ref_out, "output")] + list(zip(grads, ref_grads, [f"grad {n}" for n in names], strict=True))
    if conditioned_by_torch:
        torch_out, torch_grads = forward_and_grads(reference_fn, leaves(inputs), grad, **kwargs)
        for (actual, expected, name), by_torch in zip(pairs, [torch_out, *torch_grads], strict=True):
            assert_within_twice_torch(actual, expected, by_torch, name)
        return
    for actual, expected, name in pairs:
        assert_matches_reference(actual, expected, name=name)


def check_low_precision(fn: Callable, reference_fn: Callable, inputs, names, dtype: torch.dtype, **kwargs) -> None:
    """bf16 / fp16 rule: error at most 2x PyTorch's own error in that dtype, forward and gradients."""
    ref_inputs = leaves(inputs, torch.float64)
    ref_out = reference_fn(*ref_inputs, **kwargs)
    # an output gradient that both runs in `dtype` take exactly, as the float64 reference does: its rounding
    # would be the harness's error, not the op's, and dominates a gradient that only sums it (a bias's)
    grad = torch.randn_like(ref_out).to(dtype).double()
    ref_grads = torch.autograd.grad(ref_out, ref_inputs, grad)
    out, grads = forward_and_grads(fn, leaves(inputs, dtype), grad, **kwargs)
    torch_out, torch_grads = forward_and_grads(reference_fn, leaves(inputs, dtype), grad, **kwargs)
    assert out.dtype == dtype
    assert_matches_reference(out, ref_out, torch_out, name="output")
    for actual, expected, by_torch, name in zip(grads, ref_grads, torch_grads, names, strict=True):
        assert_matches_reference(actual, expected, by_torch, name=f"grad {name}")
