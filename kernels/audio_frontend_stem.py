"""Triton kernels of the fused audio front end + stem conv (``audio_frontend_stem``), forward and backward.

Inputs (contiguous): normalised waveform x (B, S) and sinc filters h (F, K), K odd, in float32 for the
tl.dot products and as given (float64 from the op's wrapper) for the rescue below; stem weight w
(C, F, 7), the output gradient (B, C, O), O = ceil(S / 4), float32. Neither kernel ever stores the
(B, F, S) band responses y = conv(x, h) (251-tap 'same' correlation, a tl.dot of h with an im2col tile
of x) or a = log(|y| + eps) (zero outside [0, S): the stem's zero padding).

Phases. The positions a tile owns, t in [4*o0, 4*o0 + 4*BLOCK_O), are computed as four phase tiles
t = 4*o + r (r = 0..3): stem tap j of output o reads position 4*o + j - 3, so phase r feeds tap r + 3 of
output o and tap r - 1 of output o + 1 (r >= 1).

Rescue. log(|y| + eps) magnifies the fp32 rounding of y (about 1e-6 of |h| |x| here) where a band response
crosses zero. Wherever |y| < threshold[b, f] (the caller's: a small fraction of the filter's norm times
the clip's rms), y is recomputed in float64 from the exact x and h: a program collects those few samples
of a phase tile (a prefix sum over the flags), recomputes them, patches them into the tile through its
scratch, and goes on. Forward and backward both do it, so a and its derivative see the same, exact y.

Forward (persistent programs over tiles of BLOCK_O outputs): per filter block and phase, stem(a) into
``same`` (own output) and ``nxt`` (next output), and the per-filter sums of a; the caller adds them
(out[o] = same[o] + nxt[o - 1]) and subtracts the mean term analytically (the stem is linear).

Backward (persistent programs over tiles of CHUNKS * BLOCK_O outputs = T positions; kernels/_common.py):
per filter block, y again, dL/da from the stem (two tl.dot products with the output gradient at o and
o + 1), minus the mean's share, times sign(y) / (|y| + eps) = dy -> the program's scratch (BLOCK_F x T);
then the tap gradient dh += dy @ im2col(x) and the stem gradient dw += grad @ a^T into the program's
partial slot, and the tile's dx window (T + K - 1 samples) as a Toeplitz product of h and the scratched
dy, in registers across the filter blocks. The caller overlap-adds the windows and sums the slots in
float64.

    launch_forward(x, h, x_exact, h_exact, threshold, w, log_eps) -> same (B, C, O), nxt (B, C, O),
        sums (B, tiles, F)
    launch_backward(grad, x, h, x_exact, h_exact, threshold, w, mean_grad, log_eps) -> dx (B, S),
        dh (F, K) float64, dw (C, F, 7) float64 (the part through a; the caller adds the mean's)
    backward_plan(...) -> blocks, tiles, programs, workspace_bytes (scratch + partial slots, at most
        BACKWARD_WORKSPACE_BYTES whatever B and S)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from avfused.kernels._common import persistent_plan

from avfused.reference import STEM_KERNEL, STEM_STRIDE


@triton.jit
def _band_response(
    x_row, h_ptr, x_exact_row, h_exact_ptr, threshold, filt, filt_ok, inside, t, S, K, y_slot, list_slot,
    BLOCK_F: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, RESCUE_BLOCK: tl.constexpr,
):  # fmt: skip
    """y (BLOCK_F, BLOCK_O) = conv(x, h) at filters filt and positions t (4 apart) of one clip, fp32; where
    inside and |y| < threshold (per filter), recomputed in float64 from the exact x and h."""
    half = K // 2
    offs_k = tl.arange(0, BLOCK_K)
    y = tl.zeros((BLOCK_F, BLOCK_O), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        taps = k0 + offs_k
        tap_ok = taps < K
        h_tile = tl.load(h_ptr + filt[:, None] * K + taps[None, :], mask=filt_ok[:, None] & tap_ok[None, :], other=0.0)
        src = t[None, :] + taps[:, None] - half
        x_tile = tl.load(x_row + src, mask=tap_ok[:, None] & (src >= 0) & (src < S), other=0.0)
        y += tl.dot(h_tile, x_tile, input_precision="ieee")
    flags = (inside & (tl.abs(y) < threshold[:, None])).to(tl.int32)
    row_counts = tl.sum(flags, axis=1)
    count = tl.sum(row_counts, axis=0)
    if count > 0:
        local = tl.arange(0, BLOCK_F)[:, None] * BLOCK_O + tl.arange(0, BLOCK_O)[None, :]
        tl.debug_barrier()  # every thread has read back the slot's previous tile
        tl.store(y_slot + local, y)
        # the flagged samples' local indices, packed in order: an exclusive prefix sum over the flags
        packed = tl.cumsum(row_counts, axis=0)[:, None] - row_counts[:, None] + tl.cumsum(flags, axis=1) - 1
        tl.store(list_slot + packed, local, mask=flags != 0)
        tl.debug_barrier()
        first_t = tl.min(t, axis=0)
        first_f = tl.min(filt, axis=0)
        for q0 in range(0, count, RESCUE_BLOCK):
            q = q0 + tl.arange(0, RESCUE_BLOCK)
            q_ok = q < count
            index = tl.load(list_slot + q, mask=q_ok, other=0)
            f = first_f + index // BLOCK_O
            position = first_t + 4 * (index % BLOCK_O)
            exact = tl.zeros((RESCUE_BLOCK,), dtype=tl.float64)
            for k0 in range(0, K, BLOCK_K):
                taps = k0 + offs_k
                src = position[:, None] + taps[None, :] - half
                mask = q_ok[:, None] & (taps < K)[None, :]
                h_exact = tl.load(h_exact_ptr + f[:, None] * K + taps[None, :], mask=mask, other=0.0)
                x_exact = tl.load(x_exact_row + src, mask=mask & (src >= 0) & (src < S), other=0.0)
                exact += tl.sum(h_exact.to(tl.float64) * x_exact.to(tl.float64), axis=1)
            tl.store(y_slot + index, exact.to(tl.float32), mask=q_ok)
        tl.debug_barrier()
        y = tl.load(y_slot + local)
    return y


@triton.jit
def _audio_frontend_stem_forward_kernel(
    x_ptr, h_ptr, x_exact_ptr, h_exact_ptr, threshold_ptr, w_ptr, same_ptr, nxt_ptr, sums_ptr, y_scratch_ptr,
    list_scratch_ptr, S, F, C, K, n_out, tiles_per_clip, n_tiles, log_eps,
    BLOCK_O: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    RESCUE_BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    offs_f = tl.arange(0, BLOCK_F)
    chans = tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    y_slot = y_scratch_ptr + pid * BLOCK_F * BLOCK_O
    list_slot = list_scratch_ptr + pid * BLOCK_F * BLOCK_O
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        clip = tile // tiles_per_clip
        outputs = (tile % tiles_per_clip) * BLOCK_O + tl.arange(0, BLOCK_O)
        x_row = x_ptr + clip * S
        x_exact_row = x_exact_ptr + clip * S
        acc_same = tl.zeros((BLOCK_C, BLOCK_O), dtype=tl.float32)
        acc_next = tl.zeros((BLOCK_C, BLOCK_O), dtype=tl.float32)
        for f0 in range(0, F, BLOCK_F):
            filt = f0 + offs_f
            filt_ok = filt < F
            threshold = tl.load(threshold_ptr + clip * F + filt, mask=filt_ok, other=0.0)
            band_sum = tl.zeros((BLOCK_F,), dtype=tl.float32)
            w_rows = w_ptr + chans[:, None] * (F * 7) + filt[None, :] * 7
            w_mask = chan_ok[:, None] & filt_ok[None, :]
            for r in tl.static_range(4):
                t = 4 * outputs + r
                inside = filt_ok[:, None] & (t < S)[None, :]
                y = _band_response(x_row, h_ptr, x_exact_row, h_exact_ptr, threshold, filt, filt_ok, inside, t, S,
                                   K, y_slot, list_slot, BLOCK_F, BLOCK_O, BLOCK_K, RESCUE_BLOCK)
                a = tl.where(inside, tl.log(tl.abs(y) + log_eps), 0.0)
                band_sum += tl.sum(a, axis=1)
                w_same = tl.load(w_rows + (r + 3), mask=w_mask, other=0.0)
                acc_same += tl.dot(w_same, a, input_precision="ieee")
                if r >= 1:
                    w_next = tl.load(w_rows + (r - 1), mask=w_mask, other=0.0)
                    acc_next += tl.dot(w_next, a, input_precision="ieee")
            tl.store(sums_ptr + tile * F + filt, band_sum, mask=filt_ok)
        out_offsets = clip * C * n_out + chans[:, None] * n_out + outputs[None, :]
        out_mask = chan_ok[:, None] & (outputs < n_out)[None, :]
        tl.store(same_ptr + out_offsets, acc_same, mask=out_mask)
        tl.store(nxt_ptr + out_offsets, acc_next, mask=out_mask)


@triton.jit
def _audio_frontend_stem_backward_kernel(
    x_ptr, h_ptr, x_exact_ptr, h_exact_ptr, threshold_ptr, w_ptr, grad_ptr, mean_grad_ptr, dx_ptr, dh_ptr,
    dw_ptr, scratch_ptr, y_scratch_ptr, list_scratch_ptr,
    S, F, C, K, n_out, tiles_per_clip, n_tiles, n_slots, log_eps,
    BLOCK_O: tl.constexpr, CHUNKS: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, U: tl.constexpr, FG: tl.constexpr, MB: tl.constexpr,
    RESCUE_BLOCK: tl.constexpr,
):  # fmt: skip
    T: tl.constexpr = 4 * BLOCK_O * CHUNKS  # positions a tile owns
    pid = tl.program_id(0)
    half = K // 2
    offs_f = tl.arange(0, BLOCK_F)
    offs_k = tl.arange(0, BLOCK_K)
    offs_o = tl.arange(0, BLOCK_O)
    chans = tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    slot = scratch_ptr + pid * BLOCK_F * T
    y_slot = y_scratch_ptr + pid * BLOCK_F * BLOCK_O
    list_slot = list_scratch_ptr + pid * BLOCK_F * BLOCK_O
    dh_slot = dh_ptr + (pid % n_slots) * F * K
    dw_slot = dw_ptr + (pid % n_slots) * C * F * 7
    # the dx window: dx[t0 - half + 16 u + i] = sum over f, m of A_f[i, m] D_f[m, u] (a Toeplitz product),
    # A_f[i, m] = h[f, i + K - 1 - m], D_f[m, u] = dy[f, t0 - (K - 1) + 16 u + m]; contraction index
    # c = (filter, m) in steps of FG filters x MB taps
    rows16 = tl.arange(0, 16)
    cols_u = tl.arange(0, U)
    contraction = tl.arange(0, FG * MB)
    c_filter = contraction // MB
    c_tap = contraction % MB
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        clip = tile // tiles_per_clip
        o0 = (tile % tiles_per_clip) * (BLOCK_O * CHUNKS)
        t0 = 4 * o0
        x_row = x_ptr + clip * S
        x_exact_row = x_exact_ptr + clip * S
        dx = tl.zeros((16, U), dtype=tl.float32)
        for f0 in range(0, F, BLOCK_F):
            filt = f0 + offs_f
            filt_ok = filt < F
            mean_grad = tl.load(mean_grad_ptr + clip * F + filt, mask=filt_ok, other=0.0)
            threshold = tl.load(threshold_ptr + clip * F + filt, mask=filt_ok, other=0.0)
            w_cols = w_ptr + chans[None, :] * (F * 7) + filt[:, None] * 7  # (BLOCK_F, BLOCK_C): w[c, f, :]
            w_mask = filt_ok[:, None] & chan_ok[None, :]
            dw_rows = dw_slot + chans[:, None] * (F * 7) + filt[None, :] * 7  # (BLOCK_C, BLOCK_F)
            dw_mask = chan_ok[:, None] & filt_ok[None, :]
            # 1. per phase tile: y (recomputed as in the forward), a = log(|y| + eps), d(stem)/da, dy -> scratch
            for chunk in range(CHUNKS):
                outputs = o0 + chunk * BLOCK_O + offs_o
                g_rows = grad_ptr + clip * C * n_out + chans[:, None] * n_out + outputs[None, :]
                g_same = tl.load(g_rows, mask=chan_ok[:, None] & (outputs < n_out)[None, :], other=0.0)
                g_next = tl.load(g_rows + 1, mask=chan_ok[:, None] & (outputs + 1 < n_out)[None, :], other=0.0)
                for r in tl.static_range(4):
                    t = 4 * outputs + r
                    inside = filt_ok[:, None] & (t < S)[None, :]
                    y = _band_response(x_row, h_ptr, x_exact_row, h_exact_ptr, threshold, filt, filt_ok, inside, t,
                                       S, K, y_slot, list_slot, BLOCK_F, BLOCK_O, BLOCK_K, RESCUE_BLOCK)
                    magnitude = tl.abs(y) + log_eps
                    a = tl.where(inside, tl.log(magnitude), 0.0)
                    # stem tap r + 3 of output o and tap r - 1 of output o + 1 read position 4 o + r
                    d_a = tl.dot(tl.load(w_cols + (r + 3), mask=w_mask, other=0.0), g_same, input_precision="ieee")
                    tl.atomic_add(dw_rows + (r + 3), tl.dot(g_same, tl.trans(a), input_precision="ieee"), mask=dw_mask)
                    if r >= 1:
                        d_a += tl.dot(tl.load(w_cols + (r - 1), mask=w_mask, other=0.0), g_next, input_precision="ieee")
                        tl.atomic_add(dw_rows + (r - 1), tl.dot(g_next, tl.trans(a), input_precision="ieee"),
                                      mask=dw_mask)
                    sign = tl.where(y > 0, 1.0, tl.where(y < 0, -1.0, 0.0))
                    d_y = tl.where(inside, (d_a - mean_grad[:, None]) * sign / magnitude, 0.0)
                    tl.store(slot + offs_f[:, None] * T + (t - t0)[None, :], d_y)
            tl.debug_barrier()
            # 2. the tap gradient dh[f, k] += sum over the tile's positions of dy[f, t] x[t + k - half]
            for k0 in range(0, K, BLOCK_K):
                taps = k0 + offs_k
                tap_ok = taps < K
                dh = tl.zeros((BLOCK_F, BLOCK_K), dtype=tl.float32)
                for p0 in range(0, T, BLOCK_T):
                    positions = p0 + tl.arange(0, BLOCK_T)
                    d_y = tl.load(slot + offs_f[:, None] * T + positions[None, :])
                    src = t0 + positions[:, None] + taps[None, :] - half
                    x_tile = tl.load(x_row + src, mask=tap_ok[None, :] & (src >= 0) & (src < S), other=0.0)
                    dh += tl.dot(d_y, x_tile, input_precision="ieee")
                tl.atomic_add(dh_slot + filt[:, None] * K + taps[None, :], dh, mask=filt_ok[:, None] & tap_ok[None, :])
            # 3. the dx window of this tile: the Toeplitz product, FG filters x MB taps a step
            for fg0 in range(0, BLOCK_F, FG):
                c_f = f0 + fg0 + c_filter
                for m0 in range(0, K + 15, MB):
                    m = m0 + c_tap
                    tap = rows16[:, None] + (K - 1) - m[None, :]
                    a_tile = tl.load(h_ptr + c_f[None, :] * K + tap,
                                     mask=(tap >= 0) & (tap < K) & (c_f < F)[None, :], other=0.0)
                    rel = cols_u[None, :] * 16 + m[:, None] - (K - 1)
                    d_tile = tl.load(slot + (fg0 + c_filter)[:, None] * T + rel, mask=(rel >= 0) & (rel < T), other=0.0)
                    dx += tl.dot(a_tile, d_tile, input_precision="ieee")
            tl.debug_barrier()  # the next filter block overwrites the scratch
        tl.store(dx_ptr + tile * (16 * U) + cols_u[None, :] * 16 + rows16[:, None], dx)


# stem outputs of a tile under the interpreter (each Triton op costs it the same, whatever its size: few,
# large steps); tests of tile seams set it lower
INTERPRETER_BLOCK_O = 64


def _block_sizes(device: torch.device, filters: int, channels: int) -> tuple[int, int, int, int]:
    """(BLOCK_O, BLOCK_F, BLOCK_K, BLOCK_C); tl.dot needs every dimension >= 16."""
    block_c = max(16, triton.next_power_of_2(channels))
    block_f = 32 if filters > 16 else 16
    if device.type == "cuda":
        return 64, block_f, 32, block_c
    return INTERPRETER_BLOCK_O, block_f, 64, block_c


def _rescue_scratch(programs: int, block_f: int, block_o: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Each program's slots for a phase tile of y and the local indices of its samples to recompute."""
    size = programs * block_f * block_o
    return torch.empty(size, device=device, dtype=torch.float32), torch.empty(size, device=device, dtype=torch.int32)


RESCUE_BLOCK = 32  # samples recomputed in float64 per step


def launch_forward(
    x: torch.Tensor, filters: torch.Tensor, x_exact: torch.Tensor, filters_exact: torch.Tensor,
    threshold: torch.Tensor, stem_weight: torch.Tensor, log_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the kernel; returns (same, nxt, sums) as described in the module docstring."""
    batch, samples = x.shape
    num_filters, taps = filters.shape
    channels = stem_weight.shape[0]
    outputs = -(-samples // STEM_STRIDE)
    block_o, block_f, block_k, block_c = _block_sizes(x.device, num_filters, channels)
    tiles_per_clip = triton.cdiv(outputs, block_o)
    n_tiles = batch * tiles_per_clip
    programs, _ = persistent_plan(n_tiles, x.device, 8 * block_f * block_o, 0, 1 << 62)
    same = torch.empty(batch, channels, outputs, device=x.device, dtype=torch.float32)
    nxt = torch.empty_like(same)
    sums = torch.empty(batch, tiles_per_clip, num_filters, device=x.device, dtype=torch.float32)
    _audio_frontend_stem_forward_kernel[(programs,)](
        x, filters, x_exact, filters_exact, threshold, stem_weight, same, nxt, sums,
        *_rescue_scratch(programs, block_f, block_o, x.device),
        samples, num_filters, channels, taps, outputs, tiles_per_clip, n_tiles, log_eps,
        BLOCK_O=block_o, BLOCK_F=block_f, BLOCK_K=block_k, BLOCK_C=block_c, RESCUE_BLOCK=RESCUE_BLOCK, num_stages=1,
    )  # fmt: skip
    return same, nxt, sums


# the backward's scratch and partial slots at most (a fixed bound: independent of the batch and the length)
BACKWARD_WORKSPACE_BYTES = 32 << 20


def backward_plan(batch: int, samples: int, filters: int, taps: int, channels: int, device: torch.device) -> dict:
    """The backward's blocks, tiles (T positions each), dx window (16 U samples), scratch and partial sizes
    (elements) and persistent plan."""
    outputs = -(-samples // STEM_STRIDE)
    block_o, block_f, block_k, _ = _block_sizes(device, filters, channels)
    if device.type == "cuda":
        fg, mb = 4, 16

        def window(chunks: int) -> int:
            return max(16, triton.next_power_of_2(triton.cdiv(4 * block_o * chunks + taps - 1, 16)))

        # tiles of 1-4 chunks of outputs: the one whose dx window (tile + filter halo) wastes least
        chunks = max(range(1, 5), key=lambda n: (4 * block_o * n / (16 * window(n)), -n))
    else:  # the interpreter: few, large steps (each Triton op costs it the same, whatever its size)
        chunks, fg, mb = 1, block_f, triton.next_power_of_2(taps + 15)
    positions = 4 * block_o * chunks
    u = max(16, triton.next_power_of_2(triton.cdiv(positions + taps - 1, 16)))
    tiles_per_clip = triton.cdiv(outputs, block_o * chunks)
    scratch = block_f * (positions + 2 * block_o)  # dy, and the rescue's y and index slots
    partial = filters * taps + channels * filters * STEM_KERNEL
    programs, slots = persistent_plan(batch * tiles_per_clip, device, 4 * scratch, 4 * partial,
                                      BACKWARD_WORKSPACE_BYTES)
    return dict(block_o=block_o, chunks=chunks, block_f=block_f, block_k=block_k, positions=positions, u=u,
                fg=fg, mb=mb, block_t=min(positions, 64 if device.type == "cuda" else positions),
                tiles_per_clip=tiles_per_clip, scratch=scratch, partial=partial, programs=programs, slots=slots,
                workspace_bytes=4 * (programs * scratch + slots * partial))


def launch_backward(
    grad: torch.Tensor, x: torch.Tensor, filters: torch.Tensor, x_exact: torch.Tensor, filters_exact: torch.Tensor,
    threshold: torch.Tensor, stem_weight: torch.Tensor, mean_grad: torch.Tensor, log_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx (B, S), d_filters (F, K) in float64, the stem weight's gradient through a (C, F, 7) in float64) for
    grad (B, C, O) and mean_grad (B, F) = the gradient reaching the per-filter means, divided by S."""
    batch, samples = x.shape
    num_filters, taps = filters.shape
    channels = stem_weight.shape[0]
    plan = backward_plan(batch, samples, num_filters, taps, channels, x.device)
    n_tiles = batch * plan["tiles_per_clip"]
    window = 16 * plan["u"]
    dx_windows = torch.empty(n_tiles, window, device=x.device, dtype=torch.float32)
    dh = torch.zeros(plan["slots"], num_filters, taps, device=x.device, dtype=torch.float32)
    dw = torch.zeros(plan["slots"], channels, num_filters, STEM_KERNEL, device=x.device, dtype=torch.float32)
    scratch = torch.empty(plan["programs"] * plan["block_f"] * plan["positions"], device=x.device,
                          dtype=torch.float32)
    _audio_frontend_stem_backward_kernel[(plan["programs"],)](
        x, filters, x_exact, filters_exact, threshold, stem_weight, grad, mean_grad, dx_windows, dh, dw, scratch,
        *_rescue_scratch(plan["programs"], plan["block_f"], plan["block_o"], x.device),
        samples, num_filters, channels, taps, grad.shape[2], plan["tiles_per_clip"], n_tiles, plan["slots"], log_eps,
        BLOCK_O=plan["block_o"], CHUNKS=plan["chunks"], BLOCK_F=plan["block_f"], BLOCK_K=plan["block_k"],
        BLOCK_C=max(16, triton.next_power_of_2(channels)), BLOCK_T=plan["block_t"], U=plan["u"], FG=plan["fg"],
        MB=plan["mb"], RESCUE_BLOCK=RESCUE_BLOCK, num_stages=1,
    )  # fmt: skip
    # overlap-add the windows: tile i's window starts at sample i * T - K // 2
    positions = plan["positions"]
    length = (plan["tiles_per_clip"] - 1) * positions + window
    windows = dx_windows.view(batch, plan["tiles_per_clip"], window).transpose(1, 2)
    dx_padded = torch.nn.functional.fold(windows, (1, length), (1, window), stride=(1, positions)).view(batch, length)
    half = taps // 2
    return dx_padded[:, half : half + samples].contiguous(), dh.double().sum(dim=0), dw.double().sum(dim=0)
