"""Tolerance rules for checking a backend against the reference (DESIGN.md section 3).

fp32: the error against a float64 reference, relative to the reference's largest magnitude, is at most
1e-4. bf16 / fp16: the backend's error against the float64 reference is at most twice the error that
PyTorch's own reference makes in that dtype (plus a tiny floor for outputs PyTorch happens to get exact).
"""

from __future__ import annotations

import torch

FP32_RTOL = 1e-4
LOW_PRECISION_FACTOR = 2.0


def relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """max |actual - reference| / max |reference|, computed in float64."""
    reference = reference.detach().double()
    diff = (actual.detach().double() - reference).abs().max().item()
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
        limit = LOW_PRECISION_FACTOR * relative_error(torch_low_precision, reference64) + 1e-3 * FP32_RTOL
    if error > limit:
        raise AssertionError(f"{name}: relative error {error:.3e} exceeds {limit:.3e} ({actual.dtype})")
