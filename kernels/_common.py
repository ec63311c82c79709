"""What the Triton kernels share: dots in the input's precision with fp32 accumulation, pixel tiles with
their halo regions, and how many persistent programs a launch gets.

Persistent programs and scratch. A backward (and the large-kernel attention forward) must shift values it
has just computed by a few pixels or samples, which a register tile cannot do. Each program therefore
owns one slot of a small fp32 scratch buffer: it stores a tile's intermediate there (the tile plus its
halo), waits at ``tl.debug_barrier()`` (a CTA-wide barrier: the stores of every thread of the program are
visible after it) and reloads it at the shifted positions. The grid has ``persistent_plan(...)[0]`` programs
that loop over the tiles (tile = pid, pid + G, ...), so the scratch (G slots) and the partial sums of the
weight gradients (at most G slots, fp32, summed in float64 by the caller) are bounded by a budget and
independent of the batch and the map size. Kernels that use scratch launch with ``num_stages=1``: nothing
may be prefetched across a barrier. Where maps are small, a tile holds several whole images.

    dot(a, b, KIND)                 a @ b, fp32 accumulate; operands in fp32 (ieee), fp16 or bf16 (KIND)
    dot_kind(dtype, device) -> KIND
    tile_origin / own_pixels / region   pixel tiles (row-major; several whole images where maps are small) and
        their halos clipped to the image
    pixel_tile(images, height, width, device) -> (IMAGES, TILE_H, TILE_W);  tile_count(...)
    slot_pixels(tile_h, tile_w, halo, height, width)     pixels of one clipped halo region, at most
    saved_bytes(*tensors) -> the budget: what the forward saved
    persistent_plan(n_tiles, device, scratch_bytes, partial_bytes, budget_bytes) -> (G, partial slots)
    the SAAVM's map kernels: depthwise3x3_at, token_slot (jit); map_blocks, sum_partials / split_sums (the
        programs' fp32 partial sums in float64), merge_moments (block means and squared deviations merged)
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
INTERPRETER_TILE_PIXELS = 1024


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
def tile_origin(tile, H, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr, IMAGES: tl.constexpr):
    """(first image, first row, first column) of a tile of IMAGES images (IMAGES > 1 only where a tile covers
    a whole image) x TILE_H x TILE_W pixels; tiles are numbered image group by image group, row-major."""
    tiles_w = tl.cdiv(W, TILE_W)
    per_group = tl.cdiv(H, TILE_H) * tiles_w
    rest = tile % per_group
    return (tile // per_group) * IMAGES, (rest // tiles_w) * TILE_H, (rest % tiles_w) * TILE_W


@triton.jit
def own_pixels(image0, r0, c0, N, H, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr, IMAGES: tl.constexpr):
    """(image, image within the tile, row, col, inside) of the tile's IMAGES * TILE_H * TILE_W pixels."""
    local = tl.arange(0, IMAGES * TILE_H * TILE_W)
    within = local % (TILE_H * TILE_W)
    row = r0 + within // TILE_W
    col = c0 + within % TILE_W
    image = image0 + local // (TILE_H * TILE_W)
    return image, local // (TILE_H * TILE_W), row, col, (row < H) & (col < W) & (image < N)


@triton.jit
def region(r0, c0, H, W, HALO: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """(top, left, height, width): the tile and HALO pixels around it, clipped to the image."""
    top = tl.maximum(r0 - HALO, 0)
    left = tl.maximum(c0 - HALO, 0)
    bottom = tl.minimum(r0 + TILE_H + HALO, H)
    right = tl.minimum(c0 + TILE_W + HALO, W)
    return top, left, bottom - top, right - left


def pixel_tile(images: int, height: int, width: int, device: torch.device, gpu_pixels: int = 64
               ) -> tuple[int, int, int]:
    """(IMAGES, TILE_H, TILE_W): powers of two, about ``gpu_pixels`` in all on a GPU (INTERPRETER_TILE_PIXELS
    under the interpreter), at least 16 (tl.dot's smallest side), near square (the smallest halos); several
    whole images a tile where one image fills less than half of it."""
    pixels = gpu_pixels if device.type == "cuda" else INTERPRETER_TILE_PIXELS
    tile_w = min(triton.next_power_of_2(width), 1 << (max(pixels, 1).bit_length() // 2))
    tile_h = max(1, min(triton.next_power_of_2(height), pixels // tile_w))
    while tile_h * tile_w < 16:
        tile_h *= 2
    per_tile = 1
    if tile_h >= height and tile_w >= width:
        per_tile = min(triton.next_power_of_2(images), max(1, pixels // (tile_h * tile_w)))
        per_tile = 1 << (per_tile.bit_length() - 1)  # a power of two, at most pixels // tile
    return per_tile, tile_h, tile_w


def slot_pixels(tile_h: int, tile_w: int, halo: int, height: int, width: int) -> int:
    """The largest clipped halo region of a tile."""
    return min(tile_h + 2 * halo, height) * min(tile_w + 2 * halo, width)


def tile_count(images: int, height: int, width: int, per_tile: int, tile_h: int, tile_w: int) -> int:
    return triton.cdiv(images, per_tile) * triton.cdiv(height, tile_h) * triton.cdiv(width, tile_w)


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


# ---------------------------------------------------------------------------------------------
# the SAAVM's maps: a depthwise 3x3 at shifted pixels, and where a map pixel sits among the tokens
# ---------------------------------------------------------------------------------------------
@triton.jit
def shifted(row, col, ok, dr, dc, H, W):
    """The pixels (row + dr, col + dc) and which of them are asked for (``ok``) and inside the (H, W) map."""
    r = row + dr
    c = col + dc
    return r, c, ok & (r >= 0) & (r < H) & (c >= 0) & (c < W)


@triton.jit
def tap_weight_gradient(planes, part, chans, chan_ok, d_z, row, col, ok, dr, dc, tap, H, W):
    """part[c * 9 + tap] = sum over the pixels of d_z(p) x(p + tap): one tap's depthwise weight gradient."""
    r, c, inside = shifted(row, col, ok, dr, dc, H, W)
    x = tl.load(planes + (r * W + c)[None, :], mask=chan_ok[:, None] & inside[None, :], other=0.0)
    tl.store(part + chans * 9 + tap, tl.sum(d_z * x.to(tl.float32), axis=1), mask=chan_ok)


@triton.jit
def depthwise3x3_at(planes, w_ptr, chans, chan_ok, row, col, ok, H, W):
    """sum over the 3x3 taps of w[c, tap] * x[c, row + dr, col + dc] ('same' zero padding), (BLOCK_C, BLOCK_P)
    in fp32, without the bias: ``planes`` (BLOCK_C, 1) points at each channel's (H, W) plane, ``ok`` masks
    the pixels (row, col) asked for."""
    z = tl.zeros((chans.shape[0], row.shape[0]), dtype=tl.float32)
    for tap in tl.static_range(9):
        r, c, inside = shifted(row, col, ok, tap // 3 - 1, tap % 3 - 1, H, W)
        x = tl.load(planes + (r * W + c)[None, :], mask=chan_ok[:, None] & inside[None, :], other=0.0)
        z += tl.load(w_ptr + chans * 9 + tap, mask=chan_ok, other=0.0).to(tl.float32)[:, None] * x.to(tl.float32)
    return z


@triton.jit
def map_at(tokens_ptr, image, row, col, ok, H, W, R, Q, WINDOW: tl.constexpr):
    """The (H, W) map of ``image`` laid out as tokens (or its gradient) at (row, col), in fp32; zero outside
    the map (a 3x3 convolution's padding) and where not ``ok``."""
    inside = ok & (row >= 0) & (row < H) & (col >= 0) & (col < W)
    slot = token_slot(image, tl.where(inside, row, 0), tl.where(inside, col, 0), R, Q, WINDOW)
    return tl.load(tokens_ptr + slot, mask=inside, other=0.0).to(tl.float32)


@triton.jit
def token_slot(image, row, col, R, Q, WINDOW: tl.constexpr):
    """Offset of map pixel (row, col) of ``image`` in the tokens (images * R * Q, WINDOW**2): token
    image R Q + (row // WINDOW) Q + col // WINDOW, element (row % WINDOW) WINDOW + col % WINDOW."""
    token = image.to(tl.int64) * R * Q + (row // WINDOW) * Q + col // WINDOW
    return token * (WINDOW * WINDOW) + (row % WINDOW) * WINDOW + col % WINDOW


def sum_partials(partials: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The programs' fp32 partial sums (programs, ...) summed in float64, in ``dtype``."""
    return partials.double().sum(dim=0).to(dtype)


def split_sums(partials: torch.Tensor, sizes: list[int], dtype: torch.dtype) -> list[torch.Tensor]:
    """sum_partials cut into ``sizes``, each in its own memory (a custom op's outputs may not alias)."""
    return [part.to(dtype) for part in partials.double().sum(dim=0).split(sizes)]


def merge_moments(partials: torch.Tensor, items: int, length: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, biased var) (C,) float32 over ``items`` x ``length`` values per channel from the programs' blocks:
    ``partials`` (items * blocks, 2, C) holds each block's mean and sum of squared deviations (blocks of
    ``block`` values along ``length``, the last one shorter), merged in float64 (Chan's pairwise update), so the
    variance never comes from E[z^2] - E[z]^2."""
    blocks = triton.cdiv(length, block)
    counts = torch.full((blocks,), float(block), dtype=torch.float64, device=partials.device)
    counts[-1] = length - (blocks - 1) * block
    counts = counts.repeat(items)[:, None]
    means, squares = partials.double().unbind(dim=1)
    total = float(items * length)
    mean = (counts * means).sum(dim=0) / total
    var = (squares + counts * (means - mean) ** 2).sum(dim=0) / total
    return mean.float(), var.float()


def map_blocks(channels: int, pixels: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) of the SAAVM's map kernels: GPU tiles of 16 channels x 128 pixels; under the
    interpreter a whole map and up to 64 channels in one step (each Triton op costs it the same, whatever its
    size)."""
    if device.type == "cuda":
        return 16, 128
    return min(64, triton.next_power_of_2(channels)), min(4096, triton.next_power_of_2(pixels))
