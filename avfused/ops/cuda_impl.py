"""Backend "cuda": the C++/CUDA extension (csrc/) as torch.library ops, CPU and GPU.

Ops implemented (same names and signatures as avfused.reference):

    audio_frontend_stem(wave (B, S), low_hz (F,), band_hz (F,), stem_weight (C, F, 7), ...) -> (B, C, ceil(S/4))
    joint_token_attention(tokens (B, L, D), pos (L, D), ln_weight, ln_bias, lin_weight (D, D), lin_bias)
        -> (B, L, D)

Both run forward and backward on the CPU (C++ with OpenMP) and on CUDA. The front end's cheap parts
(pre-emphasis + instance norm over B x S, and the F x K sinc filter generation) stay in torch so
autograd covers them; the op ``avfused_ext::frontend_stem`` does conv + |.| + log + mean removal +
stem without storing the (B, F, S) band energies. Its backward recomputes them (ATen convolutions
around one fused elementwise kernel). The kernels compute in float32: half / bfloat16 / float64
inputs are cast to float32 and the result back to the input dtype.

Fake kernels and autograd formulas are registered here, so ``torch.compile(fullgraph=True)`` traces
models using these ops. Bad inputs raise avfused.errors exceptions before reaching C++.
"""

from __future__ import annotations

import torch

from avfused import _extension, reference
from avfused.errors import EmptyBatchError, InputDeviceError, InputDtypeError, InputRankError, InputShapeError

Tensor = torch.Tensor

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Loaded once at import (this module is imported only when the backend is asked for); plain globals
# keep the per-call checks traceable by torch.compile.
_REASONS = {"cpu": _extension.cpu_unavailable_reason(), "cuda": _extension.cuda_unavailable_reason()}


def unavailable_reason(device: torch.device | None = None) -> str | None:
    """None when the extension can run ops on ``device`` (CPU, or CUDA when one is visible), else why not."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        return _REASONS["cpu"]
    if device.type == "cuda":
        reason = _REASONS["cuda"]
        if reason is None and not torch.cuda.is_available():
            reason = "the CUDA module is built but no CUDA device is visible"
        return reason
    return f"the C++/CUDA extension has no kernels for {device.type!r} tensors (only cpu and cuda)"


# ---------------------------------------------------------------------------------------------
# input checks (Python exceptions with what was expected and what came)
# ---------------------------------------------------------------------------------------------
def _check_float_same_device(op: str, **tensors: Tensor) -> None:
    names = list(tensors)
    first = tensors[names[0]]
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise InputDtypeError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in _FLOAT_DTYPES:
            raise InputDtypeError(f"{op}: {name} must be a floating tensor (float16/bfloat16/float32/float64), "
                                  f"got {tensor.dtype}")
        if tensor.device != first.device:
            raise InputDeviceError(f"{op}: all tensors must be on one device; {names[0]} is on {first.device} "
                                   f"but {name} is on {tensor.device}")
    reason = _REASONS.get(first.device.type, f"no kernels for {first.device.type!r} tensors (only cpu and cuda)")
    if reason is not None:
        raise InputDeviceError(f"{op}: cannot run on {first.device}: {reason}")


def _check_frontend(wave: Tensor, low_hz: Tensor, band_hz: Tensor, stem_weight: Tensor) -> None:
    op = "audio_frontend_stem"
    _check_float_same_device(op, wave=wave, low_hz=low_hz, band_hz=band_hz, stem_weight=stem_weight)
    if wave.dim() != 2:
        raise InputRankError(f"{op}: wave must be (batch, samples), got shape {tuple(wave.shape)}")
    if wave.shape[0] == 0:
        raise EmptyBatchError(f"{op}: wave has zero clips, shape {tuple(wave.shape)}")
    if wave.shape[1] == 0:
        raise InputShapeError(f"{op}: wave has zero samples, shape {tuple(wave.shape)}")
    if low_hz.dim() != 1 or band_hz.shape != low_hz.shape:
        raise InputShapeError(f"{op}: low_hz and band_hz must both be (filters,), got {tuple(low_hz.shape)} "
                              f"and {tuple(band_hz.shape)}")
    filters = low_hz.shape[0]
    if stem_weight.dim() != 3 or stem_weight.shape[1] != filters or stem_weight.shape[2] != reference.STEM_KERNEL:
        raise InputShapeError(f"{op}: stem_weight must be (channels, {filters}, {reference.STEM_KERNEL}), "
                              f"got {tuple(stem_weight.shape)}")


def _check_attention(tokens: Tensor, pos: Tensor, ln_weight: Tensor, ln_bias: Tensor, lin_weight: Tensor,
                     lin_bias: Tensor) -> None:
    op = "joint_token_attention"
    _check_float_same_device(op, tokens=tokens, pos=pos, ln_weight=ln_weight, ln_bias=ln_bias,
                             lin_weight=lin_weight, lin_bias=lin_bias)
    if tokens.dim() != 3:
        raise InputRankError(f"{op}: tokens must be (batch, tokens, dim), got shape {tuple(tokens.shape)}")
    if tokens.shape[0] == 0:
        raise EmptyBatchError(f"{op}: tokens has zero clips, shape {tuple(tokens.shape)}")
    length, dim = tokens.shape[1], tokens.shape[2]
    expected = {"pos": (length, dim), "ln_weight": (dim,), "ln_bias": (dim,), "lin_weight": (dim, dim),
                "lin_bias": (dim,)}
    given = {"pos": pos, "ln_weight": ln_weight, "ln_bias": ln_bias, "lin_weight": lin_weight, "lin_bias": lin_bias}
    for name, shape in expected.items():
        if tuple(given[name].shape) != shape:
            raise InputShapeError(f"{op}: {name} must be {shape} for tokens {tuple(tokens.shape)}, "
                                  f"got {tuple(given[name].shape)}")
    if length == 0 or dim == 0:
        raise InputShapeError(f"{op}: tokens has an empty dimension, shape {tuple(tokens.shape)}")


# ---------------------------------------------------------------------------------------------
# the ops, as avfused.reference defines them
# ---------------------------------------------------------------------------------------------
def audio_frontend_stem(
    wave: Tensor,
    low_hz: Tensor,
    band_hz: Tensor,
    stem_weight: Tensor,
    kernel_size: int = 251,
    sample_rate: int = 16000,
    min_low_hz: float = 50.0,
    min_band_hz: float = 50.0,
    preemphasis: float = 0.97,
    log_eps: float = 1e-6,
) -> Tensor:
    """Fused front end + audio stem: wave (B, S) -> (B, C, ceil(S / 4)), as reference.audio_frontend_stem."""
    _check_frontend(wave, low_hz, band_hz, stem_weight)
    x = reference.preemphasis_and_norm(wave.float(), preemphasis)
    filters = reference.sinc_filterbank(
        low_hz.float(), band_hz.float(), kernel_size, sample_rate, min_low_hz, min_band_hz
    )
    out, _ = torch.ops.avfused_ext.frontend_stem(x, filters, stem_weight.float(), float(log_eps))
    return out.to(wave.dtype)


def joint_token_attention(
    tokens: Tensor,
    pos: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    lin_weight: Tensor,
    lin_bias: Tensor,
    eps: float = 1e-5,
) -> Tensor:
    """LayerNorm -> one-head attention (q = k = v) -> Linear -> residual, as reference.joint_token_attention."""
    _check_attention(tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias)
    out = torch.ops.avfused_ext.token_attention(
        tokens.float(), pos.float(), ln_weight.float(), ln_bias.float(), lin_weight.float(), lin_bias.float(),
        float(eps),
    )
    return out.to(tokens.dtype)


# ---------------------------------------------------------------------------------------------
# fake kernels and autograd
# ---------------------------------------------------------------------------------------------
def _register() -> None:
    lib = "avfused_ext::"

    @torch.library.register_fake(lib + "frontend_stem")
    def _frontend_stem_fake(x, filters, stem_weight, log_eps):
        batch, samples = x.shape
        outputs = (samples + reference.STEM_STRIDE - 1) // reference.STEM_STRIDE
        return x.new_empty((batch, stem_weight.shape[0], outputs)), x.new_empty((batch, filters.shape[0]))

    @torch.library.register_fake(lib + "frontend_stem_backward")
    def _frontend_stem_backward_fake(grad_out, x, filters, stem_weight, band_mean, log_eps):
        return x.new_empty(x.shape), filters.new_empty(filters.shape), stem_weight.new_empty(stem_weight.shape)

    @torch.library.register_fake(lib + "token_attention")
    def _token_attention_fake(tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, eps):
        return tokens.new_empty(tokens.shape)

    @torch.library.register_fake(lib + "token_attention_backward")
    def _token_attention_backward_fake(grad_out, tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, eps):
        return tuple(t.new_empty(t.shape) for t in (tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias))

    def frontend_setup(ctx, inputs, output):
        x, filters, stem_weight, log_eps = inputs
        ctx.save_for_backward(x, filters, stem_weight, output[1])
        ctx.log_eps = log_eps

    def frontend_backward(ctx, grad_out, _grad_band_mean):
        # band_mean is an auxiliary output for the backward; gradients through it are not supported
        x, filters, stem_weight, band_mean = ctx.saved_tensors
        grads = torch.ops.avfused_ext.frontend_stem_backward(grad_out, x, filters, stem_weight, band_mean, ctx.log_eps)
        return (*grads, None)

    torch.library.register_autograd(lib + "frontend_stem", frontend_backward, setup_context=frontend_setup)

    def attention_setup(ctx, inputs, output):
        *tensors, eps = inputs
        ctx.save_for_backward(*tensors)
        ctx.eps = eps

    def attention_backward(ctx, grad_out):
        grads = torch.ops.avfused_ext.token_attention_backward(grad_out, *ctx.saved_tensors, ctx.eps)
        return (*grads, None)

    torch.library.register_autograd(lib + "token_attention", attention_backward, setup_context=attention_setup)


if _REASONS["cpu"] is None:
    _register()
