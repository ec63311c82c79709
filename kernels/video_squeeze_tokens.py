"""Triton kernels of ``video_squeeze_tokens``: ReLU(dw3x3(x) + dw_b) -> 1x1 to one channel -> window tokens,
forward and backward, without writing the (N, C, H, W) hidden layer or the map.

Inputs (contiguous; x float32, or fp16 / bf16 on a GPU, computed in fp32): x (N, C, H, W), dw_w (C, 9),
dw_b (C,), w (C,), b (1,). Tokens: (N * R * Q, window**2), R = ceil(H / window), Q = ceil(W / window);
pixels of the padded grid outside the map are zero.

Forward: one program per (image, block of BLOCK_P pixels of the padded R window x Q window grid) loops over
blocks of channels: the depthwise 3x3 from 9 shifted loads, ReLU, the 1x1 as a sum over channels; the
map value goes straight to its token slot.

Backward: one program per (image, block of pixels of the map), with z = dw3x3(x) + dw_b, a = g w (z > 0)
for the map's gradient g (gathered from the tokens): d_w += g ReLU(z), d_b += g, d_dw_b += a,
d_dw_w[tap] += a x(p + tap), and d_x(p) = sum_tap dw_w[tap] a(p - tap), which recomputes z at the 9
neighbours (81 loads of x per pixel and channel: no scratch, no barrier). Weight gradients are fp32
partial sums per program, summed in float64 by the caller.

    launch_forward(x, dw_w, dw_b, w, b, window) -> tokens (N * R * Q, window**2) in x's dtype
    launch_backward(grad_tokens, x, dw_w, dw_b, w, window) -> dx, d_dw_w (C, 9), d_dw_b, d_w (C,), d_b (1,)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from avfused.kernels._common import (
    depthwise3x3_at,
    map_at,
    map_blocks,
    shifted,
    split_sums,
    tap_weight_gradient,
    token_slot,
)


@triton.jit
def _forward_kernel(
    x_ptr, dw_w_ptr, dw_b_ptr, w_ptr, b_ptr, out_ptr, C, H, W, R, Q,
    WINDOW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    image = tl.program_id(0)
    grid_w = Q * WINDOW
    pos = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pos_ok = pos < R * WINDOW * grid_w
    row = pos // grid_w
    col = pos % grid_w
    inside = pos_ok & (row < H) & (col < W)
    acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        chans = c0 + tl.arange(0, BLOCK_C)
        chan_ok = chans < C
        planes = x_ptr + ((image * C + chans).to(tl.int64) * H * W)[:, None]
        z = depthwise3x3_at(planes, dw_w_ptr, chans, chan_ok, row, col, inside, H, W)
        z += tl.load(dw_b_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
        w = tl.load(w_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)
        acc += tl.sum(w[:, None] * tl.maximum(z, 0.0), axis=0)
    value = tl.where(inside, acc + tl.load(b_ptr).to(tl.float32), 0.0)
    tl.store(out_ptr + token_slot(image, row, col, R, Q, WINDOW), value.to(out_ptr.dtype.element_ty), mask=pos_ok)


@triton.jit
def _backward_kernel(
    grad_ptr, x_ptr, dw_w_ptr, dw_b_ptr, w_ptr, dx_ptr, part_ptr, C, H, W, R, Q,
    WINDOW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    image = tl.program_id(0)
    program = image * tl.num_programs(1) + tl.program_id(1)
    pos = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_ok = pos < H * W
    row = pos // W
    col = pos % W
    # partial slot: d_dw_w (C, 9) | d_dw_b (C) | d_w (C) | d_b (1)
    part = part_ptr + program.to(tl.int64) * (11 * C + 1)
    g = map_at(grad_ptr, image, row, col, pixel_ok, H, W, R, Q, WINDOW)
    tl.store(part + 11 * C, tl.sum(g, axis=0))
    for c0 in range(0, C, BLOCK_C):
        chans = c0 + tl.arange(0, BLOCK_C)
        chan_ok = chans < C
        plane_offsets = ((image * C + chans).to(tl.int64) * H * W)[:, None]
        planes = x_ptr + plane_offsets
        dw_b = tl.load(dw_b_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
        w = tl.load(w_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
        z = depthwise3x3_at(planes, dw_w_ptr, chans, chan_ok, row, col, pixel_ok, H, W) + dw_b
        tl.store(part + 10 * C + chans, tl.sum(g[None, :] * tl.maximum(z, 0.0), axis=1), mask=chan_ok)
        a = tl.where(z > 0, g[None, :] * w, 0.0)
        tl.store(part + 9 * C + chans, tl.sum(a, axis=1), mask=chan_ok)
        dx = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
        for tap in tl.static_range(9):
            dr = tap // 3 - 1
            dc = tap % 3 - 1
            tap_weight_gradient(planes, part, chans, chan_ok, a, row, col, pixel_ok, dr, dc, tap, H, W)
            # d_x(p) += dw_w[tap] a(p - tap), a recomputed at the neighbour
            r, c, ok = shifted(row, col, pixel_ok, -dr, -dc, H, W)
            z_n = depthwise3x3_at(planes, dw_w_ptr, chans, chan_ok, r, c, ok, H, W) + dw_b
            g_n = map_at(grad_ptr, image, r, c, ok, H, W, R, Q, WINDOW)
            a_n = tl.where((z_n > 0) & ok[None, :], g_n[None, :] * w, 0.0)
            dx += tl.load(dw_w_ptr + chans * 9 + tap, mask=chan_ok, other=0.0).to(tl.float32)[:, None] * a_n
        tl.store(dx_ptr + plane_offsets + pos[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=chan_ok[:, None] & pixel_ok[None, :])


def _grid_sizes(height: int, width: int, window: int) -> tuple[int, int]:
    return triton.cdiv(height, window), triton.cdiv(width, window)


def launch_forward(x: torch.Tensor, dw_w: torch.Tensor, dw_b: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                   window: int) -> torch.Tensor:
    images, channels, height, width = x.shape
    rows, cols = _grid_sizes(height, width, window)
    out = torch.empty(images * rows * cols, window * window, device=x.device, dtype=x.dtype)
    block_c, block_p = map_blocks(channels, rows * cols * window * window, x.device)
    grid = (images, triton.cdiv(rows * cols * window * window, block_p))
    _forward_kernel[grid](x, dw_w, dw_b, w, b, out, channels, height, width, rows, cols,
                          WINDOW=window, BLOCK_C=block_c, BLOCK_P=block_p)
    return out


def launch_backward(grad_tokens: torch.Tensor, x: torch.Tensor, dw_w: torch.Tensor, dw_b: torch.Tensor,
                    w: torch.Tensor, window: int) -> tuple[torch.Tensor, ...]:
    images, channels, height, width = x.shape
    rows, cols = _grid_sizes(height, width, window)
    block_c, block_p = map_blocks(channels, height * width, x.device)
    grid = (images, triton.cdiv(height * width, block_p))
    dx = torch.empty_like(x)
    partials = torch.empty(grid[0] * grid[1], 11 * channels + 1, device=x.device, dtype=torch.float32)
    _backward_kernel[grid](grad_tokens, x, dw_w, dw_b, w, dx, partials, channels, height, width, rows, cols,
                           WINDOW=window, BLOCK_C=block_c, BLOCK_P=block_p)
    d_dw_w, d_dw_b, d_w, d_b = split_sums(partials, [9 * channels, channels, channels, 1], dw_w.dtype)
    return dx, d_dw_w.reshape(channels, 9), d_dw_b, d_w, d_b
