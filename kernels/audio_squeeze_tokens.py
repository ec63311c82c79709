"""Triton kernels of ``audio_squeeze_tokens`` up to the pooling: the one-channel signal
to_one * ReLU(Conv1d(C -> C, 3)(audio) + bias) + to_one_bias ('same' zero padding), forward and backward,
without writing the (B, C, L) hidden layer. The pooling of the signal into tokens (one channel, small) is
torch's, in the op's wrapper.

Inputs (contiguous; audio float32, or fp16 / bf16 on a GPU; products in the input's precision with fp32
accumulation): audio (B, C, L), weight (3, C, C) (tap-major), bias (C,), to_one (K, C) (tap-major: to_one[k]
is the weights of tap k of the C -> 1 convolution, K odd).

Forward: one program per (clip, block of BLOCK_L positions): the hidden layer on the block (three (C, C) x
(C, BLOCK_L) products), u = to_one @ hidden (K, BLOCK_L), and each u[k, l] added (atomically) to the signal
at l - k + K // 2.

Backward (d_s: the signal's gradient): D[k, l] = d_s(l - k + K // 2), d_hidden = (to_one^T D) (pre > 0);
per program fp32 partials d_to_one += D hidden^T, d_bias += d_hidden, d_weight[k] += d_hidden audio(l + k - 1)^T
(summed in float64 by the caller), and d_audio(l) = sum_k weight[k]^T d_hidden(l - k + 1), with d_hidden
recomputed at the two shifted blocks.

    launch_signal(audio, weight, bias, to_one, to_one_bias) -> signal (B, L) float32
    launch_backward(d_signal, audio, weight, bias, to_one) -> d_audio, d_weight (3, C, C), d_bias (C,),
        d_to_one (K, C)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from avfused.kernels._common import dot, dot_kind, split_sums
from avfused.kernels.audio_squeeze_stats import blocks, conv3_at


@triton.jit
def _forward_kernel(
    audio_ptr, w_ptr, b_ptr, to_one_ptr, signal_ptr, C, L, K,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    clip = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    ok = pos < L
    chans = tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    taps = tl.arange(0, BLOCK_K)
    tap_ok = taps < K
    clip_ptr = audio_ptr + clip.to(tl.int64) * C * L
    pre = conv3_at(clip_ptr, w_ptr, chans, chan_ok, pos, ok, C, L, BLOCK_C, BLOCK_L, DOT)
    pre += tl.load(b_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
    hidden = tl.where(ok[None, :] & (pre > 0), pre, 0.0)  # zero past the ends: the C -> 1 conv's padding
    to_one = tl.load(to_one_ptr + taps[:, None] * C + chans[None, :], mask=tap_ok[:, None] & chan_ok[None, :],
                     other=0.0)
    u = dot(to_one, hidden, DOT)
    target = pos[None, :] - taps[:, None] + K // 2
    inside = ok[None, :] & tap_ok[:, None] & (target >= 0) & (target < L)
    tl.atomic_add(signal_ptr + clip.to(tl.int64) * L + target, u, mask=inside)


@triton.jit
def _hidden_gradient(clip_ptr, d_signal_ptr, w_ptr, bias, to_one_t, chans, chan_ok, taps, tap_ok, pos, ok, C, L, K,
                     BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, DOT: tl.constexpr):
    """(d_hidden, pre, D) at positions ``pos``: D[k, l] = d_signal(l - k + K // 2)."""
    pre = conv3_at(clip_ptr, w_ptr, chans, chan_ok, pos, ok, C, L, BLOCK_C, BLOCK_L, DOT) + bias
    target = pos[None, :] - taps[:, None] + K // 2
    inside = ok[None, :] & tap_ok[:, None] & (target >= 0) & (target < L)
    spread = tl.load(d_signal_ptr + target, mask=inside, other=0.0)
    d_hidden = tl.where(ok[None, :] & (pre > 0), tl.dot(to_one_t, spread, input_precision="ieee"), 0.0)
    return d_hidden, pre, spread


@triton.jit
def _backward_kernel(
    d_signal_ptr, audio_ptr, w_ptr, b_ptr, to_one_ptr, d_audio_ptr, part_ptr, C, L, K,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    clip = tl.program_id(0)
    program = clip * tl.num_programs(1) + tl.program_id(1)
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    ok = pos < L
    chans = tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    taps = tl.arange(0, BLOCK_K)
    tap_ok = taps < K
    clip_ptr = audio_ptr + clip.to(tl.int64) * C * L
    d_signal_clip = d_signal_ptr + clip.to(tl.int64) * L
    bias = tl.load(b_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
    to_one_t = tl.load(to_one_ptr + taps[None, :] * C + chans[:, None], mask=chan_ok[:, None] & tap_ok[None, :],
                       other=0.0).to(tl.float32)
    # partial slot: d_weight (3, C, C) | d_bias (C) | d_to_one (K, C)
    part = part_ptr + program.to(tl.int64) * (3 * C * C + C + K * C)
    d_hidden, pre, spread = _hidden_gradient(clip_ptr, d_signal_clip, w_ptr, bias, to_one_t, chans, chan_ok, taps,
                                             tap_ok, pos, ok, C, L, K, BLOCK_C, BLOCK_L, DOT)
    hidden = tl.where(ok[None, :] & (pre > 0), pre, 0.0)
    tl.store(part + 3 * C * C + C + taps[:, None] * C + chans[None, :],
             tl.dot(spread, tl.trans(hidden), input_precision="ieee"), mask=tap_ok[:, None] & chan_ok[None, :])
    tl.store(part + 3 * C * C + chans, tl.sum(d_hidden, axis=1), mask=chan_ok)
    weight_mask = chan_ok[:, None] & chan_ok[None, :]
    d_audio = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    for k in tl.static_range(3):
        shifted = pos + (k - 1)
        inside = ok & (shifted >= 0) & (shifted < L)
        a = tl.load(clip_ptr + chans[:, None] * L + shifted[None, :], mask=chan_ok[:, None] & inside[None, :],
                    other=0.0).to(tl.float32)
        tl.store(part + k * C * C + chans[:, None] * C + chans[None, :],
                 tl.dot(d_hidden, tl.trans(a), input_precision="ieee"), mask=weight_mask)
        if k == 1:
            d_hidden_n = d_hidden
        else:
            back = pos - (k - 1)
            d_hidden_n, _, _ = _hidden_gradient(clip_ptr, d_signal_clip, w_ptr, bias, to_one_t, chans, chan_ok, taps,
                                                tap_ok, back, ok & (back >= 0) & (back < L), C, L, K, BLOCK_C,
                                                BLOCK_L, DOT)
        w_t = tl.load(w_ptr + k * C * C + chans[None, :] * C + chans[:, None], mask=weight_mask, other=0.0)
        d_audio += dot(w_t, d_hidden_n, DOT)
    tl.store(d_audio_ptr + clip.to(tl.int64) * C * L + chans[:, None] * L + pos[None, :],
             d_audio.to(d_audio_ptr.dtype.element_ty), mask=chan_ok[:, None] & ok[None, :])


def launch_signal(audio: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, to_one: torch.Tensor,
                  to_one_bias: torch.Tensor) -> torch.Tensor:
    clips, channels, length = audio.shape
    taps = to_one.shape[0]
    block_c, block_l = blocks(channels, length, audio.device)
    signal = to_one_bias.float().expand(clips, length).contiguous()
    _forward_kernel[(clips, triton.cdiv(length, block_l))](
        audio, weight, bias, to_one, signal, channels, length, taps,
        BLOCK_C=block_c, BLOCK_L=block_l, BLOCK_K=max(16, triton.next_power_of_2(taps)),
        DOT=dot_kind(audio.dtype, audio.device),
    )  # fmt: skip
    return signal


def launch_backward(d_signal: torch.Tensor, audio: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    to_one: torch.Tensor) -> tuple[torch.Tensor, ...]:
    clips, channels, length = audio.shape
    taps = to_one.shape[0]
    block_c, block_l = blocks(channels, length, audio.device)
    grid = (clips, triton.cdiv(length, block_l))
    d_audio = torch.empty_like(audio)
    slot = 3 * channels * channels + channels + taps * channels
    partials = torch.empty(grid[0] * grid[1], slot, device=audio.device, dtype=torch.float32)
    _backward_kernel[grid](
        d_signal.float().contiguous(), audio, weight, bias, to_one, d_audio, partials, channels, length, taps,
        BLOCK_C=block_c, BLOCK_L=block_l, BLOCK_K=max(16, triton.next_power_of_2(taps)),
        DOT=dot_kind(audio.dtype, audio.device),
    )  # fmt: skip
    sizes = [3 * channels * channels, channels, taps * channels]
    d_weight, d_bias, d_to_one = split_sums(partials, sizes, weight.dtype)
    return d_audio, d_weight.reshape(3, channels, channels), d_bias, d_to_one.reshape(taps, channels)
