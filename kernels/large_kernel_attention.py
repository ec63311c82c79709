"""Triton forward kernels of ``large_kernel_attention``: p * (W1 @ dw7x7_dil3(dw5x5(p)) + b1).

Inputs (float32, contiguous): p (N, C, H, W), w5 (C, 25), b5 (C,), w7 (C, 49), b7 (C,), w1 (C, C), b1 (C,).
Two kernels, each over (image, tile of BLOCK_P pixels):

1. ``_depthwise5_kernel``: ctx1 = dw5x5(p) + b5, written once (the size of p). Fusing it into the
   second kernel would mean recomputing it at all 49 dilated taps (25 x 49 work per output).
2. ``_dilated7_gate_kernel``: per pixel tile, all channels of ctx2 = dw7x7_dil3(ctx1) + b7 in
   registers, then the 1x1 as a (C, C) x (C, BLOCK_P) tl.dot, + b1, times p; ctx2 and the 1x1's
   output never reach memory.

    launch_forward(p, w5, b5, w7, b7, w1, b1) -> out (N, C, H, W)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _depthwise_taps(
    src_image, w_ptr, chans, chan_ok, row, col, pixel_ok, H, W,
    SIZE: tl.constexpr, DILATION: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """sum over the SIZE x SIZE (dilated) taps of w[c, tap] * src[c, row + dy, col + dx], zero padded."""
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for tap in tl.static_range(SIZE * SIZE):
        r = row + (tap // SIZE - SIZE // 2) * DILATION
        c = col + (tap % SIZE - SIZE // 2) * DILATION
        inside = pixel_ok & (r >= 0) & (r < H) & (c >= 0) & (c < W)
        values = tl.load(
            src_image + chans[:, None] * (H * W) + (r * W + c)[None, :],
            mask=chan_ok[:, None] & inside[None, :],
            other=0.0,
        )
        weight = tl.load(w_ptr + chans * (SIZE * SIZE) + tap, mask=chan_ok, other=0.0)
        acc += weight[:, None] * values
    return acc


@triton.jit
def _depthwise5_kernel(
    p_ptr, w5_ptr, b5_ptr, ctx_ptr, C, H, W,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    image = tl.program_id(0)
    pixels = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_ok = pixels < H * W
    row = pixels // W
    col = pixels % W
    base = image * C * H * W
    for c0 in range(0, C, BLOCK_C):
        chans = c0 + tl.arange(0, BLOCK_C)
        chan_ok = chans < C
        acc = _depthwise_taps(p_ptr + base, w5_ptr, chans, chan_ok, row, col, pixel_ok, H, W, 5, 1, BLOCK_C, BLOCK_P)
        acc += tl.load(b5_ptr + chans, mask=chan_ok, other=0.0)[:, None]
        offsets = base + chans[:, None] * (H * W) + pixels[None, :]
        tl.store(ctx_ptr + offsets, acc, mask=chan_ok[:, None] & pixel_ok[None, :])


@triton.jit
def _dilated7_gate_kernel(
    p_ptr, ctx_ptr, w7_ptr, b7_ptr, w1_ptr, b1_ptr, out_ptr, C, H, W,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    image = tl.program_id(0)
    pixels = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_ok = pixels < H * W
    row = pixels // W
    col = pixels % W
    chans = tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    base = image * C * H * W
    context = _depthwise_taps(ctx_ptr + base, w7_ptr, chans, chan_ok, row, col, pixel_ok, H, W, 7, 3, BLOCK_C, BLOCK_P)
    context += tl.load(b7_ptr + chans, mask=chan_ok, other=0.0)[:, None]
    w1 = tl.load(w1_ptr + chans[:, None] * C + chans[None, :], mask=chan_ok[:, None] & chan_ok[None, :], other=0.0)
    gate = tl.dot(w1, context, input_precision="ieee") + tl.load(b1_ptr + chans, mask=chan_ok, other=0.0)[:, None]
    offsets = base + chans[:, None] * (H * W) + pixels[None, :]
    mask = chan_ok[:, None] & pixel_ok[None, :]
    p = tl.load(p_ptr + offsets, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, p * gate, mask=mask)


def _pixel_block(p: torch.Tensor, gpu_block: int) -> int:
    """Pixels per program: gpu_block on the GPU; under the interpreter one program per image (faster in numpy)."""
    if p.is_cuda:
        return gpu_block
    return max(16, triton.next_power_of_2(p.shape[2] * p.shape[3]))


def launch_depthwise5(p: torch.Tensor, w5: torch.Tensor, b5: torch.Tensor) -> torch.Tensor:
    """ctx1 = dw5x5(p) + b5 (N, C, H, W)."""
    images, channels, height, width = p.shape
    ctx = torch.empty_like(p)
    block_p = _pixel_block(p, 64)
    _depthwise5_kernel[(images, triton.cdiv(height * width, block_p))](
        p, w5, b5, ctx, channels, height, width, BLOCK_P=block_p, BLOCK_C=16
    )
    return ctx


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
    ctx = launch_depthwise5(p, w5, b5)
    out = torch.empty_like(p)
    block_p = _pixel_block(p, 32 if channels > 64 else 64)  # keep the (C, BLOCK_P) tile in registers
    _dilated7_gate_kernel[(images, triton.cdiv(height * width, block_p))](
        p, ctx, w7, b7, w1, b1, out, channels, height, width,
        BLOCK_P=block_p, BLOCK_C=max(16, triton.next_power_of_2(channels)),
    )  # fmt: skip
    return out
