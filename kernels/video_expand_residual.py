"""Triton kernels of ``video_expand_residual``: scale * video + bias + Conv2d(1 -> C, 3x3, 'same')(the tokens laid
back as maps), forward and backward, in one pass over the video each.

Inputs (contiguous; video and tokens float32, or fp16 / bf16 on a GPU, computed in fp32): video (N, C, H, W),
tokens (N * R * Q, window**2) (R = ceil(H / window), Q = ceil(W / window); the padding is cropped), weight
(C, 9), bias (C,), scale (C,).

Forward: one program per (image, block of BLOCK_P pixels) gathers the map at the 9 neighbours from the
tokens and loops over blocks of channels.

Backward: one program per (image, block of pixels of the padded grid): d_video = scale g and the partial
sums d_scale += g video, d_bias += g, d_weight[tap] += g(p) map(p + tap) on the map's pixels, and the
map's gradient sum_c sum_tap weight[c, tap] g_c(p - tap) written to the tokens' slot of every grid pixel
(zero on the padding). Partials are fp32 per program, summed in float64 by the caller.

    launch_forward(video, tokens, weight, bias, scale, window) -> (N, C, H, W) in video's dtype
    launch_backward(grad, video, tokens, weight, scale, window) -> d_video, d_tokens, d_weight (C, 9),
        d_bias (C,), d_scale (C,)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from avfused.kernels._common import map_at, map_blocks, shifted, split_sums, token_slot


@triton.jit
def _forward_kernel(
    video_ptr, tokens_ptr, weight_ptr, bias_ptr, scale_ptr, out_ptr, C, H, W, R, Q,
    WINDOW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    image = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_ok = pos < H * W
    row = pos // W
    col = pos % W
    for c0 in range(0, C, BLOCK_C):
        chans = c0 + tl.arange(0, BLOCK_C)
        chan_ok = chans < C
        own = ((image * C + chans).to(tl.int64) * H * W)[:, None] + pos[None, :]
        mask = chan_ok[:, None] & pixel_ok[None, :]
        video = tl.load(video_ptr + own, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
        out = scale * video + tl.load(bias_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
        for tap in tl.static_range(9):
            neighbour = map_at(tokens_ptr, image, row + (tap // 3 - 1), col + (tap % 3 - 1), pixel_ok, H, W, R, Q,
                               WINDOW)
            out += tl.load(weight_ptr + chans * 9 + tap, mask=chan_ok, other=0.0).to(tl.float32)[:, None] * \
                neighbour[None, :]
        tl.store(out_ptr + own, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(
    grad_ptr, video_ptr, tokens_ptr, weight_ptr, scale_ptr, d_video_ptr, d_tokens_ptr, part_ptr, C, H, W, R, Q,
    WINDOW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    image = tl.program_id(0)
    program = image * tl.num_programs(1) + tl.program_id(1)
    grid_w = Q * WINDOW
    pos = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    grid_ok = pos < R * WINDOW * grid_w
    row = pos // grid_w
    col = pos % grid_w
    pixel_ok = grid_ok & (row < H) & (col < W)
    pixel = row * W + col
    # partial slot: d_weight (C, 9) | d_bias (C) | d_scale (C)
    part = part_ptr + program.to(tl.int64) * (11 * C)
    d_map = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        chans = c0 + tl.arange(0, BLOCK_C)
        chan_ok = chans < C
        plane_offsets = ((image * C + chans).to(tl.int64) * H * W)[:, None]
        mask = chan_ok[:, None] & pixel_ok[None, :]
        g = tl.load(grad_ptr + plane_offsets + pixel[None, :], mask=mask, other=0.0).to(tl.float32)
        video = tl.load(video_ptr + plane_offsets + pixel[None, :], mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(d_video_ptr + plane_offsets + pixel[None, :], (scale * g).to(d_video_ptr.dtype.element_ty),
                 mask=mask)
        tl.store(part + 10 * C + chans, tl.sum(g * video, axis=1), mask=chan_ok)
        tl.store(part + 9 * C + chans, tl.sum(g, axis=1), mask=chan_ok)
        for tap in tl.static_range(9):
            dr = tap // 3 - 1
            dc = tap % 3 - 1
            neighbour = map_at(tokens_ptr, image, row + dr, col + dc, pixel_ok, H, W, R, Q, WINDOW)
            tl.store(part + chans * 9 + tap, tl.sum(g * neighbour[None, :], axis=1), mask=chan_ok)
            # the map pixel p feeds output pixel p - tap through weight[tap]
            r, c, ok = shifted(row, col, pixel_ok, -dr, -dc, H, W)
            g_n = tl.load(grad_ptr + plane_offsets + (r * W + c)[None, :], mask=chan_ok[:, None] & ok[None, :],
                          other=0.0).to(tl.float32)
            weight = tl.load(weight_ptr + chans * 9 + tap, mask=chan_ok, other=0.0).to(tl.float32)
            d_map += tl.sum(weight[:, None] * g_n, axis=0)
    slot = token_slot(image, row, col, R, Q, WINDOW)
    tl.store(d_tokens_ptr + slot, tl.where(pixel_ok, d_map, 0.0).to(d_tokens_ptr.dtype.element_ty), mask=grid_ok)


def launch_forward(video: torch.Tensor, tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   scale: torch.Tensor, window: int) -> torch.Tensor:
    images, channels, height, width = video.shape
    rows, cols = triton.cdiv(height, window), triton.cdiv(width, window)
    block_c, block_p = map_blocks(channels, height * width, video.device)
    out = torch.empty_like(video)
    _forward_kernel[(images, triton.cdiv(height * width, block_p))](
        video, tokens, weight, bias, scale, out, channels, height, width, rows, cols,
        WINDOW=window, BLOCK_C=block_c, BLOCK_P=block_p,
    )  # fmt: skip
    return out


def launch_backward(grad: torch.Tensor, video: torch.Tensor, tokens: torch.Tensor, weight: torch.Tensor,
                    scale: torch.Tensor, window: int) -> tuple[torch.Tensor, ...]:
    images, channels, height, width = video.shape
    rows, cols = triton.cdiv(height, window), triton.cdiv(width, window)
    grid_pixels = rows * cols * window * window
    block_c, block_p = map_blocks(channels, grid_pixels, video.device)
    grid = (images, triton.cdiv(grid_pixels, block_p))
    d_video = torch.empty_like(video)
    d_tokens = torch.empty_like(tokens)
    partials = torch.empty(grid[0] * grid[1], 11 * channels, device=video.device, dtype=torch.float32)
    _backward_kernel[grid](grad, video, tokens, weight, scale, d_video, d_tokens, partials, channels, height, width,
                           rows, cols, WINDOW=window, BLOCK_C=block_c, BLOCK_P=block_p)
    d_weight, d_bias, d_scale = split_sums(partials, [9 * channels, channels, channels], weight.dtype)
    return d_video, d_tokens, d_weight.reshape(channels, 9), d_bias, d_scale
