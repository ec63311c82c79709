"""Triton forward kernel of the fused audio front end + stem conv (``audio_frontend_stem``).

Inputs (float32, contiguous): normalised waveform x (B, S), sinc filters h (F, K) with K odd,
stem weight w (C, F, 7). One program per (clip, tile of BLOCK_O stem outputs) computes, filter block
by filter block,

    y = conv(x, h)  (251-tap 'same' correlation, as tl.dot of h with an im2col tile of x)
    a = log(|y| + eps)  (zero outside [0, S): the stem's zero padding)
    stem(a) and the per-filter sums of a (for the mean over time)

without ever storing y or a. The positions a tile owns, t in [4*o0, 4*o0 + 4*BLOCK_O), are computed
as four phase tiles t = 4*o + r (r = 0..3), so a stem tap j hits phase (j - 3) mod 4 of output o
(r = j - 3 >= 0) or of output o + 1 (r = j + 1): each program writes its own-output part to ``same``
and its next-output part to ``nxt``; the caller adds them (out[o] = same[o] + nxt[o - 1]) and
subtracts the mean term analytically (the stem is linear).

    launch_forward(x, h, w, log_eps) -> same (B, C, O), nxt (B, C, O), sums (B, tiles, F)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from avfused.reference import STEM_STRIDE


@triton.jit
def _audio_frontend_stem_forward_kernel(
    x_ptr,
    h_ptr,
    w_ptr,
    same_ptr,
    nxt_ptr,
    sums_ptr,
    S,
    F,
    C,
    K,
    n_out,
    n_tiles,
    log_eps,
    BLOCK_O: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    clip = tl.program_id(0)
    tile = tl.program_id(1)
    half = K // 2
    outputs = tile * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_f = tl.arange(0, BLOCK_F)
    offs_k = tl.arange(0, BLOCK_K)
    chans = tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    x_row = x_ptr + clip * S
    acc_same = tl.zeros((BLOCK_C, BLOCK_O), dtype=tl.float32)
    acc_next = tl.zeros((BLOCK_C, BLOCK_O), dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        filt = f0 + offs_f
        filt_ok = filt < F
        band_sum = tl.zeros((BLOCK_F,), dtype=tl.float32)
        w_rows = w_ptr + chans[:, None] * (F * 7) + filt[None, :] * 7
        w_mask = chan_ok[:, None] & filt_ok[None, :]
        for r in tl.static_range(4):
            t = 4 * outputs + r
            y = tl.zeros((BLOCK_F, BLOCK_O), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                taps = k0 + offs_k
                tap_ok = taps < K
                h_tile = tl.load(
                    h_ptr + filt[:, None] * K + taps[None, :], mask=filt_ok[:, None] & tap_ok[None, :], other=0.0
                )
                src = t[None, :] + taps[:, None] - half
                x_tile = tl.load(x_row + src, mask=tap_ok[:, None] & (src >= 0) & (src < S), other=0.0)
                y += tl.dot(h_tile, x_tile, input_precision="ieee")
            a = tl.log(tl.abs(y) + log_eps)
            a = tl.where(filt_ok[:, None] & (t < S)[None, :], a, 0.0)
            band_sum += tl.sum(a, axis=1)
            w_same = tl.load(w_rows + (r + 3), mask=w_mask, other=0.0)
            acc_same += tl.dot(w_same, a, input_precision="ieee")
            if r >= 1:
                w_next = tl.load(w_rows + (r - 1), mask=w_mask, other=0.0)
                acc_next += tl.dot(w_next, a, input_precision="ieee")
        tl.store(sums_ptr + (clip * n_tiles + tile) * F + filt, band_sum, mask=filt_ok)
    out_offsets = clip * C * n_out + chans[:, None] * n_out + outputs[None, :]
    out_mask = chan_ok[:, None] & (outputs < n_out)[None, :]
    tl.store(same_ptr + out_offsets, acc_same, mask=out_mask)
    tl.store(nxt_ptr + out_offsets, acc_next, mask=out_mask)


def _block_sizes(x: torch.Tensor, filters: int, channels: int) -> tuple[int, int, int, int]:
    """(BLOCK_O, BLOCK_F, BLOCK_K, BLOCK_C); tl.dot needs every dimension >= 16."""
    block_c = max(16, triton.next_power_of_2(channels))
    block_f = 32 if filters > 16 else 16
    if x.is_cuda:
        return 64, block_f, 32, block_c
    return 32, block_f, 64, block_c  # interpreter: fewer, larger steps run faster in numpy


def launch_forward(
    x: torch.Tensor, filters: torch.Tensor, stem_weight: torch.Tensor, log_eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the kernel; returns (same, nxt, sums) as described in the module docstring."""
    batch, samples = x.shape
    num_filters, taps = filters.shape
    channels = stem_weight.shape[0]
    outputs = -(-samples // STEM_STRIDE)
    block_o, block_f, block_k, block_c = _block_sizes(x, num_filters, channels)
    n_tiles = triton.cdiv(outputs, block_o)
    same = torch.empty(batch, channels, outputs, device=x.device, dtype=torch.float32)
    nxt = torch.empty_like(same)
    sums = torch.empty(batch, n_tiles, num_filters, device=x.device, dtype=torch.float32)
    _audio_frontend_stem_forward_kernel[(batch, n_tiles)](
        x,
        filters,
        stem_weight,
        same,
        nxt,
        sums,
        samples,
        num_filters,
        channels,
        taps,
        outputs,
        n_tiles,
        log_eps,
        BLOCK_O=block_o,
        BLOCK_F=block_f,
        BLOCK_K=block_k,
        BLOCK_C=block_c,
    )
    return same, nxt, sums
