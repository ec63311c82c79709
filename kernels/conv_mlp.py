"""Triton forward kernel of ``conv_mlp``: 1x1 expand (C -> E) -> depthwise 3x3 -> ReLU -> 1x1 project (E -> C),
without writing the (N, E, H, W) expanded tensor.

Inputs (float32, contiguous): x (N, C, H, W), w_in (E, C), b_in (E,), w_dw (E, 9), b_dw (E,), w_out (C, E),
b_out (C,). One program per (image, tile of BLOCK_P pixels) loops over blocks of BLOCK_E expanded
channels; for each of the 3x3 taps it recomputes the expansion at the shifted pixels (a (BLOCK_E, C)
x (C, BLOCK_P) tl.dot), since a register tile cannot be shifted; the hidden layer is zero outside the
image (the depthwise conv's zero padding), not b_in. The projected block accumulates in registers.

    launch_forward(x, w_in, b_in, w_dw, b_dw, w_out, b_out) -> out (N, C, H, W)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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
):
    image = tl.program_id(0)
    pixels = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_ok = pixels < H * W
    row = pixels // W
    col = pixels % W
    chans = tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    x_image = x_ptr + image * C * H * W
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for e0 in range(0, E, BLOCK_E):
        expanded = e0 + tl.arange(0, BLOCK_E)
        exp_ok = expanded < E
        w_in = tl.load(
            w_in_ptr + expanded[:, None] * C + chans[None, :], mask=exp_ok[:, None] & chan_ok[None, :], other=0.0
        )
        b_in = tl.load(b_in_ptr + expanded, mask=exp_ok, other=0.0)
        pre = tl.zeros((BLOCK_E, BLOCK_P), dtype=tl.float32)
        for tap in tl.static_range(9):
            r = row + (tap // 3 - 1)
            c = col + (tap % 3 - 1)
            inside = pixel_ok & (r >= 0) & (r < H) & (c >= 0) & (c < W)
            x_tile = tl.load(
                x_image + chans[:, None] * (H * W) + (r * W + c)[None, :],
                mask=chan_ok[:, None] & inside[None, :],
                other=0.0,
            )
            hidden = tl.dot(w_in, x_tile, input_precision="ieee") + b_in[:, None]
            hidden = tl.where(inside[None, :], hidden, 0.0)
            tap_weight = tl.load(w_dw_ptr + expanded * 9 + tap, mask=exp_ok, other=0.0)
            pre += tap_weight[:, None] * hidden
        b_dw = tl.load(b_dw_ptr + expanded, mask=exp_ok, other=0.0)
        activated = tl.maximum(pre + b_dw[:, None], 0.0)
        w_out = tl.load(
            w_out_ptr + chans[:, None] * E + expanded[None, :], mask=chan_ok[:, None] & exp_ok[None, :], other=0.0
        )
        acc += tl.dot(w_out, activated, input_precision="ieee")
    b_out = tl.load(b_out_ptr + chans, mask=chan_ok, other=0.0)
    out = acc + b_out[:, None]
    tl.store(
        out_ptr + image * C * H * W + chans[:, None] * (H * W) + pixels[None, :],
        out,
        mask=chan_ok[:, None] & pixel_ok[None, :],
    )


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
    block_c = max(16, triton.next_power_of_2(channels))
    block_e = 32 if expanded > 16 else 16
    # under the interpreter one program per image runs faster (numpy works on whole tiles)
    block_p = 64 if x.is_cuda else max(16, triton.next_power_of_2(height * width))
    out = torch.empty_like(x)
    grid = (images, triton.cdiv(height * width, block_p))
    _conv_mlp_forward_kernel[grid](
        x, w_in, b_in, w_dw, b_dw, w_out, b_out, out, channels, expanded, height, width,
        BLOCK_P=block_p, BLOCK_E=block_e, BLOCK_C=block_c,
    )  # fmt: skip
    return out
