"""Backend "cuda": the C++/CUDA extension (csrc/) as torch.library ops, CPU and GPU.

Ops implemented (same names and signatures as avfused.reference):

    audio_frontend_stem(wave (B, S), low_hz (F,), band_hz (F,), stem_weight (C, F, 7), ...) -> (B, C, ceil(S/4))
    joint_token_attention(tokens (B, L, D), pos (L, D), ln_weight, ln_bias, lin_weight (D, D), lin_bias)
        -> (B, L, D)
    large_kernel_attention(p (N, C, H, W), w5, b5, w7, b7, w1, b1) -> (N, C, H, W)      CPU kernel only
    conv_mlp(x (N, C, H, W), w_in, b_in, w_dw, b_dw, w_out, b_out) -> (N, C, H, W)      CPU kernel only

The first two run forward and backward on the CPU (C++ with OpenMP) and on CUDA. The front end's cheap parts
(pre-emphasis + instance norm over B x S, and the F x K sinc filter generation) stay in torch so
autograd covers them; the op ``avfused_ext::frontend_stem`` does conv + |.| + log + mean removal +
stem without storing the (B, F, S) band energies. Its backward recomputes them (ATen convolutions
around one fused elementwise kernel). The kernels compute in float32: half / bfloat16 / float64
inputs are cast to float32 and the result back to the input dtype.

The two VPM ops have a fused C++ forward for CPU inference (no (N, C, H, W) intermediate in memory).
Their backward would recompute through the reference, which measured slower than the reference alone
(benchmarks/results), so where autograd records (training) the wrappers run the reference; the op's
own autograd formula serves direct callers of ``torch.ops.avfused_ext``. On CUDA tensors they run the
reference (logged once).

Fake kernels and autograd formulas are registered here, so ``torch.compile(fullgraph=True)`` traces
models using these ops. Bad inputs raise avfused.errors exceptions before reaching C++.
"""

from __future__ import annotations

import torch

from avfused import _extension, reference
from avfused.backends import _log_once
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
    _check_kernels_for(op, _check_floats_on_one_device(op, **tensors))


def _check_floats_on_one_device(op: str, **tensors: Tensor) -> torch.device:
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
    return first.device


def _check_kernels_for(op: str, device: torch.device) -> None:
    reason = _REASONS.get(device.type, f"no kernels for {device.type!r} tensors (only cpu and cuda)")
    if reason is not None:
        raise InputDeviceError(f"{op}: cannot run on {device}: {reason}")


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


def _check_images(op: str, name: str, images: Tensor) -> None:
    if images.dim() != 4:
        raise InputRankError(f"{op}: {name} must be (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise EmptyBatchError(f"{op}: {name} has zero images, shape {tuple(images.shape)}")
    if images.numel() == 0:
        raise InputShapeError(f"{op}: {name} has an empty dimension, shape {tuple(images.shape)}")


def _check_shapes(op: str, images: Tensor, expected: dict[str, tuple[tuple, ...]], given: dict[str, Tensor]) -> None:
    """Each given tensor must have one of its expected shapes (a 1x1 conv weight may keep its 1, 1)."""
    for name, shapes in expected.items():
        if tuple(given[name].shape) not in shapes:
            wanted = " or ".join(str(shape) for shape in shapes)
            raise InputShapeError(f"{op}: {name} must be {wanted} for input {tuple(images.shape)}, "
                                  f"got {tuple(given[name].shape)}")


def _check_lka(p: Tensor, w5: Tensor, b5: Tensor, w7: Tensor, b7: Tensor, w1: Tensor, b1: Tensor) -> torch.device:
    op = "large_kernel_attention"
    given = dict(p=p, w5=w5, b5=b5, w7=w7, b7=b7, w1=w1, b1=b1)
    device = _check_floats_on_one_device(op, **given)
    _check_images(op, "p", p)
    c = p.shape[1]
    expected = {"w5": ((c, 1, 5, 5),), "b5": ((c,),), "w7": ((c, 1, 7, 7),), "b7": ((c,),),
                "w1": ((c, c), (c, c, 1, 1)), "b1": ((c,),)}
    _check_shapes(op, p, expected, given)
    return device


def _check_mlp(x: Tensor, w_in: Tensor, b_in: Tensor, w_dw: Tensor, b_dw: Tensor, w_out: Tensor,
               b_out: Tensor) -> torch.device:
    op = "conv_mlp"
    given = dict(x=x, w_in=w_in, b_in=b_in, w_dw=w_dw, b_dw=b_dw, w_out=w_out, b_out=b_out)
    device = _check_floats_on_one_device(op, **given)
    _check_images(op, "x", x)
    c, e = x.shape[1], w_in.shape[0] if w_in.dim() > 0 else 0
    expected = {"w_in": ((e, c), (e, c, 1, 1)), "b_in": ((e,),), "w_dw": ((e, 1, 3, 3),), "b_dw": ((e,),),
                "w_out": ((c, e), (c, e, 1, 1)), "b_out": ((c,),)}
    _check_shapes(op, x, expected, given)
    if e == 0:
        raise InputShapeError(f"{op}: w_in has zero expanded channels, shape {tuple(w_in.shape)}")
    return device


# ops whose CUDA tensors run the reference: the extension has a CPU kernel only
CPU_ONLY_OPS = ("large_kernel_attention", "conv_mlp")


def _autograd_records(*tensors: Tensor) -> bool:
    """True when autograd will need a backward through these tensors."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _reference_on_gpu(op: str):
    """The reference for a VPM op on CUDA tensors: the extension has a CPU kernel only."""
    _log_once(("missing", "cuda", op, "gpu"), "avfused: backend 'cuda' has no GPU kernel for %s; "
              "using the torch reference on CUDA tensors", op)
    return getattr(reference, op)


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


def large_kernel_attention(p: Tensor, w5: Tensor, b5: Tensor, w7: Tensor, b7: Tensor, w1: Tensor, b1: Tensor) -> Tensor:
    """p * (W1 @ dw7x7_dil3(dw5x5(p)) + b1), as reference.large_kernel_attention; returns p's dtype."""
    if _check_lka(p, w5, b5, w7, b7, w1, b1).type == "cuda":
        return _reference_on_gpu("large_kernel_attention")(p, w5, b5, w7, b7, w1, b1)
    if _autograd_records(p, w5, b5, w7, b7, w1, b1):
        # the backward recomputes through the reference anyway: the C++ forward would only add its time
        return reference.large_kernel_attention(p, w5, b5, w7, b7, w1, b1)
    _check_kernels_for("large_kernel_attention", p.device)
    c = p.shape[1]
    out = torch.ops.avfused_ext.large_kernel_attention(
        p.float(), w5.float().reshape(c, 25), b5.float(), w7.float().reshape(c, 49), b7.float(),
        w1.float().reshape(c, c), b1.float(),
    )
    return out.to(p.dtype)


def conv_mlp(x: Tensor, w_in: Tensor, b_in: Tensor, w_dw: Tensor, b_dw: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    """1x1 expand -> depthwise 3x3 -> ReLU -> 1x1 project, as reference.conv_mlp; returns x's dtype."""
    if _check_mlp(x, w_in, b_in, w_dw, b_dw, w_out, b_out).type == "cuda":
        return _reference_on_gpu("conv_mlp")(x, w_in, b_in, w_dw, b_dw, w_out, b_out)
    if _autograd_records(x, w_in, b_in, w_dw, b_dw, w_out, b_out):  # as in large_kernel_attention
        return reference.conv_mlp(x, w_in, b_in, w_dw, b_dw, w_out, b_out)
    _check_kernels_for("conv_mlp", x.device)
    c, e = x.shape[1], w_in.shape[0]
    out = torch.ops.avfused_ext.conv_mlp(
        x.float(), w_in.float().reshape(e, c), b_in.float(), w_dw.float().reshape(e, 9), b_dw.float(),
        w_out.float().reshape(c, e), b_out.float(),
    )
    return out.to(x.dtype)


def _lka_flat(p, w5, b5, w7, b7, w1, b1):
    """reference.large_kernel_attention on the op's flattened weights (w5 (C, 25), w7 (C, 49))."""
    c = p.shape[1]
    return reference.large_kernel_attention(p, w5.reshape(c, 1, 5, 5), b5, w7.reshape(c, 1, 7, 7), b7, w1, b1)


def _mlp_flat(x, w_in, b_in, w_dw, b_dw, w_out, b_out):
    """reference.conv_mlp on the op's flattened depthwise weight (w_dw (E, 9))."""
    return reference.conv_mlp(x, w_in, b_in, w_dw.reshape(-1, 1, 3, 3), b_dw, w_out, b_out)


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

    @torch.library.register_fake(lib + "large_kernel_attention")
    def _large_kernel_attention_fake(p, w5, b5, w7, b7, w1, b1):
        return p.new_empty(p.shape)

    @torch.library.register_fake(lib + "conv_mlp")
    def _conv_mlp_fake(x, w_in, b_in, w_dw, b_dw, w_out, b_out):
        return x.new_empty(x.shape)

    def save_inputs(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    # No C++ backward (the kernels target CPU inference): the gradient recomputes through the reference.
    def recompute_backward(reference_fn):
        def backward(ctx, grad_out):
            _, vjp = torch.func.vjp(reference_fn, *ctx.saved_tensors)
            return vjp(grad_out)

        return backward

    for name, reference_fn in (("large_kernel_attention", _lka_flat), ("conv_mlp", _mlp_flat)):
        torch.library.register_autograd(lib + name, recompute_backward(reference_fn), setup_context=save_inputs)


if _REASONS["cpu"] is None:
    _register()
