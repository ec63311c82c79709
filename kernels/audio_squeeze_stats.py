"""Triton kernels of ``audio_squeeze_stats``: per-channel mean and biased variance of z = Conv1d(C -> C, 3,
'same')(audio) + bias over (B, L), forward and backward, without writing z.

Inputs (contiguous; audio float32, or fp16 / bf16 on a GPU; products in the input's precision with fp32
accumulation, kernels/_common.py dot): audio (B, C, L), weight (3, C, C) (tap-major: weight[k] = W[:, :, k]),
bias (C,).

Forward: one program per (clip, block of BLOCK_L positions): z as three (C, C) x (C, BLOCK_L) products of the
shifted audio; the block's mean and sum of squared deviations per channel (fp32), merged by the caller in
float64 (Chan's pairwise update), so the variance never comes from E[z^2] - E[z]^2.

Backward: d_z = d_mean / M + 2 d_var (z - mean) / M (M = B L); d_weight[k] = sum d_z(l) audio(l + k - 1)^T as
fp32 partials per program (summed in float64 by the caller), d_bias = d_mean, and d_audio(l) =
sum_k weight[k]^T d_z(l - k + 1), with z recomputed at the two shifted blocks.

    launch_forward(audio, weight, bias) -> mean (C,), var (C,) in float32
    launch_backward(d_mean, d_var, audio, weight, bias, mean) -> d_audio, d_weight (3, C, C), d_bias (C,)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from avfused.kernels._common import dot, dot_kind, merge_moments, sum_partials


@triton.jit
def conv3_at(clip_ptr, w_ptr, chans, chan_ok, pos, ok, C, L, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
             DOT: tl.constexpr):
    """sum_k weight[k] @ audio[:, pos + k - 1] ('same' zero padding), (BLOCK_C, BLOCK_L) fp32, no bias;
    ``clip_ptr`` points at one clip's (C, L) audio, weight is (3, C, C)."""
    z = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    weight_mask = chan_ok[:, None] & chan_ok[None, :]
    for k in tl.static_range(3):
        shifted = pos + (k - 1)
        inside = ok & (shifted >= 0) & (shifted < L)
        a = tl.load(clip_ptr + chans[:, None] * L + shifted[None, :], mask=chan_ok[:, None] & inside[None, :],
                    other=0.0)
        w = tl.load(w_ptr + k * C * C + chans[:, None] * C + chans[None, :], mask=weight_mask, other=0.0)
        z += dot(w, a, DOT)
    return z


@triton.jit
def _forward_kernel(
    audio_ptr, w_ptr, b_ptr, part_ptr, C, L,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    clip = tl.program_id(0)
    program = clip * tl.num_programs(1) + tl.program_id(1)
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    ok = pos < L
    chans = tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    clip_ptr = audio_ptr + clip.to(tl.int64) * C * L
    z = conv3_at(clip_ptr, w_ptr, chans, chan_ok, pos, ok, C, L, BLOCK_C, BLOCK_L, DOT)
    z = tl.where(ok[None, :], z + tl.load(b_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None], 0.0)
    mean = tl.sum(z, axis=1) / tl.sum(ok.to(tl.float32), axis=0)
    deviation = tl.where(ok[None, :], z - mean[:, None], 0.0)
    part = part_ptr + program.to(tl.int64) * (2 * C)  # mean (C) | squared deviations (C)
    tl.store(part + chans, mean, mask=chan_ok)
    tl.store(part + C + chans, tl.sum(deviation * deviation, axis=1), mask=chan_ok)


@triton.jit
def _backward_kernel(
    audio_ptr, w_ptr, b_ptr, coef_ptr, d_audio_ptr, part_ptr, C, L,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    # coef (3, C): d_mean / M, 2 d_var / M, mean: d_z = coef0 + coef1 (z - mean)
    clip = tl.program_id(0)
    program = clip * tl.num_programs(1) + tl.program_id(1)
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    ok = pos < L
    chans = tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    clip_ptr = audio_ptr + clip.to(tl.int64) * C * L
    bias = tl.load(b_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
    by_mean = tl.load(coef_ptr + chans, mask=chan_ok, other=0.0)[:, None]
    by_var = tl.load(coef_ptr + C + chans, mask=chan_ok, other=0.0)[:, None]
    mean = tl.load(coef_ptr + 2 * C + chans, mask=chan_ok, other=0.0)[:, None]
    part = part_ptr + program.to(tl.int64) * (3 * C * C)
    weight_mask = chan_ok[:, None] & chan_ok[None, :]
    z = conv3_at(clip_ptr, w_ptr, chans, chan_ok, pos, ok, C, L, BLOCK_C, BLOCK_L, DOT) + bias
    d_z = tl.where(ok[None, :], by_mean + by_var * (z - mean), 0.0)
    d_audio = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    for k in tl.static_range(3):
        # d_weight[k] += d_z(l) audio(l + k - 1)^T
        shifted = pos + (k - 1)
        inside = ok & (shifted >= 0) & (shifted < L)
        a = tl.load(clip_ptr + chans[:, None] * L + shifted[None, :], mask=chan_ok[:, None] & inside[None, :],
                    other=0.0).to(tl.float32)
        tl.store(part + k * C * C + chans[:, None] * C + chans[None, :], tl.dot(d_z, tl.trans(a),
                 input_precision="ieee"), mask=weight_mask)
        # d_audio(l) += weight[k]^T d_z(l - k + 1)
        back = pos - (k - 1)
        back_ok = ok & (back >= 0) & (back < L)
        z_n = conv3_at(clip_ptr, w_ptr, chans, chan_ok, back, back_ok, C, L, BLOCK_C, BLOCK_L, DOT) + bias
        d_z_n = tl.where(back_ok[None, :], by_mean + by_var * (z_n - mean), 0.0)
        w_t = tl.load(w_ptr + k * C * C + chans[None, :] * C + chans[:, None], mask=weight_mask, other=0.0)
        d_audio += dot(w_t, d_z_n, DOT)
    tl.store(d_audio_ptr + clip.to(tl.int64) * C * L + chans[:, None] * L + pos[None, :],
             d_audio.to(d_audio_ptr.dtype.element_ty), mask=chan_ok[:, None] & ok[None, :])


def blocks(channels: int, length: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_L): every channel (at least 16, tl.dot's smallest side) in one block; 32-64 positions
    on a GPU, up to 1024 under the interpreter (each Triton op costs it the same, whatever its size)."""
    block_c = max(16, triton.next_power_of_2(channels))
    if device.type == "cuda":
        return block_c, 64 if block_c <= 64 else 32
    return block_c, max(16, min(1024, triton.next_power_of_2(length)))


def launch_forward(audio: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    clips, channels, length = audio.shape
    block_c, block_l = blocks(channels, length, audio.device)
    n_blocks = triton.cdiv(length, block_l)
    partials = torch.empty(clips * n_blocks, 2, channels, device=audio.device, dtype=torch.float32)
    _forward_kernel[(clips, n_blocks)](audio, weight, bias, partials, channels, length,
                                       BLOCK_C=block_c, BLOCK_L=block_l, DOT=dot_kind(audio.dtype, audio.device))
    return merge_moments(partials, clips, length, block_l)


def launch_backward(d_mean: torch.Tensor, d_var: torch.Tensor, audio: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    clips, channels, length = audio.shape
    total = clips * length
    coef = torch.stack([d_mean / total, 2.0 * d_var / total, mean]).float().contiguous()
    block_c, block_l = blocks(channels, length, audio.device)
    grid = (clips, triton.cdiv(length, block_l))
    d_audio = torch.empty_like(audio)
    partials = torch.empty(grid[0] * grid[1], 3, channels, channels, device=audio.device, dtype=torch.float32)
    _backward_kernel[grid](audio, weight, bias, coef, d_audio, partials, channels, length,
                           BLOCK_C=block_c, BLOCK_L=block_l, DOT=dot_kind(audio.dtype, audio.device))
    return d_audio, sum_partials(partials, weight.dtype), d_mean.to(bias.dtype, copy=True)
