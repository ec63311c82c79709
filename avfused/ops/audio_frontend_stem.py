"""``audio_frontend_stem``: the audio front end + stem conv without storing the (B, F, S) band energies.

    audio_frontend_stem(wave (B, S), low_hz (F,), band_hz (F,), stem_weight (C, F, 7), kernel_size=251,
                        sample_rate=16000, min_low_hz=50, min_band_hz=50, preemphasis=0.97,
                        log_eps=1e-6) -> (B, C, ceil(S / 4))

The same function as ``avfused.reference.audio_frontend_stem``, in two backends:

* ``triton`` -- the op ``avfused_triton::audio_frontend_stem`` (kernels/audio_frontend_stem.py); its
  backward op ``avfused_triton::audio_frontend_stem_backward`` is one Triton kernel too: per tile of time
  it recomputes the band responses, forms their gradient in registers and a small scratch, and never
  writes a (B, F, S) tensor; the tap and stem-weight gradients are summed over its programs in float64.
* ``ext`` -- the op ``avfused_ext::audio_frontend_stem`` of the C++/CUDA extension
  (csrc/audio_frontend_stem/); its backward ``avfused_ext::audio_frontend_stem_backward`` is fused too:
  it tiles time, recomputes each tile's band responses and accumulates the gradients of the stem weight,
  the filters and x without writing any (B, F, S) tensor (working memory: per-thread tiles and
  accumulators on the CPU, shared memory on the GPU). It computes only the gradients autograd asks for:
  in a model the wave needs none, so dx is skipped. On the CPU its forward is by FFT for filters of up to 765 taps
  (csrc/audio_frontend_stem/audio_frontend_stem_fft_cpu.cpp: overlap-save in 1024-sample windows, two filters
  per complex transform, the same log, exact recompute and stem after it): at the model's 251 taps about a
  tenth of the direct sum's arithmetic; ``formulation="direct"`` keeps the sum.

Both take the normalised wave x, the filters h and the stem weight, and return the stem output and the
per-filter means m (B, F). The cheap parts, pre-emphasis + instance norm (B, S) and the sinc filterbank
(F, K), stay in torch so autograd covers them, in float64 for both backends (fp32 sin() of ~400 rad and
the norm's cancellation would dominate the error). Mean removal is applied analytically because the stem
is linear: stem(a - m)[o] = stem(a)[o] - sum_{f, j valid at o} w[:, f, j] m_f.

Accuracy of ``ext`` at the default log_eps = 1e-6 (docs/design.md, section 4). log(|y| + eps) and its
derivative sign(y) / (|y| + eps) magnify the float32 rounding of a band response y near zero, so the kernels
recompute in float64, from the float64 x and filters, every response with

    |y[b, f, t]| < exact_below * ||h_f||_2 * rms(x[b, t - K/2 .. t + K/2])     (exact_below = 1e-3)

(about a thousand times the scale of y's float32 rounding, u sqrt(K) ||h_f|| rms, so that elsewhere the
relative rounding of y and dy stays below about 1e-3), in the forward (its log) and the
backward (its log and dy, whose share of dh and dx is added in float64; dh and dw accumulate in float64
anyway). Measured on the small model (one clip, seed 1, norm-relative error against float64), the sinc
cut-off gradients: PyTorch fp32 136 % / 163 %, float64 set-up alone 22 % / 8 %, with the recompute
1.2e-6 / 1.6e-6; every other gradient at least as close to float64 as PyTorch's. It recomputes about 0.4 %
of the responses of a noise-like clip (a fraction that grows with exact_below); cost: README, Backends.
The filters are passed as linear phase (``linear_phase=True``): the kernels fold taps k and K-1-k, and the
filter gradient is the one for (h + flip(h)) / 2.
"""

from __future__ import annotations

import torch

from avfused import reference
from avfused.errors import InputShapeError
from avfused.ops._common import (
    EXT_REASONS,
    FLOAT32_ONLY,
    check_non_empty,
    check_rank,
    check_shape,
    check_tensors,
    float32_contiguous,
    register_autocast,
)

Tensor = torch.Tensor
OP = "audio_frontend_stem"
EXT_DEVICES = ("cpu", "cuda")  # where the extension has kernels for this op
STRIDE = reference.STEM_STRIDE
TAPS = reference.STEM_KERNEL


def check_inputs(backend: str, wave: Tensor, low_hz: Tensor, band_hz: Tensor, stem_weight: Tensor,
                 kernel_size: int) -> None:
    """The op's one validator for both backends: named errors before any kernel runs."""
    check_tensors(OP, backend, wave=wave, low_hz=low_hz, band_hz=band_hz, stem_weight=stem_weight)
    check_rank(OP, "wave", wave, 2, "(B, S)")
    check_non_empty(OP, "wave", wave, "(B, S)", "clips")
    check_rank(OP, "low_hz", low_hz, 1, "(F,)")
    filters = low_hz.shape[0]
    check_shape(OP, "band_hz", band_hz, (filters,), "(F,)")
    check_shape(OP, "stem_weight", stem_weight, (None, filters, TAPS), "(C, F, 7)")
    if filters == 0 or stem_weight.shape[0] == 0:
        raise InputShapeError(f"{OP}: empty input: {filters} filters, stem_weight {tuple(stem_weight.shape)}")
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise InputShapeError(f"{OP}: kernel_size must be a positive odd number of taps, got {kernel_size}")


# The last float64 filterbank built with gradients off, with what it was built from: inference calls the op with
# the same cut-offs every time, and building the filters (F x K sines in float64) costs ~1.5 ms a call.
_last_filters: tuple | None = None


def float64_filters(low_hz: Tensor, band_hz: Tensor, kernel_size: int, sample_rate: int, min_low_hz: float,
                    min_band_hz: float) -> Tensor:
    """``reference.sinc_filterbank`` in float64 (both backends' filters). With gradients off (torch.no_grad,
    inference mode), the last such call's filters are reused when the cut-offs are equal in value (not only the
    same tensors: an optimiser step changes them in place) and every setting is the same. Only then: a call that
    autograd records may save the filters for its backward, which an inference-mode tensor cannot be."""
    global _last_filters
    settings = (kernel_size, sample_rate, min_low_hz, min_band_hz, low_hz.dtype, band_hz.dtype, low_hz.device)
    cached = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
    if cached and _last_filters is not None:
        low, band, built_with, filters = _last_filters
        if (built_with == settings and low.shape == low_hz.shape and band.shape == band_hz.shape
                and torch.equal(low, low_hz) and torch.equal(band, band_hz)):
            return filters
    filters = reference.sinc_filterbank(low_hz.double(), band_hz.double(), kernel_size, sample_rate, min_low_hz,
                                        min_band_hz)
    if cached:
        _last_filters = (low_hz.detach().clone(), band_hz.detach().clone(), settings, filters)
    return filters


# ---------------------------------------------------------------------------------------------
# triton
# ---------------------------------------------------------------------------------------------
def _valid_taps(samples: int, outputs: int, like: Tensor) -> Tensor:
    """(7, O) float mask: stem tap j of output o reads position 4o + j - 3 inside [0, S)."""
    starts = STRIDE * torch.arange(outputs, device=like.device) - TAPS // 2
    positions = starts[None, :] + torch.arange(TAPS, device=like.device)[:, None]
    return ((positions >= 0) & (positions < samples)).to(like.dtype)


# Band responses |y| below this fraction of |h_f|_2 * rms(x) are recomputed in float64 (kernels/
# audio_frontend_stem.py): there fp32's rounding of y (about 1e-6 |h| |x|) would dominate log(|y| + eps)
# and its gradient. About 1e-3 of the samples; measured against float64, it takes the tap gradients from
# ~1e-2 (fp32 throughout) to ~1e-4.
RESCUE_RATIO = 2e-4


def _kernel_inputs(x: Tensor, filters: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(x, filters) in float32 for the kernels' dot products, and the per-(clip, filter) rescue thresholds."""
    x32, filters32 = x.float().contiguous(), filters.float().contiguous()
    rms = x32.square().mean(dim=1).sqrt()
    threshold = RESCUE_RATIO * rms[:, None] * filters32.norm(dim=1)[None, :]
    return x32, filters32, threshold.contiguous()


@torch.library.custom_op("avfused_triton::audio_frontend_stem", mutates_args=())
def triton_forward(x: Tensor, filters: Tensor, stem_weight: Tensor, log_eps: float) -> tuple[Tensor, Tensor]:
    """x (B, S), filters (F, K): float32 or float64 (the rescue then recomputes from the exact values);
    stem_weight (C, F, 7) float32; all contiguous -> float32 (out (B, C, O), mean (B, F))."""
    from avfused.kernels.audio_frontend_stem import launch_forward

    samples = x.shape[1]
    x32, filters32, threshold = _kernel_inputs(x, filters)
    same, nxt, sums = launch_forward(x32, filters32, x, filters, threshold, stem_weight, log_eps)
    mean = sums.sum(dim=1) / samples
    out = same.clone()
    out[:, :, 1:] += nxt[:, :, :-1]
    mean_taps = torch.einsum("bf,cfj->bcj", mean, stem_weight)
    out -= torch.einsum("bcj,jo->bco", mean_taps, _valid_taps(samples, out.shape[2], out))
    return out, mean


@triton_forward.register_fake
def _(x: Tensor, filters: Tensor, stem_weight: Tensor, log_eps: float) -> tuple[Tensor, Tensor]:
    batch, samples = x.shape
    outputs = -(-samples // STRIDE)
    return (x.new_empty(batch, stem_weight.shape[0], outputs, dtype=torch.float32),
            x.new_empty(batch, filters.shape[0], dtype=torch.float32))


@torch.library.custom_op("avfused_triton::audio_frontend_stem_backward", mutates_args=())
def triton_backward(
    grad: Tensor, x: Tensor, filters: Tensor, stem_weight: Tensor, mean: Tensor, log_eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dx, dfilters, dstem_weight) of triton_forward's first output, in one Triton kernel; each in
    its input's dtype (float64 x and filters get float64 gradients, their sums never rounded to fp32)."""
    from avfused.kernels.audio_frontend_stem import launch_backward

    samples, outputs = x.shape[1], grad.shape[2]
    per_output_tap = torch.einsum("bco,jo->bcj", grad, _valid_taps(samples, outputs, grad))
    # dL/dm (B, F): the mean is subtracted at every valid tap; spread back as -dL/dm / S over [0, S)
    mean_grad = torch.einsum("cfj,bcj->bf", stem_weight, per_output_tap)
    x32, filters32, threshold = _kernel_inputs(x, filters)
    dx, d_filters, d_weight = launch_backward(grad, x32, filters32, x, filters, threshold, stem_weight,
                                              (mean_grad / samples).contiguous(), log_eps)
    d_weight -= torch.einsum("bf,bcj->cfj", mean.double(), per_output_tap.double())
    return dx.to(x.dtype), d_filters.to(filters.dtype), d_weight.to(stem_weight.dtype)


@triton_backward.register_fake
def _(grad, x, filters, stem_weight, mean, log_eps):
    return x.new_empty(x.shape), filters.new_empty(filters.shape), stem_weight.new_empty(stem_weight.shape)


def _triton_setup_context(ctx, inputs, output) -> None:
    x, filters, stem_weight, log_eps = inputs
    _, mean = output
    ctx.save_for_backward(x, filters, stem_weight, mean)
    ctx.log_eps = log_eps
    ctx.mark_non_differentiable(mean)


def _triton_autograd(ctx, grad_out: Tensor, grad_mean: Tensor | None):
    x, filters, stem_weight, mean = ctx.saved_tensors
    dx, d_filters, d_weight = triton_backward(grad_out.contiguous(), x, filters, stem_weight, mean, ctx.log_eps)
    return dx, d_filters, d_weight, None


triton_forward.register_autograd(_triton_autograd, setup_context=_triton_setup_context)


def triton(
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
    """The Triton backend of the op: (B, S) -> (B, C, ceil(S/4)), in wave's dtype."""
    check_inputs("triton", wave, low_hz, band_hz, stem_weight, kernel_size)
    x = reference.preemphasis_and_norm(wave.double(), preemphasis)
    filters = float64_filters(low_hz, band_hz, kernel_size, sample_rate, min_low_hz, min_band_hz)
    out, _ = triton_forward(x.contiguous(), filters.contiguous(), float32_contiguous(stem_weight), float(log_eps))
    return out.to(wave.dtype)


# ---------------------------------------------------------------------------------------------
# ext: the C++/CUDA extension
# ---------------------------------------------------------------------------------------------
# Responses with |y| < EXACT_BELOW * ||h_f||_2 * rms(their inputs) are recomputed in float64 (module docstring).
EXACT_BELOW = 1e-3


def ext(
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
    exact_below: float = EXACT_BELOW,
    formulation: str = "auto",
) -> Tensor:
    """The extension backend of the op: (B, S) -> (B, C, ceil(S/4)), in wave's dtype (computed in float32).

    ``exact_below``: the threshold of the float64 recompute of near-zero band responses (0 turns it off).
    ``formulation`` of the forward: ``"direct"`` (the sum over taps), ``"fft"`` (overlap-save in 1024-sample
    windows, CPU only) or ``"auto"`` (the FFT on the CPU for filters of up to 765 taps, direct elsewhere); the
    backward is direct in every case.
    """
    check_inputs("ext", wave, low_hz, band_hz, stem_weight, kernel_size)
    x = reference.preemphasis_and_norm(wave.double(), preemphasis)
    filters = float64_filters(low_hz, band_hz, kernel_size, sample_rate, min_low_hz, min_band_hz)
    out, _ = torch.ops.avfused_ext.audio_frontend_stem(
        x, filters, stem_weight.float(), float(log_eps), float(exact_below), True, formulation
    )
    return out.to(wave.dtype)


def _register_ext() -> None:
    """Fakes and autograd of the extension's ops (their schemas and kernels come from csrc/)."""

    @torch.library.register_fake("avfused_ext::audio_frontend_stem")
    def _(x, filters, stem_weight, log_eps, exact_below=EXACT_BELOW, linear_phase=False, formulation="auto"):
        batch, samples = x.shape
        outputs = (samples + STRIDE - 1) // STRIDE
        return (x.new_empty((batch, stem_weight.shape[0], outputs), dtype=torch.float32),
                x.new_empty((batch, filters.shape[0]), dtype=torch.float32))

    @torch.library.register_fake("avfused_ext::audio_frontend_stem_backward")
    def _(grad_out, x, filters, stem_weight, band_mean, log_eps, exact_below=EXACT_BELOW, linear_phase=False,
          output_mask=(True, True, True)):
        inputs = (x, filters, stem_weight)
        return tuple(t.new_empty(t.shape if wanted else (0,)) for t, wanted in zip(inputs, output_mask, strict=True))

    def setup_context(ctx, inputs, output):
        x, filters, stem_weight, log_eps, *flags = inputs
        ctx.save_for_backward(x, filters, stem_weight, output[1])
        ctx.log_eps = log_eps
        ctx.flags = flags  # exact_below, linear_phase (, formulation) where given (else the schema's defaults)

    def backward(ctx, grad_out, _grad_band_mean):
        # band_mean is an auxiliary output for the backward; gradients through it are not supported
        x, filters, stem_weight, band_mean = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:3])
        exact_below, linear_phase = (list(ctx.flags) + [EXACT_BELOW, False][len(ctx.flags):])[:2]
        grads = torch.ops.avfused_ext.audio_frontend_stem_backward(
            grad_out, x, filters, stem_weight, band_mean, ctx.log_eps, exact_below, linear_phase, mask
        )
        non_tensor = [None] * (1 + len(ctx.flags))  # log_eps and the flags given
        return (*(g if wanted else None for g, wanted in zip(grads, mask, strict=True)), *non_tensor)

    torch.library.register_autograd("avfused_ext::audio_frontend_stem", backward, setup_context=setup_context)


# the wave stays float32 (or float64) under autocast: log|y| of a half-precision band response loses the signal
register_autocast("avfused_triton::audio_frontend_stem", (0,), FLOAT32_ONLY)
if EXT_REASONS["cpu"] is None:
    _register_ext()
    register_autocast("avfused_ext::audio_frontend_stem", (0,), FLOAT32_ONLY)
