"""Triton ``audio_frontend_stem``: front end + stem conv without storing the (B, F, S) band energies.

    audio_frontend_stem(wave (B, S), low_hz (F,), band_hz (F,), stem_weight (C, F, 7), ...) -> (B, C, ceil(S/4))

Split: pre-emphasis + instance norm (B, S) and the sinc filterbank (F, K) are tiny and stay in torch,
in float64 (autograd differentiates them; fp32 sin() of ~400 rad would dominate the error). The
torch.library op ``avfused_triton::frontend_stem`` takes the normalised wave x, the filters h and the
stem weight and returns the stem output and the per-filter means m (B, F). Its forward is one Triton
kernel (kernels/audio_frontend_stem.py). Its backward recomputes the band energies in chunks of time
(a few MB each) with torch convolutions, so the (B, F, S) tensor never exists whole in either direction.

Mean removal is applied analytically because the stem is linear:
stem(a - m)[o] = stem(a)[o] - sum_{f, j valid at o} w[:, f, j] m_f.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from avfused import reference
from avfused.errors import InputShapeError
from avfused.kernels.audio_frontend_stem import launch_frontend_stem_forward
from avfused.ops.triton_checks import check_rank, check_shape, check_tensors, compute_copy

Tensor = torch.Tensor
OP = "audio_frontend_stem"
STRIDE = reference.STEM_STRIDE
TAPS = reference.STEM_KERNEL
# elements of one (B, F, chunk) intermediate in the chunked backward: 4M floats = 16 MB
BACKWARD_CHUNK_ELEMENTS = 1 << 22


def _valid_taps(samples: int, outputs: int, like: Tensor) -> Tensor:
    """(7, O) float mask: stem tap j of output o reads position 4o + j - 3 inside [0, S)."""
    starts = STRIDE * torch.arange(outputs, device=like.device) - TAPS // 2
    positions = starts[None, :] + torch.arange(TAPS, device=like.device)[:, None]
    return ((positions >= 0) & (positions < samples)).to(like.dtype)


@torch.library.custom_op("avfused_triton::frontend_stem", mutates_args=())
def frontend_stem(x: Tensor, filters: Tensor, stem_weight: Tensor, log_eps: float) -> tuple[Tensor, Tensor]:
    """x (B, S), filters (F, K), stem_weight (C, F, 7), all float32 contiguous -> (out (B, C, O), mean (B, F))."""
    samples = x.shape[1]
    same, nxt, sums = launch_frontend_stem_forward(x, filters, stem_weight, log_eps)
    mean = sums.sum(dim=1) / samples
    out = same.clone()
    out[:, :, 1:] += nxt[:, :, :-1]
    mean_taps = torch.einsum("bf,cfj->bcj", mean, stem_weight)
    out -= torch.einsum("bcj,jo->bco", mean_taps, _valid_taps(samples, out.shape[2], out))
    return out, mean


@frontend_stem.register_fake
def _(x: Tensor, filters: Tensor, stem_weight: Tensor, log_eps: float) -> tuple[Tensor, Tensor]:
    batch, samples = x.shape
    outputs = -(-samples // STRIDE)
    return x.new_empty(batch, stem_weight.shape[0], outputs), x.new_empty(batch, filters.shape[0])


@torch.library.custom_op("avfused_triton::frontend_stem_backward", mutates_args=())
def frontend_stem_backward(
    grad: Tensor, x: Tensor, filters: Tensor, stem_weight: Tensor, mean: Tensor, log_eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dx, dfilters, dstem_weight) of frontend_stem's first output, recomputing in time chunks."""
    batch, samples = x.shape
    num_filters, taps = filters.shape
    half = taps // 2
    outputs = grad.shape[2]
    per_output_tap = torch.einsum("bco,jo->bcj", grad, _valid_taps(samples, outputs, grad))
    # dL/dm (B, F): the mean is subtracted at every valid tap; spread back as -dL/dm / S over [0, S)
    mean_grad = torch.einsum("cfj,bcj->bf", stem_weight, per_output_tap)
    d_weight = -torch.einsum("bf,bcj->cfj", mean, per_output_tap)
    d_filters = torch.zeros_like(filters)
    # positions -3 - half .. 4 O - 1 + half, so every chunk window is a plain slice
    x_padded = F.pad(x, (half + TAPS // 2, STRIDE * outputs - samples + half))
    dx_padded = torch.zeros_like(x_padded)
    kernel = filters[:, None, :]
    chunk = max(1, BACKWARD_CHUNK_ELEMENTS // (STRIDE * batch * num_filters))
    for o0 in range(0, outputs, chunk):
        o1 = min(outputs, o0 + chunk)
        first = STRIDE * o0 - TAPS // 2  # first position the stem reads for outputs o0..o1-1
        span = STRIDE * (o1 - o0) + TAPS - STRIDE
        window = x_padded[:, STRIDE * o0 : STRIDE * o0 + span + taps - 1]
        y = F.conv1d(window[:, None, :], kernel)
        positions = first + torch.arange(span, device=x.device)
        inside = ((positions >= 0) & (positions < samples)).to(y.dtype)
        bands = torch.log(y.abs() + log_eps) * inside
        grad_chunk = grad[:, :, o0:o1]
        d_weight += torch.nn.grad.conv1d_weight(bands, stem_weight.shape, grad_chunk, stride=STRIDE)
        d_bands = F.conv_transpose1d(grad_chunk, stem_weight, stride=STRIDE)
        owned = ((positions >= STRIDE * o0) & (positions < STRIDE * o1)).to(y.dtype)
        d_bands = (d_bands - owned * mean_grad[:, :, None] / samples) * inside
        d_y = d_bands * torch.sign(y) / (y.abs() + log_eps)
        d_filters += torch.nn.grad.conv1d_weight(window[:, None, :], kernel.shape, d_y)[:, 0]
        dx_padded[:, STRIDE * o0 : STRIDE * o0 + span + taps - 1] += F.conv_transpose1d(d_y, kernel)[:, 0]
    dx = dx_padded[:, half + TAPS // 2 : half + TAPS // 2 + samples].contiguous()
    return dx, d_filters.contiguous(), d_weight.contiguous()  # strides as the fake promises


@frontend_stem_backward.register_fake
def _(grad, x, filters, stem_weight, mean, log_eps):
    return x.new_empty(x.shape), filters.new_empty(filters.shape), stem_weight.new_empty(stem_weight.shape)


def _setup_context(ctx, inputs, output) -> None:
    x, filters, stem_weight, log_eps = inputs
    _, mean = output
    ctx.save_for_backward(x, filters, stem_weight, mean)
    ctx.log_eps = log_eps
    ctx.mark_non_differentiable(mean)


def _backward(ctx, grad_out: Tensor, grad_mean: Tensor | None):
    x, filters, stem_weight, mean = ctx.saved_tensors
    dx, d_filters, d_weight = frontend_stem_backward(grad_out.contiguous(), x, filters, stem_weight, mean, ctx.log_eps)
    return dx, d_filters, d_weight, None


frontend_stem.register_autograd(_backward, setup_context=_setup_context)


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
    """Same as ``avfused.reference.audio_frontend_stem``: (B, S) -> (B, C, ceil(S/4)), in wave's dtype."""
    check_tensors(OP, wave=wave, low_hz=low_hz, band_hz=band_hz, stem_weight=stem_weight)
    check_rank(OP, "wave", wave, 2, "(B, S)")
    check_rank(OP, "low_hz", low_hz, 1, "(F,)")
    num_filters = low_hz.shape[0]
    check_shape(OP, "band_hz", band_hz, (num_filters,), "(F,)")
    check_shape(OP, "stem_weight", stem_weight, (None, num_filters, TAPS), "(C, F, 7)")
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise InputShapeError(f"{OP}: kernel_size must be a positive odd number of taps, got {kernel_size}")
    if wave.shape[0] == 0 or wave.shape[1] == 0 or num_filters == 0 or stem_weight.shape[0] == 0:
        raise InputShapeError(f"{OP}: empty input: wave {tuple(wave.shape)}, {num_filters} filters")
    # the small (B, S) and (F, K) parts run in float64: sin(2 pi f t) of ~400 rad and the norm's
    # cancellation would otherwise dominate the error of the whole op
    x = reference.preemphasis_and_norm(wave.double(), preemphasis)
    filters = reference.sinc_filterbank(
        low_hz.double(), band_hz.double(), kernel_size, sample_rate, min_low_hz, min_band_hz
    )
    out, _ = frontend_stem(compute_copy(x), compute_copy(filters), compute_copy(stem_weight), float(log_eps))
    return out.to(wave.dtype)
