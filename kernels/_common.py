"""What the Triton kernels share: dots in the input's precision with fp32 accumulation, pixel tiles with
their halo regions, and how many persistent programs a launch gets.

Persistent programs and scratch. A backward (and the large-kernel attention forward) must shift values it
has just computed by a few pixels or samples, which a register tile cannot do. Each program therefore
owns one slot of a small fp32 scratch buffer: it stores a tile's intermediate there (the tile plus its
halo), waits at ``tl.debug_barrier()`` (a CTA-wide barrier: the stores of every thread of the program are
visible after it) and reloads it at the shifted positions. The grid has ``persistent_plan(...)[0]`` programs
that loop over the tiles (tile = pid, pid + G, ...), so the scratch (G slots) and the partial sums of the
weight gradients (at most G slots, fp32, summed in float64 by the caller) are bounded by a budget and
independent of the batch and the map size. Kernels
that use scratch launch with ``num_stages=1``: nothing may be prefetched across a barrier.

    dot(a, b, KIND)                 a @ b, fp32 accumulate; operands in fp32 (ieee), fp16 or bf16 (KIND)
    dot_kind(dtype, device) -> KIND
    tile_origin / own_pixels / region / region_offsets   pixel tiles (row-major) and their clipped halos
    pixel_tile(height, width, device) -> (TILE_H, TILE_W);  tile_count(images, height, width, TILE_H, TILE_W)
    slot_pixels(tile_h, tile_w, halo, height, width)     pixels of one clipped halo region, at most
    saved_bytes(*tensors) -> the budget: what the forward saved
    persistent_plan(n_tiles, device, scratch_bytes, partial_bytes, budget_bytes) -> (G, partial slots)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

DOT_FP32, DOT_FP16, DOT_BF16 = 0, 1, 2
# programs of a persistent launch under the interpreter: few, so that tests run several tiles per program
# and reduce several partial slots
INTERPRETER_PROGRAMS = 2
# pixels of a tile under the interpreter: large (each Triton op costs the interpreter about a millisecond,
# whatever its size); tests of tile seams set it lower
INTERPRETER_TILE_PIXELS = 256


def dot_kind(dtype: torch.dtype, device: torch.device) -> int:
    """fp16 dots for fp16 data; bf16 dots for bf16 data on a GPU; else fp32 (the interpreter's bf16 tl.dot is
    wrong: bf16 data is loaded as bf16 and multiplied in fp32 there)."""
    if dtype == torch.float16:
        return DOT_FP16
    if dtype == torch.bfloat16 and device.type == "cuda":
        return DOT_BF16
    return DOT_FP32


@triton.jit
def dot(a, b, KIND: tl.constexpr):
    """a @ b accumulated in fp32, the operands rounded to fp16 / bf16 first where KIND says so."""
    if KIND == 1:
        out = tl.dot(a.to(tl.float16), b.to(tl.float16), out_dtype=tl.float32)
    elif KIND == 2:
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    else:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return out


@triton.jit
def tile_origin(tile, H, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """(image, first row, first column) of a tile; tiles are numbered image by image, row-major."""
    tiles_w = tl.cdiv(W, TILE_W)
    per_image = tl.cdiv(H, TILE_H) * tiles_w
    rest = tile % per_image
    return tile // per_image, (rest // tiles_w) * TILE_H, (rest % tiles_w) * TILE_W


@triton.jit
def own_pixels(r0, c0, H, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """(row, col, inside) of the tile's TILE_H * TILE_W pixels, row-major."""
    local = tl.arange(0, TILE_H * TILE_W)
    row = r0 + local // TILE_W
    col = c0 + local % TILE_W
    return row, col, (row < H) & (col < W)


@triton.jit
def region(r0, c0, H, W, HALO: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """(top, left, height, width): the tile and HALO pixels around it, clipped to the image."""
    top = tl.maximum(r0 - HALO, 0)
    left = tl.maximum(c0 - HALO, 0)
    bottom = tl.minimum(r0 + TILE_H + HALO, H)
    right = tl.minimum(c0 + TILE_W + HALO, W)
    return top, left, bottom - top, right - left


@triton.jit
def region_offsets(rows, cols, ok, H, W, top, left, width):
    """Offsets into a region's scratch of pixels (rows, cols) and whether each is in the image (and ok):
    pixels outside the image read as zero, the convolutions' zero padding."""
    inside = ok & (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
    return (rows - top) * width + (cols - left), inside


def pixel_tile(height: int, width: int, device: torch.device, gpu_pixels: int = 64) -> tuple[int, int]:
    """(TILE_H, TILE_W): powers of two, about ``gpu_pixels`` in all on a GPU (INTERPRETER_TILE_PIXELS under the
    interpreter), at least 16 (tl.dot's smallest side), near square (the smallest halos)."""
    pixels = gpu_pixels if device.type == "cuda" else INTERPRETER_TILE_PIXELS
    tile_w = min(triton.next_power_of_2(width), 1 << (max(pixels, 1).bit_length() // 2))
    tile_h = max(1, min(triton.next_power_of_2(height), pixels // tile_w))
    while tile_h * tile_w < 16:
        tile_h *= 2
    return tile_h, tile_w


def slot_pixels(tile_h: int, tile_w: int, halo: int, height: int, width: int) -> int:
    """The largest clipped halo region of a tile."""
    return min(tile_h + 2 * halo, height) * min(tile_w + 2 * halo, width)


def tile_count(images: int, height: int, width: int, tile_h: int, tile_w: int) -> int:
    return images * triton.cdiv(height, tile_h) * triton.cdiv(width, tile_w)


def saved_bytes(*tensors: torch.Tensor) -> int:
    """The size of the tensors a forward saves for its backward: the backward's working-memory budget."""
    return sum(t.numel() * t.element_size() for t in tensors)


def program_cap(device: torch.device) -> int:
    """Programs of a persistent launch at most: two per SM on a GPU, INTERPRETER_PROGRAMS under the interpreter."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_PROGRAMS


def persistent_plan(
    n_tiles: int, device: torch.device, scratch_bytes: int, partial_bytes: int, budget_bytes: int
) -> tuple[int, int]:
    """(programs G, partial slots) of a persistent launch within ``budget_bytes`` of working memory (but at
    least one program and one slot).

    G is at most program_cap(device) and one per tile. Preferred: a slot per program (each slot has one
    writer: deterministic sums), as many as the budget holds. Where that gives less than half the programs
    that the budget holds with one shared slot, G is that larger number and the programs share the slots
    left (program pid adds into slot pid % slots with atomics: the same result up to rounding order).
    """
    cap = min(n_tiles, program_cap(device))
    own_slots = min(cap, budget_bytes // max(scratch_bytes + partial_bytes, 1))
    shared = min(cap, (budget_bytes - partial_bytes) // max(scratch_bytes, 1))
    if 2 * own_slots >= shared:
        return max(1, own_slots), max(1, own_slots)
    return shared, max(1, min(shared, (budget_bytes - shared * scratch_bytes) // max(partial_bytes, 1)))
