"""Triton kernels of ``large_kernel_attention``: p * (W1 @ dw7x7_dil3(dw5x5(p)) + b1), forward and backward,
each one kernel per tile of pixels with its halo; no (N, C, H, W) intermediate reaches global memory.

Inputs (contiguous; p and grad float32, or fp16 / bf16 on a GPU, computed with fp32 accumulation):
p (N, C, H, W), w5 (C, 25), b5 (C,), w7 (C, 49), b7 (C,), w1 (C, C), b1 (C,). Write c1 = dw5x5(p) + b5,
c2 = dw7x7_dil3(c1) + b7, gate = W1 c2 + b1, out = p * gate.

A pixel shifted by D rows is in the image where row >= -D and the rows below it >= D (``below``; the
same for columns with ``right``): two comparisons, one of them always true, and no branch.

Persistent programs (kernels/_common.py) loop over tiles; per tile and block of BLOCK_CB channels a program
computes the depthwise stages on the tile and the halo they need, clipped to the image, into its own slot
of a small fp32 scratch, and reads them back at the shifted taps after a barrier:

* forward: c1 on the tile + 9 pixels -> scratch; c2 on the tile (49 dilated taps from the scratch);
  gate += W1[:, block] c2 (a tl.dot) in registers; out = p * (gate + b1) once every block is in.
* backward, with gp = grad * p, d_c2 = W1^T gp, d_c1 = dw7x7_dil3^T(d_c2): c1 on the tile + 9 pixels and
  d_c2 on the tile + 11 pixels -> scratch; on the tile c2, gate, d_w1 += gp c2^T, d_w7, d_b7; d_c1 on
  the tile + 2 pixels -> scratch; on the tile d_w5, d_b5 and dp = grad * gate + dw5x5^T(d_c1) (built in
  an fp32 dp, cast to p's dtype by the caller). The weight gradients go to the program's partial slot
  (summed in float64 by the caller).

    launch_forward(p, w5, b5, w7, b7, w1, b1) -> out (N, C, H, W)
    launch_backward(grad, p, w5, b5, w7, b7, w1, b1[, budget_bytes]) -> dp, d_w5, d_b5, d_w7, d_b7, d_w1, d_b1
    forward_plan / backward_plan(shape, device[, budget_bytes]) -> tiles, blocks, programs, workspace_bytes
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
    region,
    saved_bytes,
    slot_pixels,
    tile_count,
    tile_origin,
)

HALO_C1 = 9  # c2 reads c1 up to 3 * 3 pixels away
HALO_D_C2 = 11  # d_c1 on the tile + 2 pixels reads d_c2 up to 9 pixels further
HALO_D_C1 = 2  # dp reads d_c1 up to 2 pixels away


@triton.jit
def _fill_c1(p_ptr, image0, N, C, block, block_ok, b5, slot, w5_ptr, top, left, height, width, H, W,
             IMAGES: tl.constexpr, BLOCK_CB: tl.constexpr, BLOCK_R: tl.constexpr):  # fmt: skip
    """c1 = dw5x5(p) + b5 (zero padded) of the channels ``block`` on a region (top, left, height, width) of each of
    the tile's images -> slot (per image: row-major, pitch width)."""
    area = height * width
    w5_rows = w5_ptr + block[:, None] * 25
    for j0 in range(0, IMAGES * area, BLOCK_R):
        j = j0 + tl.arange(0, BLOCK_R)
        image = image0 + j // area
        j_ok = (j < IMAGES * area) & (image < N)
        row = top + (j % area) // width
        col = left + j % width
        below, right = H - 1 - row, W - 1 - col
        pixels = p_ptr + (image[None, :] * C + block[:, None]) * (H * W) + (row * W + col)[None, :]
        c1 = tl.zeros((BLOCK_CB, BLOCK_R), dtype=tl.float32) + b5[:, None]
        for a in tl.static_range(5):
            row_ok = j_ok & (row >= 2 - a) & (below >= a - 2)
            row_ptr = pixels + (a - 2) * W
            for b in tl.static_range(5):
                inside = row_ok & (col >= 2 - b) & (right >= b - 2)
                values = tl.load(row_ptr + (b - 2), mask=block_ok[:, None] & inside[None, :], other=0.0)
                c1 += tl.load(w5_rows + (5 * a + b), mask=block_ok[:, None], other=0.0).to(tl.float32) * values.to(
                    tl.float32
                )
        tl.store(slot + j[None, :], c1, mask=j_ok[None, :])


@triton.jit
def _lka_forward_kernel(
    p_ptr, w5_ptr, b5_ptr, w7_ptr, b7_ptr, w1_ptr, b1_ptr, out_ptr, scratch_ptr, N, C, H, W, n_tiles, slot_size,
    IMAGES: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_CB: tl.constexpr, BLOCK_R: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    chans = tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    lanes = tl.arange(0, BLOCK_CB)
    c1_slot = scratch_ptr + pid * BLOCK_CB * slot_size + lanes[:, None] * slot_size
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        image0, r0, c0 = tile_origin(tile, H, W, TILE_H, TILE_W, IMAGES)
        image, in_tile, row, col, pixel_ok = own_pixels(image0, r0, c0, N, H, W, TILE_H, TILE_W, IMAGES)
        below, right = H - 1 - row, W - 1 - col
        top, left, height, width = region(r0, c0, H, W, 9, TILE_H, TILE_W)
        own_c1 = c1_slot + (in_tile * (height * width) + (row - top) * width + col - left)[None, :]
        gate = tl.zeros((BLOCK_C, IMAGES * TILE_H * TILE_W), dtype=tl.float32)
        for cb0 in range(0, C, BLOCK_CB):
            block = cb0 + lanes
            block_ok = block < C
            _fill_c1(p_ptr, image0, N, C, block, block_ok, tl.load(b5_ptr + block, mask=block_ok, other=0.0).to(
                tl.float32), c1_slot, w5_ptr, top, left, height, width, H, W, IMAGES, BLOCK_CB, BLOCK_R)
            tl.debug_barrier()
            w7_rows = w7_ptr + block[:, None] * 49
            c2 = tl.zeros((BLOCK_CB, IMAGES * TILE_H * TILE_W), dtype=tl.float32)
            for a in tl.static_range(7):
                row_ok = pixel_ok & (row >= 9 - 3 * a) & (below >= 3 * a - 9)
                row_c1 = own_c1 + (3 * a - 9) * width
                for b in tl.static_range(7):
                    inside = row_ok & (col >= 9 - 3 * b) & (right >= 3 * b - 9)
                    w_tap = tl.load(w7_rows + (7 * a + b), mask=block_ok[:, None], other=0.0).to(tl.float32)
                    c2 += w_tap * tl.load(row_c1 + (3 * b - 9), mask=inside[None, :], other=0.0)
            c2 += tl.load(b7_ptr + block, mask=block_ok, other=0.0).to(tl.float32)[:, None]
            w1_cols = tl.load(w1_ptr + chans[:, None] * C + block[None, :], mask=chan_ok[:, None] & block_ok[None, :],
                              other=0.0)
            gate += dot(w1_cols, c2, DOT)
            tl.debug_barrier()  # the next block overwrites the scratch
        own = (image[None, :] * C + chans[:, None]) * (H * W) + (row * W + col)[None, :]
        own_mask = chan_ok[:, None] & pixel_ok[None, :]
        p = tl.load(p_ptr + own, mask=own_mask, other=0.0).to(tl.float32)
        gate += tl.load(b1_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptr + own, (p * gate).to(out_ptr.dtype.element_ty), mask=own_mask)


@triton.jit
def _lka_backward_kernel(
    p_ptr, w5_ptr, b5_ptr, w7_ptr, b7_ptr, w1_ptr, b1_ptr, grad_ptr, dp_ptr, part_ptr, scratch_ptr,
    N, C, H, W, n_tiles, n_slots, slot_c1, slot_d_c2, slot_d_c1,
    IMAGES: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_CB: tl.constexpr, BLOCK_R: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    PIXELS: tl.constexpr = IMAGES * TILE_H * TILE_W
    pid = tl.program_id(0)
    chans = tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    lanes = tl.arange(0, BLOCK_CB)
    slot = scratch_ptr + pid * BLOCK_CB * (slot_c1 + slot_d_c2 + slot_d_c1)
    c1_slot = slot + lanes[:, None] * slot_c1
    d_c2_slot = slot + BLOCK_CB * slot_c1 + lanes[:, None] * slot_d_c2
    d_c1_slot = slot + BLOCK_CB * (slot_c1 + slot_d_c2) + lanes[:, None] * slot_d_c1
    # partial slot: d_w5 (C, 25) | d_b5 (C) | d_w7 (C, 49) | d_b7 (C) | d_w1 (C, C) | d_b1 (C)
    part_w5 = part_ptr + (pid % n_slots) * (C * (C + 77))
    part_b5 = part_w5 + 25 * C
    part_w7 = part_b5 + C
    part_b7 = part_w7 + 49 * C
    part_w1 = part_b7 + C
    part_b1 = part_w1 + C * C
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        image0, r0, c0 = tile_origin(tile, H, W, TILE_H, TILE_W, IMAGES)
        image, in_tile, row, col, pixel_ok = own_pixels(image0, r0, c0, N, H, W, TILE_H, TILE_W, IMAGES)
        below, right = H - 1 - row, W - 1 - col
        top9, left9, height9, width9 = region(r0, c0, H, W, 9, TILE_H, TILE_W)
        top11, left11, height11, width11 = region(r0, c0, H, W, 11, TILE_H, TILE_W)
        top2, left2, height2, width2 = region(r0, c0, H, W, 2, TILE_H, TILE_W)
        own = (image[None, :] * C + chans[:, None]) * (H * W) + (row * W + col)[None, :]
        own_mask = chan_ok[:, None] & pixel_ok[None, :]
        gp = tl.load(grad_ptr + own, mask=own_mask, other=0.0).to(tl.float32)
        gp *= tl.load(p_ptr + own, mask=own_mask, other=0.0).to(tl.float32)
        tl.atomic_add(part_b1 + chans, tl.sum(gp, axis=1), mask=chan_ok)
        area11 = height11 * width11
        own_c1 = c1_slot + (in_tile * (height9 * width9) + (row - top9) * width9 + col - left9)[None, :]
        own_d_c2 = d_c2_slot + (in_tile * area11 + (row - top11) * width11 + col - left11)[None, :]
        own_d_c1 = d_c1_slot + (in_tile * (height2 * width2) + (row - top2) * width2 + col - left2)[None, :]
        gate = tl.zeros((BLOCK_C, PIXELS), dtype=tl.float32)
        for cb0 in range(0, C, BLOCK_CB):
            block = cb0 + lanes
            block_ok = block < C
            block_own = (image[None, :] * C + block[:, None]) * (H * W) + (row * W + col)[None, :]
            w1_cols = tl.load(w1_ptr + chans[:, None] * C + block[None, :], mask=chan_ok[:, None] & block_ok[None, :],
                              other=0.0)
            # 1. c1 on the tile + 9 pixels; d_c2 = W1^T (grad * p) on the tile + 11 pixels
            _fill_c1(p_ptr, image0, N, C, block, block_ok, tl.load(b5_ptr + block, mask=block_ok, other=0.0).to(
                tl.float32), c1_slot, w5_ptr, top9, left9, height9, width9, H, W, IMAGES, BLOCK_CB, BLOCK_R)
            for j0 in range(0, IMAGES * area11, BLOCK_R):
                j = j0 + tl.arange(0, BLOCK_R)
                images = image0 + j // area11
                j_ok = (j < IMAGES * area11) & (images < N)
                pixels = (images[None, :] * C + chans[:, None]) * (H * W) + (
                    (top11 + (j % area11) // width11) * W + left11 + j % width11)[None, :]
                mask = chan_ok[:, None] & j_ok[None, :]
                gp_region = tl.load(grad_ptr + pixels, mask=mask, other=0.0).to(tl.float32)
                gp_region *= tl.load(p_ptr + pixels, mask=mask, other=0.0).to(tl.float32)
                tl.store(d_c2_slot + j[None, :], dot(tl.trans(w1_cols), gp_region, DOT), mask=j_ok[None, :])
            tl.debug_barrier()
            # 2. the tile: c2, gate, d_w1, d_w7, d_b7
            w7_rows = w7_ptr + block[:, None] * 49
            part_w7_rows = part_w7 + block * 49
            d_c2 = tl.load(own_d_c2, mask=pixel_ok[None, :], other=0.0)
            c2 = tl.zeros((BLOCK_CB, PIXELS), dtype=tl.float32)
            for a in tl.static_range(7):
                row_ok = pixel_ok & (row >= 9 - 3 * a) & (below >= 3 * a - 9)
                row_c1 = own_c1 + (3 * a - 9) * width9
                for b in tl.static_range(7):
                    inside = row_ok & (col >= 9 - 3 * b) & (right >= 3 * b - 9)
                    shifted = tl.load(row_c1 + (3 * b - 9), mask=inside[None, :], other=0.0)
                    w_tap = tl.load(w7_rows + (7 * a + b), mask=block_ok[:, None], other=0.0).to(tl.float32)
                    c2 += w_tap * shifted
                    tl.atomic_add(part_w7_rows + (7 * a + b), tl.sum(d_c2 * shifted, axis=1), mask=block_ok)
            c2 += tl.load(b7_ptr + block, mask=block_ok, other=0.0).to(tl.float32)[:, None]
            c2 = tl.where(pixel_ok[None, :], c2, 0.0)
            tl.atomic_add(part_b7 + block, tl.sum(d_c2, axis=1), mask=block_ok)
            gate += dot(w1_cols, c2, DOT)
            tl.atomic_add(part_w1 + chans[:, None] * C + block[None, :], dot(gp, tl.trans(c2), DOT),
                          mask=chan_ok[:, None] & block_ok[None, :])
            # 3. d_c1[q] = sum over taps of w7[tap] d_c2[q - 3 shift(tap)] on the tile + 2 pixels
            area2 = height2 * width2
            for j0 in range(0, IMAGES * area2, BLOCK_R):
                j = j0 + tl.arange(0, BLOCK_R)
                j_ok = (j < IMAGES * area2) & (image0 + j // area2 < N)
                rows = top2 + (j % area2) // width2
                cols = left2 + j % width2
                rows_below, cols_right = H - 1 - rows, W - 1 - cols
                centre = d_c2_slot + ((j // area2) * area11 + (rows - top11) * width11 + cols - left11)[None, :]
                d_c1 = tl.zeros((BLOCK_CB, BLOCK_R), dtype=tl.float32)
                for a in tl.static_range(7):
                    row_ok = j_ok & (rows >= 3 * a - 9) & (rows_below >= 9 - 3 * a)
                    row_d_c2 = centre + (9 - 3 * a) * width11
                    for b in tl.static_range(7):
                        inside = row_ok & (cols >= 3 * b - 9) & (cols_right >= 9 - 3 * b)
                        w_tap = tl.load(w7_rows + (7 * a + b), mask=block_ok[:, None], other=0.0).to(tl.float32)
                        d_c1 += w_tap * tl.load(row_d_c2 + (9 - 3 * b), mask=inside[None, :], other=0.0)
                tl.store(d_c1_slot + j[None, :], d_c1, mask=j_ok[None, :])
            tl.debug_barrier()
            # 4. the tile: d_w5, d_b5, and dp's depthwise part dw5x5^T(d_c1) (stored; grad * gate added below)
            d_c1 = tl.load(own_d_c1, mask=pixel_ok[None, :], other=0.0)
            tl.atomic_add(part_b5 + block, tl.sum(d_c1, axis=1), mask=block_ok)
            p_own = p_ptr + block_own
            w5_rows = w5_ptr + block[:, None] * 25
            part_w5_rows = part_w5 + block * 25
            dp = tl.zeros((BLOCK_CB, PIXELS), dtype=tl.float32)
            for a in tl.static_range(5):
                ahead_row = pixel_ok & (row >= 2 - a) & (below >= a - 2)
                behind_row = pixel_ok & (row >= a - 2) & (below >= 2 - a)
                row_p = p_own + (a - 2) * W
                row_d_c1 = own_d_c1 + (2 - a) * width2
                for b in tl.static_range(5):
                    ahead = ahead_row & (col >= 2 - b) & (right >= b - 2)
                    shifted_p = tl.load(row_p + (b - 2), mask=block_ok[:, None] & ahead[None, :], other=0.0)
                    tl.atomic_add(part_w5_rows + (5 * a + b), tl.sum(d_c1 * shifted_p.to(tl.float32), axis=1),
                                  mask=block_ok)
                    behind = behind_row & (col >= b - 2) & (right >= 2 - b)
                    w_tap = tl.load(w5_rows + (5 * a + b), mask=block_ok[:, None], other=0.0).to(tl.float32)
                    dp += w_tap * tl.load(row_d_c1 + (2 - b), mask=behind[None, :], other=0.0)
            tl.store(dp_ptr + block_own, dp, mask=block_ok[:, None] & pixel_ok[None, :])
            tl.debug_barrier()  # the next block overwrites the scratch; below, dp is read back
        gate += tl.load(b1_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[:, None]
        grad = tl.load(grad_ptr + own, mask=own_mask, other=0.0).to(tl.float32)
        dp = tl.load(dp_ptr + own, mask=own_mask, other=0.0) + grad * gate
        tl.store(dp_ptr + own, dp, mask=own_mask)


def _blocks(shape: torch.Size, device: torch.device) -> tuple[int, int, int, int, int]:
    """(IMAGES, TILE_H, TILE_W, BLOCK_C, BLOCK_CB): all channels of a pixel tile in registers (fewer pixels when
    C > 64); depthwise stages in blocks of 16 channels (under the interpreter, of all of them: fewer steps)."""
    images, channels, height, width = shape
    per_tile, tile_h, tile_w = pixel_tile(images, height, width, device, 32 if channels > 64 else 64)
    block_c = max(16, triton.next_power_of_2(channels))
    return per_tile, tile_h, tile_w, block_c, 16 if device.type == "cuda" else min(block_c, 64)


def _region_block(device: torch.device, largest: int) -> int:
    """Pixels of a region per step: 64 on a GPU; under the interpreter the largest region in one step."""
    return 64 if device.type == "cuda" else max(16, triton.next_power_of_2(largest))


def forward_plan(shape: torch.Size, device: torch.device) -> dict:
    """The forward's tiles, blocks and persistent plan; its scratch stays within the size of p in fp32 (what
    a c1 tensor would take)."""
    images, _, height, width = shape
    per_tile, tile_h, tile_w, block_c, block_cb = _blocks(shape, device)
    slot = per_tile * slot_pixels(tile_h, tile_w, HALO_C1, height, width)
    n_tiles = tile_count(images, height, width, per_tile, tile_h, tile_w)
    programs, _ = persistent_plan(n_tiles, device, 4 * block_cb * slot, 0, 4 * shape.numel())
    return dict(per_tile=per_tile, tile_h=tile_h, tile_w=tile_w, block_c=block_c, block_cb=block_cb, slot=slot,
                n_tiles=n_tiles, programs=programs, block_r=_region_block(device, slot),
                workspace_bytes=4 * programs * block_cb * slot)


def backward_plan(shape: torch.Size, device: torch.device, budget_bytes: int) -> dict:
    """The backward's tiles, blocks, scratch and partial sizes (elements) and persistent plan."""
    images, channels, height, width = shape
    per_tile, tile_h, tile_w, block_c, block_cb = _blocks(shape, device)
    slots_px = [per_tile * slot_pixels(tile_h, tile_w, halo, height, width)
                for halo in (HALO_C1, HALO_D_C2, HALO_D_C1)]
    scratch = block_cb * sum(slots_px)
    partial = channels * (channels + 77)
    n_tiles = tile_count(images, height, width, per_tile, tile_h, tile_w)
    programs, slots = persistent_plan(n_tiles, device, 4 * scratch, 4 * partial, budget_bytes)
    return dict(per_tile=per_tile, tile_h=tile_h, tile_w=tile_w, block_c=block_c, block_cb=block_cb,
                slot_px=slots_px, scratch=scratch, partial=partial, n_tiles=n_tiles, programs=programs, slots=slots,
                block_r=_region_block(device, max(slots_px)),
                workspace_bytes=4 * (programs * scratch + slots * partial))


def launch_forward(
    p: torch.Tensor,
    w5: torch.Tensor,
    b5: torch.Tensor,
    w7: torch.Tensor,
    b7: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
) -> torch.Tensor:
    images, channels, height, width = p.shape
    plan = forward_plan(p.shape, p.device)
    out = torch.empty_like(p)
    scratch = torch.empty(plan["programs"] * plan["block_cb"] * plan["slot"], device=p.device, dtype=torch.float32)
    _lka_forward_kernel[(plan["programs"],)](
        p, w5, b5, w7, b7, w1, b1, out, scratch, images, channels, height, width, plan["n_tiles"], plan["slot"],
        IMAGES=plan["per_tile"], TILE_H=plan["tile_h"], TILE_W=plan["tile_w"], BLOCK_C=plan["block_c"],
        BLOCK_CB=plan["block_cb"], BLOCK_R=plan["block_r"], DOT=dot_kind(p.dtype, p.device), num_stages=1,
    )  # fmt: skip
    return out


def launch_backward(
    grad: torch.Tensor,
    p: torch.Tensor,
    w5: torch.Tensor,
    b5: torch.Tensor,
    w7: torch.Tensor,
    b7: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    budget_bytes: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """(dp, d_w5, d_b5, d_w7, d_b7, d_w1, d_b1), each in its input's dtype; the working memory (scratch and
    partial slots) within budget_bytes, by default the size of p and the weights (what the forward saved)."""
    images, channels, height, width = p.shape
    if budget_bytes is None:
        budget_bytes = saved_bytes(p, w5, b5, w7, b7, w1, b1)
    plan = backward_plan(p.shape, p.device, budget_bytes)
    # fp32: the kernel stores dp's depthwise part, then adds grad * gate (fp16 / bf16 rounded once, at the end)
    dp = torch.empty(p.shape, device=p.device, dtype=torch.float32)
    partials = torch.zeros(plan["slots"], plan["partial"], device=p.device, dtype=torch.float32)
    scratch = torch.empty(plan["programs"] * plan["scratch"], device=p.device, dtype=torch.float32)
    _lka_backward_kernel[(plan["programs"],)](
        p, w5, b5, w7, b7, w1, b1, grad, dp, partials, scratch, images, channels, height, width, plan["n_tiles"],
        plan["slots"], *plan["slot_px"],
        IMAGES=plan["per_tile"], TILE_H=plan["tile_h"], TILE_W=plan["tile_w"], BLOCK_C=plan["block_c"],
        BLOCK_CB=plan["block_cb"], BLOCK_R=plan["block_r"], DOT=dot_kind(p.dtype, p.device), num_stages=1,
    )  # fmt: skip
    sums = partials.double().sum(dim=0).split([25 * channels, channels, 49 * channels, channels,
                                               channels * channels, channels])
    likes = (w5, b5, w7, b7, w1, b1)
    return (dp.to(p.dtype), *(g.reshape(like.shape).to(like.dtype) for g, like in zip(sums, likes, strict=True)))
