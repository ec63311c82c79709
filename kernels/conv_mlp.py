"""Triton kernels of ``conv_mlp``: 1x1 expand (C -> E) -> depthwise 3x3 -> ReLU -> 1x1 project (E -> C),
forward and backward, without writing the (N, E, H, W) expanded tensor.

Inputs (contiguous; x and grad float32, or fp16 / bf16 on a GPU, computed with fp32 accumulation):
x (N, C, H, W), w_in (E, C), b_in (E,), w_dw (E, 9), b_dw (E,), w_out (C, E), b_out (C,).

Forward: one program per (image, tile of BLOCK_P pixels) loops over blocks of BLOCK_E expanded channels;
for each of the 3x3 taps it recomputes the expansion at the shifted pixels (a (BLOCK_E, C) x (C, BLOCK_P)
tl.dot), since a register tile cannot be shifted; the hidden layer is zero outside the image (the
depthwise conv's zero padding), not b_in. The projected block accumulates in registers.

Backward: persistent programs (kernels/_common.py) over tiles of pixels; per tile and block of expanded
channels, with h = W_in x + b_in, pre = dw3x3(h) + b_dw, d_pre = (W_out^T grad) * (pre > 0):

1. h on the tile and 2 pixels around it -> the program's scratch;
2. d_pre on the tile and 1 pixel around it (pre from the scratched h) -> scratch;
3. on the tile: d_h = dw3x3^T(d_pre), dx += W_in^T d_h (registers, over the blocks); the weight gradients
   d_w_out += grad a^T, d_w_dw, d_b_dw, d_w_in += d_h x^T, d_b_in, d_b_out into the program's partial slot.

    launch_forward(x, w_in, b_in, w_dw, b_dw, w_out, b_out) -> out (N, C, H, W)
    launch_backward(grad, x, w_in, b_in, w_dw, b_dw, w_out[, budget_bytes]) -> dx, d_w_in, d_b_in, d_w_dw,
        d_b_dw, d_w_out, d_b_out; the working-memory budget defaults to the size of x and the weights
    backward_plan(shape, expanded, device, budget_bytes) -> tiles, blocks, programs, workspace_bytes (the
        scratch and partial slots: all the backward allocates beyond its inputs and outputs)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from avfused.kernels._common import (
    dot,
    dot_kind,
    own_pixels,
    persistent_plan,
    pixel_tile,
    saved_bytes,
    tile_count,
    tile_origin,
)


@triton.jit
def _conv_mlp_forward_kernel(
    x_ptr,
    w_in_ptr,
    b_in_ptr,
    w_dw_ptr,
    b_dw_ptr,
    w_out_ptr,
    b_out_ptr,
    out_ptr,
    C,
    E,
    H,
    W,
    BLOCK_P: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT: tl.constexpr,
):
    image = tl.program_id(0)
    pixels = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_ok = pixels < H * W
    row = pixels // W
    col = pixels % W
    below, right = H - 1 - row, W - 1 - col
    chans = tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    x_tile_ptr = x_ptr + image * C * H * W + chans[:, None] * (H * W) + pixels[None, :]
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for e0 in range(0, E, BLOCK_E):
        expanded = e0 + tl.arange(0, BLOCK_E)
        exp_ok = expanded < E
        w_in = tl.load(
            w_in_ptr + expanded[:, None] * C + chans[None, :], mask=exp_ok[:, None] & chan_ok[None, :], other=0.0
        )
        b_in = tl.load(b_in_ptr + expanded, mask=exp_ok, other=0.0).to(tl.float32)
        w_dw_row = w_dw_ptr + expanded * 9
        pre = tl.zeros((BLOCK_E, BLOCK_P), dtype=tl.float32)
        for tap in tl.static_range(9):
            inside = pixel_ok & (row >= 1 - tap // 3) & (below >= tap // 3 - 1)
            inside = inside & (col >= 1 - tap % 3) & (right >= tap % 3 - 1)
            x_tile = tl.load(x_tile_ptr + ((tap // 3 - 1) * W + tap % 3 - 1), mask=chan_ok[:, None] & inside[None, :],
                             other=0.0)
            hidden = tl.where(inside[None, :], dot(w_in, x_tile, DOT) + b_in[:, None], 0.0)
            pre += tl.load(w_dw_row + tap, mask=exp_ok, other=0.0).to(tl.float32)[:, None] * hidden
        b_dw = tl.load(b_dw_ptr + expanded, mask=exp_ok, other=0.0).to(tl.float32)
        activated = tl.maximum(pre + b_dw[:, None], 0.0)
        w_out = tl.load(
            w_out_ptr + chans[:, None] * E + expanded[None, :], mask=chan_ok[:, None] & exp_ok[None, :], other=0.0
        )
        acc += dot(w_out, activated, DOT)
    b_out = tl.load(b_out_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)
    out = acc + b_out[:, None]
    tl.store(
        out_ptr + image * C * H * W + chans[:, None] * (H * W) + pixels[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=chan_ok[:, None] & pixel_ok[None, :],
    )


@triton.jit
def _conv_mlp_backward_kernel(
    x_ptr, w_in_ptr, b_in_ptr, w_dw_ptr, b_dw_ptr, w_out_ptr, grad_ptr, dx_ptr, part_ptr, scratch_ptr,
    N, C, E, H, W, n_tiles, n_slots,
    IMAGES: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    # scratch regions per image of the tile, zero outside the image (the depthwise conv's padding), so shifted
    # reads need no mask: the hidden layer on the tile + 2 pixels (pitch PITCH2), d_pre on the tile + 1 pixel
    PITCH2: tl.constexpr = TILE_W + 4
    SIZE2: tl.constexpr = (TILE_H + 4) * PITCH2
    PITCH1: tl.constexpr = TILE_W + 2
    SIZE1: tl.constexpr = (TILE_H + 2) * PITCH1
    PIXELS: tl.constexpr = IMAGES * TILE_H * TILE_W
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    chans = tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    lanes = tl.arange(0, BLOCK_E)
    slot = scratch_ptr + pid * BLOCK_E * IMAGES * (SIZE2 + SIZE1)
    hidden_slot = slot + lanes[:, None] * (IMAGES * SIZE2)
    d_pre_slot = slot + BLOCK_E * IMAGES * SIZE2 + lanes[:, None] * (IMAGES * SIZE1)
    # partial slot: d_w_in (E, C) | d_b_in (E) | d_w_dw (E, 9) | d_b_dw (E) | d_w_out (C, E) | d_b_out (C)
    part = part_ptr + (pid % n_slots) * (2 * E * C + 11 * E + C)
    part_b_in = part + E * C
    part_w_dw = part_b_in + E
    part_b_dw = part_w_dw + 9 * E
    part_w_out = part_b_dw + E
    part_b_out = part_w_out + C * E
    local = tl.arange(0, PIXELS)
    within = local % (TILE_H * TILE_W)
    # the tile's pixels in the two regions; a 3x3 neighbour is + dr * pitch + dc
    hidden_own = hidden_slot + ((local // (TILE_H * TILE_W)) * SIZE2 + (within // TILE_W + 2) * PITCH2 +
                                within % TILE_W + 2)[None, :]
    d_pre_own = d_pre_slot + ((local // (TILE_H * TILE_W)) * SIZE1 + (within // TILE_W + 1) * PITCH1 +
                              within % TILE_W + 1)[None, :]
    for tile in range(pid, n_tiles, n_programs):
        image0, r0, c0 = tile_origin(tile, H, W, TILE_H, TILE_W, IMAGES)
        image, _, row, col, pixel_ok = own_pixels(image0, r0, c0, N, H, W, TILE_H, TILE_W, IMAGES)
        own = (image[None, :] * C + chans[:, None]) * (H * W) + (row * W + col)[None, :]
        own_mask = chan_ok[:, None] & pixel_ok[None, :]
        x_own = tl.load(x_ptr + own, mask=own_mask, other=0.0).to(tl.float32)
        g_own = tl.load(grad_ptr + own, mask=own_mask, other=0.0).to(tl.float32)
        tl.atomic_add(part_b_out + chans, tl.sum(g_own, axis=1), mask=chan_ok)
        dx = tl.zeros((BLOCK_C, PIXELS), dtype=tl.float32)
        for e0 in range(0, E, BLOCK_E):
            exps = e0 + lanes
            exp_ok = exps < E
            weight_mask = exp_ok[:, None] & chan_ok[None, :]
            w_in = tl.load(w_in_ptr + exps[:, None] * C + chans[None, :], mask=weight_mask, other=0.0)
            w_out_t = tl.load(w_out_ptr + chans[None, :] * E + exps[:, None], mask=weight_mask, other=0.0)
            b_in = tl.load(b_in_ptr + exps, mask=exp_ok, other=0.0).to(tl.float32)
            b_dw = tl.load(b_dw_ptr + exps, mask=exp_ok, other=0.0).to(tl.float32)
            w_dw_row = w_dw_ptr + exps * 9
            part_w_dw_row = part_w_dw + exps * 9
            # 1. the hidden layer on the tile and 2 pixels around it
            for j0 in tl.static_range(0, IMAGES * SIZE2, BLOCK_R):
                j = j0 + tl.arange(0, BLOCK_R)
                in_slot = j < IMAGES * SIZE2
                rows = r0 - 2 + (j % SIZE2) // PITCH2
                cols = c0 - 2 + j % PITCH2
                images = image0 + j // SIZE2
                inside = in_slot & (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W) & (images < N)
                planes = (images[None, :] * C + chans[:, None]) * (H * W)
                x_region = tl.load(x_ptr + planes + (rows * W + cols)[None, :], mask=chan_ok[:, None] & inside[None, :],
                                   other=0.0)
                hidden = tl.where(inside[None, :], dot(w_in, x_region, DOT) + b_in[:, None], 0.0)
                tl.store(hidden_slot + j[None, :], hidden, mask=in_slot[None, :])
            tl.debug_barrier()
            # 2. d_pre on the tile and 1 pixel around it
            for j0 in tl.static_range(0, IMAGES * SIZE1, BLOCK_R):
                j = j0 + tl.arange(0, BLOCK_R)
                in_slot = j < IMAGES * SIZE1
                rows = r0 - 1 + (j % SIZE1) // PITCH1
                cols = c0 - 1 + j % PITCH1
                images = image0 + j // SIZE1
                inside = in_slot & (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W) & (images < N)
                centre = hidden_slot + ((j // SIZE1) * SIZE2 + ((j % SIZE1) // PITCH1 + 1) * PITCH2 + j % PITCH1 + 1
                                        )[None, :]
                pre = tl.zeros((BLOCK_E, BLOCK_R), dtype=tl.float32) + b_dw[:, None]
                for tap in tl.static_range(9):
                    w_tap = tl.load(w_dw_row + tap, mask=exp_ok, other=0.0).to(tl.float32)
                    pre += w_tap[:, None] * tl.load(centre + ((tap // 3 - 1) * PITCH2 + tap % 3 - 1),
                                                    mask=in_slot[None, :], other=0.0)
                planes = (images[None, :] * C + chans[:, None]) * (H * W)
                g_region = tl.load(grad_ptr + planes + (rows * W + cols)[None, :],
                                   mask=chan_ok[:, None] & inside[None, :], other=0.0)
                d_pre = tl.where((pre > 0) & inside[None, :], dot(w_out_t, g_region, DOT), 0.0)
                tl.store(d_pre_slot + j[None, :], d_pre, mask=in_slot[None, :])
            tl.debug_barrier()
            # 3. the tile: pre (from the scratched h), d_h = dw3x3^T(d_pre), and every gradient
            d_pre = tl.load(d_pre_own)
            pre = tl.zeros((BLOCK_E, PIXELS), dtype=tl.float32) + b_dw[:, None]
            d_h = tl.zeros((BLOCK_E, PIXELS), dtype=tl.float32)
            for tap in tl.static_range(9):
                w_tap = tl.load(w_dw_row + tap, mask=exp_ok, other=0.0).to(tl.float32)[:, None]
                shifted = tl.load(hidden_own + ((tap // 3 - 1) * PITCH2 + tap % 3 - 1))
                pre += w_tap * shifted
                tl.atomic_add(part_w_dw_row + tap, tl.sum(d_pre * shifted, axis=1), mask=exp_ok)
                # d_h[q] = sum over taps of w[tap] d_pre[q - shift(tap)]
                d_h += w_tap * tl.load(d_pre_own - ((tap // 3 - 1) * PITCH1 + tap % 3 - 1))
            d_h = tl.where(pixel_ok[None, :], d_h, 0.0)
            activated = tl.maximum(pre, 0.0)
            tl.atomic_add(part_b_dw + exps, tl.sum(d_pre, axis=1), mask=exp_ok)
            tl.atomic_add(part_w_out + chans[:, None] * E + exps[None, :], dot(g_own, tl.trans(activated), DOT),
                          mask=chan_ok[:, None] & exp_ok[None, :])
            tl.atomic_add(part_b_in + exps, tl.sum(d_h, axis=1), mask=exp_ok)
            tl.atomic_add(part + exps[:, None] * C + chans[None, :], dot(d_h, tl.trans(x_own), DOT), mask=weight_mask)
            dx += dot(tl.trans(w_in), d_h, DOT)
            tl.debug_barrier()  # the next block overwrites the scratch
        tl.store(dx_ptr + own, dx.to(dx_ptr.dtype.element_ty), mask=own_mask)


def _channel_block(channels: int) -> int:
    return max(16, triton.next_power_of_2(channels))


def launch_forward(
    x: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor,
    w_dw: torch.Tensor,
    b_dw: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
) -> torch.Tensor:
    images, channels, height, width = x.shape
    expanded = w_in.shape[0]
    block_e = 32 if expanded > 16 else 16
    # under the interpreter one program per image runs faster (numpy works on whole tiles)
    block_p = 64 if x.is_cuda else max(16, triton.next_power_of_2(height * width))
    out = torch.empty_like(x)
    grid = (images, triton.cdiv(height * width, block_p))
    _conv_mlp_forward_kernel[grid](
        x, w_in, b_in, w_dw, b_dw, w_out, b_out, out, channels, expanded, height, width,
        BLOCK_P=block_p, BLOCK_E=block_e, BLOCK_C=_channel_block(channels), DOT=dot_kind(x.dtype, x.device),
    )  # fmt: skip
    return out


def backward_plan(shape: torch.Size, expanded: int, device: torch.device, budget_bytes: int) -> dict:
    """The backward's tile, blocks, scratch and partial sizes (elements) and persistent plan for x of ``shape``."""
    images, channels, height, width = shape
    per_tile, tile_h, tile_w = pixel_tile(images, height, width, device)
    block_e = 16  # the scratch holds two regions of block_e channels: small blocks leave room for more programs
    region = per_tile * (tile_h + 4) * (tile_w + 4)
    scratch = block_e * (region + per_tile * (tile_h + 2) * (tile_w + 2))
    partial = 2 * expanded * channels + 11 * expanded + channels
    n_tiles = tile_count(images, height, width, per_tile, tile_h, tile_w)
    programs, slots = persistent_plan(n_tiles, device, 4 * scratch, 4 * partial, budget_bytes)
    # the interpreter: a region in one step (each Triton op costs it the same, whatever its size)
    block_r = 64 if device.type == "cuda" else triton.next_power_of_2(region)
    workspace = 4 * (programs * scratch + slots * partial)
    return dict(per_tile=per_tile, tile_h=tile_h, tile_w=tile_w, block_e=block_e, scratch=scratch, partial=partial,
                n_tiles=n_tiles, programs=programs, slots=slots, block_r=block_r, workspace_bytes=workspace)


def launch_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor,
    w_dw: torch.Tensor,
    b_dw: torch.Tensor,
    w_out: torch.Tensor,
    budget_bytes: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """(dx, d_w_in, d_b_in, d_w_dw, d_b_dw, d_w_out, d_b_out): each in its input's dtype (d_b_out in grad's)."""
    images, channels, height, width = x.shape
    expanded = w_in.shape[0]
    if budget_bytes is None:
        budget_bytes = saved_bytes(x, w_in, b_in, w_dw, b_dw, w_out)
    plan = backward_plan(x.shape, expanded, x.device, budget_bytes)
    dx = torch.empty_like(x)
    partials = torch.zeros(plan["slots"], plan["partial"], device=x.device, dtype=torch.float32)
    scratch = torch.empty(plan["programs"] * plan["scratch"], device=x.device, dtype=torch.float32)
    _conv_mlp_backward_kernel[(plan["programs"],)](
        x, w_in, b_in, w_dw, b_dw, w_out, grad, dx, partials, scratch,
        images, channels, expanded, height, width, plan["n_tiles"], plan["slots"],
        IMAGES=plan["per_tile"], TILE_H=plan["tile_h"], TILE_W=plan["tile_w"], BLOCK_E=plan["block_e"],
        BLOCK_C=_channel_block(channels),
        BLOCK_R=plan["block_r"], DOT=dot_kind(x.dtype, x.device), num_stages=1,
    )  # fmt: skip
    sums = partials.double().sum(dim=0)
    sizes = [expanded * channels, expanded, 9 * expanded, expanded, channels * expanded, channels]
    d_w_in, d_b_in, d_w_dw, d_b_dw, d_w_out, d_b_out = sums.split(sizes)
    likes = (w_in, b_in, w_dw, b_dw, w_out)
    grads = [g.reshape(like.shape).to(like.dtype) for g, like in zip((d_w_in, d_b_in, d_w_dw, d_b_dw, d_w_out), likes,
                                                                    strict=True)]
    return (dx, *grads, d_b_out.to(grad.dtype))
