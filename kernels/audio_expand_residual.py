"""Triton kernels of ``audio_expand_residual`` from the interpolated signal on: scale * audio + bias +
Conv1d(1 -> C, K, 'same')(signal), forward and backward, in one pass over the audio each. The linear
interpolation of the tokens to the signal (one channel, small) is torch's, in the op's wrapper.

Inputs (contiguous; audio float32, or fp16 / bf16 on a GPU; products in the input's precision with fp32
accumulation): audio (B, C, L), signal (B, L), weight (C, K), bias (C,), scale (C,).

Forward: one program per (clip, block of BLOCK_L positions) and block of channels: the convolution as a
(C, K) x (K, BLOCK_L) product with the signal gathered at l + k - K // 2.

Backward: d_audio = scale g; fp32 partials per program (summed in float64 by the caller) d_scale += g audio,
d_bias += g, d_weight += g S^T (S[k, l] = signal(l + k - K // 2)); the signal's gradient: V = weight^T g
(K, BLOCK_L), each V[k, l] added (atomically) at l + k - K // 2.

    launch_forward(audio, signal, weight, bias, scale) -> (B, C, L) in audio's dtype
    launch_backward(grad, audio, signal, weight, scale) -> d_audio, d_signal (B, L) float32, d_weight (C, K),
        d_bias (C,), d_scale (C,)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from avfused.kernels._common import dot, dot_kind, split_sums


@triton.jit
def _shifted_signal(signal_ptr, taps, tap_ok, pos, ok, L, K):
    """S[k, l] = signal(l + k - K // 2), zero past the ends (the convolution's padding)."""
    source = pos[None, :] + taps[:, None] - K // 2
    inside = ok[None, :] & tap_ok[:, None] & (source >= 0) & (source < L)
    return tl.load(signal_ptr + source, mask=inside, other=0.0).to(tl.float32), source, inside


@triton.jit
def _forward_kernel(
    audio_ptr, signal_ptr, w_ptr, b_ptr, scale_ptr, out_ptr, C, L, K,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    clip = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    ok = pos < L
    taps = tl.arange(0, BLOCK_K)
    tap_ok = taps < K
    shifted, _, _ = _shifted_signal(signal_ptr + clip.to(tl.int64) * L, taps, tap_ok, pos, ok, L, K)
    for c0 in range(0, C, BLOCK_C):
        chans = c0 + tl.arange(0, BLOCK_C)
        chan_ok = chans < C
        own = clip.to(tl.int64) * C * L + chans[:, None] * L + pos[None, :]
        mask = chan_ok[:, None] & ok[None, :]
        audio = tl.load(audio_ptr + own, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + chans[:, None] * K + taps[None, :], mask=chan_ok[:, None] & tap_ok[None, :], other=0.0)
        scale = tl.load(scale_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
        bias = tl.load(b_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
        out = scale * audio + bias + dot(w, shifted, DOT)
        tl.store(out_ptr + own, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(
    grad_ptr, audio_ptr, signal_ptr, w_ptr, scale_ptr, d_audio_ptr, d_signal_ptr, part_ptr, C, L, K,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    clip = tl.program_id(0)
    program = clip * tl.num_programs(1) + tl.program_id(1)
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    ok = pos < L
    taps = tl.arange(0, BLOCK_K)
    tap_ok = taps < K
    shifted, source, inside = _shifted_signal(signal_ptr + clip.to(tl.int64) * L, taps, tap_ok, pos, ok, L, K)
    # partial slot: d_weight (C, K) | d_bias (C) | d_scale (C)
    part = part_ptr + program.to(tl.int64) * (C * K + 2 * C)
    spread = tl.zeros((BLOCK_K, BLOCK_L), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        chans = c0 + tl.arange(0, BLOCK_C)
        chan_ok = chans < C
        own = clip.to(tl.int64) * C * L + chans[:, None] * L + pos[None, :]
        mask = chan_ok[:, None] & ok[None, :]
        g = tl.load(grad_ptr + own, mask=mask, other=0.0).to(tl.float32)
        audio = tl.load(audio_ptr + own, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(d_audio_ptr + own, (scale * g).to(d_audio_ptr.dtype.element_ty), mask=mask)
        tl.store(part + C * K + chans, tl.sum(g, axis=1), mask=chan_ok)
        tl.store(part + C * K + C + chans, tl.sum(g * audio, axis=1), mask=chan_ok)
        w_mask = chan_ok[:, None] & tap_ok[None, :]
        tl.store(part + chans[:, None] * K + taps[None, :], tl.dot(g, tl.trans(shifted), input_precision="ieee"),
                 mask=w_mask)
        w_t = tl.load(w_ptr + chans[None, :] * K + taps[:, None], mask=tap_ok[:, None] & chan_ok[None, :], other=0.0)
        spread += dot(w_t, g, DOT)
    tl.atomic_add(d_signal_ptr + clip.to(tl.int64) * L + source, spread, mask=inside)


def _blocks(channels: int, length: int, taps: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_L, BLOCK_K), each at least 16 (tl.dot's smallest side): 32 channels x 64 positions on a
    GPU; up to 64 channels x 1024 positions under the interpreter (each Triton op costs it the same)."""
    block_k = max(16, triton.next_power_of_2(taps))
    if device.type == "cuda":
        return 32, 64, block_k
    return max(16, min(64, triton.next_power_of_2(channels))), max(16, min(1024, triton.next_power_of_2(length))), \
        block_k


def launch_forward(audio: torch.Tensor, signal: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   scale: torch.Tensor) -> torch.Tensor:
    clips, channels, length = audio.shape
    taps = weight.shape[1]
    block_c, block_l, block_k = _blocks(channels, length, taps, audio.device)
    out = torch.empty_like(audio)
    _forward_kernel[(clips, triton.cdiv(length, block_l))](
        audio, signal, weight, bias, scale, out, channels, length, taps,
        BLOCK_C=block_c, BLOCK_L=block_l, BLOCK_K=block_k, DOT=dot_kind(audio.dtype, audio.device),
    )  # fmt: skip
    return out


def launch_backward(grad: torch.Tensor, audio: torch.Tensor, signal: torch.Tensor, weight: torch.Tensor,
                    scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
    clips, channels, length = audio.shape
    taps = weight.shape[1]
    block_c, block_l, block_k = _blocks(channels, length, taps, audio.device)
    grid = (clips, triton.cdiv(length, block_l))
    d_audio = torch.empty_like(audio)
    d_signal = torch.zeros(clips, length, device=audio.device, dtype=torch.float32)
    partials = torch.empty(grid[0] * grid[1], channels * taps + 2 * channels, device=audio.device,
                           dtype=torch.float32)
    _backward_kernel[grid](
        grad, audio, signal, weight, scale, d_audio, d_signal, partials, channels, length, taps,
        BLOCK_C=block_c, BLOCK_L=block_l, BLOCK_K=block_k, DOT=dot_kind(audio.dtype, audio.device),
    )  # fmt: skip
    d_weight, d_bias, d_scale = split_sums(partials, [channels * taps, channels, channels], weight.dtype)
    return d_audio, d_signal, d_weight.reshape(channels, taps), d_bias, d_scale
