"""Triton kernels of ``video_squeeze_stats``: per-channel mean and biased variance of z = dw3x3(x) + dw_b over
(N, H, W), forward and backward, without writing z.

Inputs (contiguous; x float32, or fp16 / bf16 on a GPU, computed in fp32): x (N, C, H, W), dw_w (C, 9),
dw_b (C,).

Forward: one program per (image, block of BLOCK_P pixels) and block of channels computes z from 9 shifted
loads and writes the block's count, mean and sum of squared deviations from that mean (fp32); the caller
merges the blocks in float64 (Chan's pairwise update), so the variance never comes from E[z^2] - E[z]^2.

Backward: d_z = d_mean / M + 2 d_var (z - mean) / M (M = N H W): d_dw_w[tap] = sum d_z(p) x(p + tap) as fp32
partials per program (summed in float64 by the caller), d_dw_b = d_mean (the deviations sum to zero), and
d_x(p) = sum_tap dw_w[tap] d_z(p - tap), with z recomputed at the 9 neighbours.

    launch_forward(x, dw_w, dw_b) -> mean (C,), var (C,) in float32
    launch_backward(d_mean, d_var, x, dw_w, dw_b, mean) -> dx, d_dw_w (C, 9), d_dw_b (C,)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from avfused.kernels._common import (
    depthwise3x3_at,
    map_blocks,
    merge_moments,
    shifted,
    sum_partials,
    tap_weight_gradient,
)


@triton.jit
def _forward_kernel(
    x_ptr, dw_w_ptr, dw_b_ptr, part_ptr, C, H, W,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    image = tl.program_id(0)
    program = image * tl.num_programs(1) + tl.program_id(1)
    pos = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_ok = pos < H * W
    row = pos // W
    col = pos % W
    count = tl.sum(pixel_ok.to(tl.float32), axis=0)
    # partial slot: mean (C) | squared deviations (C); the count is the same for every channel
    part = part_ptr + program.to(tl.int64) * (2 * C)
    for c0 in range(0, C, BLOCK_C):
        chans = c0 + tl.arange(0, BLOCK_C)
        chan_ok = chans < C
        planes = x_ptr + ((image * C + chans).to(tl.int64) * H * W)[:, None]
        z = depthwise3x3_at(planes, dw_w_ptr, chans, chan_ok, row, col, pixel_ok, H, W)
        z += tl.load(dw_b_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
        z = tl.where(pixel_ok[None, :], z, 0.0)
        mean = tl.sum(z, axis=1) / count
        deviation = tl.where(pixel_ok[None, :], z - mean[:, None], 0.0)
        tl.store(part + chans, mean, mask=chan_ok)
        tl.store(part + C + chans, tl.sum(deviation * deviation, axis=1), mask=chan_ok)


@triton.jit
def _backward_kernel(
    x_ptr, dw_w_ptr, dw_b_ptr, coef_ptr, dx_ptr, part_ptr, C, H, W,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    # coef (3, C): d_mean / M, 2 d_var / M, mean: d_z = coef0 + coef1 (z - mean)
    image = tl.program_id(0)
    program = image * tl.num_programs(1) + tl.program_id(1)
    pos = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_ok = pos < H * W
    row = pos // W
    col = pos % W
    part = part_ptr + program.to(tl.int64) * (9 * C)
    for c0 in range(0, C, BLOCK_C):
        chans = c0 + tl.arange(0, BLOCK_C)
        chan_ok = chans < C
        plane_offsets = ((image * C + chans).to(tl.int64) * H * W)[:, None]
        planes = x_ptr + plane_offsets
        dw_b = tl.load(dw_b_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
        by_mean = tl.load(coef_ptr + chans, mask=chan_ok, other=0.0)[:, None]
        by_var = tl.load(coef_ptr + C + chans, mask=chan_ok, other=0.0)[:, None]
        mean = tl.load(coef_ptr + 2 * C + chans, mask=chan_ok, other=0.0)[:, None]
        z = depthwise3x3_at(planes, dw_w_ptr, chans, chan_ok, row, col, pixel_ok, H, W) + dw_b
        d_z = tl.where(pixel_ok[None, :], by_mean + by_var * (z - mean), 0.0)
        dx = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
        for tap in tl.static_range(9):
            dr = tap // 3 - 1
            dc = tap % 3 - 1
            tap_weight_gradient(planes, part, chans, chan_ok, d_z, row, col, pixel_ok, dr, dc, tap, H, W)
            r, c, ok = shifted(row, col, pixel_ok, -dr, -dc, H, W)  # d_x(p) += dw_w[tap] d_z(p - tap)
            z_n = depthwise3x3_at(planes, dw_w_ptr, chans, chan_ok, r, c, ok, H, W) + dw_b
            d_z_n = tl.where(ok[None, :], by_mean + by_var * (z_n - mean), 0.0)
            dx += tl.load(dw_w_ptr + chans * 9 + tap, mask=chan_ok, other=0.0).to(tl.float32)[:, None] * d_z_n
        tl.store(dx_ptr + plane_offsets + pos[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=chan_ok[:, None] & pixel_ok[None, :])


def launch_forward(x: torch.Tensor, dw_w: torch.Tensor, dw_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    images, channels, height, width = x.shape
    block_c, block_p = map_blocks(channels, height * width, x.device)
    blocks = triton.cdiv(height * width, block_p)
    partials = torch.empty(images * blocks, 2, channels, device=x.device, dtype=torch.float32)
    _forward_kernel[(images, blocks)](x, dw_w, dw_b, partials, channels, height, width,
                                      BLOCK_C=block_c, BLOCK_P=block_p)
    return merge_moments(partials, images, height * width, block_p)


def launch_backward(d_mean: torch.Tensor, d_var: torch.Tensor, x: torch.Tensor, dw_w: torch.Tensor,
                    dw_b: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, channels, height, width = x.shape
    total = images * height * width
    coef = torch.stack([d_mean / total, 2.0 * d_var / total, mean]).float().contiguous()
    block_c, block_p = map_blocks(channels, height * width, x.device)
    grid = (images, triton.cdiv(height * width, block_p))
    dx = torch.empty_like(x)
    partials = torch.empty(grid[0] * grid[1], 9 * channels, device=x.device, dtype=torch.float32)
    _backward_kernel[grid](x, dw_w, dw_b, coef, dx, partials, channels, height, width,
                           BLOCK_C=block_c, BLOCK_P=block_p)
    return dx, sum_partials(partials, dw_w.dtype).reshape(channels, 9), d_mean.to(dw_b.dtype, copy=True)
