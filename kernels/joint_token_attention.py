"""Triton kernels of ``joint_token_attention``: LayerNorm, single-head attention with q = k = v = u
(no projections), Linear, residual, flash-style (the L x L scores are never stored).

Shapes (float32, contiguous): tokens (B, L, D), pos (L, D), ln_w / ln_b / lin_b (D,), lin_w (D, D);
D = 49 is padded to BLOCK_D = 64 inside the kernels only.

    launch_forward(tokens, pos, ln_w, ln_b, lin_w, lin_b, eps) -> out (B, L, D), mixed (B, L, D), lse (B, L)
        mixed = softmax(u u^T / sqrt(D)) u, lse its row log-sum-exp (both kept for the backward)
    launch_attention_backward(u, d_mixed, lse, delta) -> du (B, L, D)
        du = scale (dS u + dS^T u) + P^T d_mixed; one kernel over query blocks (the dS u part), one
        over key blocks (the rest), each recomputing P from lse.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _layer_norm_rows(z, col_ok, ln_w, ln_b, D, eps):
    """LayerNorm of each row of z (rows, BLOCK_D) over its first D columns; padding columns give 0."""
    mean = tl.sum(z, axis=1) / D
    centred = tl.where(col_ok[None, :], z - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / D + eps)
    return centred * rstd[:, None] * ln_w[None, :] + ln_b[None, :]


@triton.jit
def _load_normed_tokens(tok_ptr, pos_ptr, rows, cols, row_ok, col_ok, ln_w, ln_b, L, D, eps):
    """(z, u) for one block of rows of one clip: z = tokens + pos, u = LayerNorm(z)."""
    mask = row_ok[:, None] & col_ok[None, :]
    z = tl.load(tok_ptr + rows[:, None] * D + cols[None, :], mask=mask, other=0.0)
    z += tl.load(pos_ptr + rows[:, None] * D + cols[None, :], mask=mask, other=0.0)
    return z, _layer_norm_rows(z, col_ok, ln_w, ln_b, D, eps)


@triton.jit
def _joint_attention_forward_kernel(
    tok_ptr,
    pos_ptr,
    ln_w_ptr,
    ln_b_ptr,
    lin_w_ptr,
    lin_b_ptr,
    out_ptr,
    mixed_ptr,
    lse_ptr,
    L,
    D,
    eps,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    clip = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    row_ok = rows < L
    ln_w = tl.load(ln_w_ptr + cols, mask=col_ok, other=0.0)
    ln_b = tl.load(ln_b_ptr + cols, mask=col_ok, other=0.0)
    tok_clip = tok_ptr + clip * L * D
    z_q, u_q = _load_normed_tokens(tok_clip, pos_ptr, rows, cols, row_ok, col_ok, ln_w, ln_b, L, D, eps)
    row_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, L, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        key_ok = keys < L
        _, u_k = _load_normed_tokens(tok_clip, pos_ptr, keys, cols, key_ok, col_ok, ln_w, ln_b, L, D, eps)
        scores = tl.dot(u_q, tl.trans(u_k), input_precision="ieee") * scale
        scores = tl.where(key_ok[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        probs = tl.exp(scores - new_max[:, None])
        rescale = tl.exp(row_max - new_max)
        row_sum = row_sum * rescale + tl.sum(probs, axis=1)
        acc = acc * rescale[:, None] + tl.dot(probs, u_k, input_precision="ieee")
        row_max = new_max
    mixed = acc / row_sum[:, None]
    # Linear: proj[:, e] = sum_d mixed[:, d] lin_w[e, d]; load lin_w transposed, padded to BLOCK_D
    w_t = tl.load(lin_w_ptr + cols[None, :] * D + cols[:, None], mask=col_ok[:, None] & col_ok[None, :], other=0.0)
    lin_b = tl.load(lin_b_ptr + cols, mask=col_ok, other=0.0)
    out = z_q + tl.dot(mixed, w_t, input_precision="ieee") + lin_b[None, :]
    offsets = clip * L * D + rows[:, None] * D + cols[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    tl.store(out_ptr + offsets, out, mask=mask)
    tl.store(mixed_ptr + offsets, mixed, mask=mask)
    tl.store(lse_ptr + clip * L + rows, row_max + tl.log(row_sum), mask=row_ok)


@triton.jit
def _attention_backward_query_kernel(
    u_ptr,
    dmix_ptr,
    lse_ptr,
    delta_ptr,
    du_ptr,
    L,
    D,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """du[q] (the query part) = scale * sum_k dS[q, k] u[k], dS = P (dP - delta), dP = d_mixed u^T."""
    clip = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    row_ok = rows < L
    base = clip * L * D
    q_mask = row_ok[:, None] & col_ok[None, :]
    u_q = tl.load(u_ptr + base + rows[:, None] * D + cols[None, :], mask=q_mask, other=0.0)
    dmix_q = tl.load(dmix_ptr + base + rows[:, None] * D + cols[None, :], mask=q_mask, other=0.0)
    lse_q = tl.load(lse_ptr + clip * L + rows, mask=row_ok, other=0.0)
    delta_q = tl.load(delta_ptr + clip * L + rows, mask=row_ok, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, L, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        key_ok = keys < L
        u_k = tl.load(
            u_ptr + base + keys[:, None] * D + cols[None, :], mask=key_ok[:, None] & col_ok[None, :], other=0.0
        )
        scores = tl.dot(u_q, tl.trans(u_k), input_precision="ieee") * scale
        probs = tl.where(key_ok[None, :], tl.exp(scores - lse_q[:, None]), 0.0)
        d_probs = tl.dot(dmix_q, tl.trans(u_k), input_precision="ieee")
        d_scores = probs * (d_probs - delta_q[:, None])
        acc += tl.dot(d_scores, u_k, input_precision="ieee")
    tl.store(du_ptr + base + rows[:, None] * D + cols[None, :], acc * scale, mask=q_mask)


@triton.jit
def _attention_backward_key_kernel(
    u_ptr,
    dmix_ptr,
    lse_ptr,
    delta_ptr,
    du_ptr,
    L,
    D,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """du[k] (key and value parts) = scale * sum_q dS[q, k] u[q] + sum_q P[q, k] d_mixed[q]."""
    clip = tl.program_id(0)
    keys = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    key_ok = keys < L
    base = clip * L * D
    k_mask = key_ok[:, None] & col_ok[None, :]
    u_k = tl.load(u_ptr + base + keys[:, None] * D + cols[None, :], mask=k_mask, other=0.0)
    d_key = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    d_value = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for m0 in range(0, L, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < L
        q_mask = row_ok[:, None] & col_ok[None, :]
        u_q = tl.load(u_ptr + base + rows[:, None] * D + cols[None, :], mask=q_mask, other=0.0)
        dmix_q = tl.load(dmix_ptr + base + rows[:, None] * D + cols[None, :], mask=q_mask, other=0.0)
        lse_q = tl.load(lse_ptr + clip * L + rows, mask=row_ok, other=0.0)
        delta_q = tl.load(delta_ptr + clip * L + rows, mask=row_ok, other=0.0)
        scores_t = tl.dot(u_k, tl.trans(u_q), input_precision="ieee") * scale
        probs_t = tl.where(row_ok[None, :], tl.exp(scores_t - lse_q[None, :]), 0.0)
        d_value += tl.dot(probs_t, dmix_q, input_precision="ieee")
        d_probs_t = tl.dot(u_k, tl.trans(dmix_q), input_precision="ieee")
        d_scores_t = probs_t * (d_probs_t - delta_q[None, :])
        d_key += tl.dot(d_scores_t, u_q, input_precision="ieee")
    tl.store(du_ptr + base + keys[:, None] * D + cols[None, :], d_key * scale + d_value, mask=k_mask)


def _blocks(tokens: torch.Tensor) -> tuple[int, int, int]:
    block_d = max(16, triton.next_power_of_2(tokens.shape[-1]))
    return 64, 64, block_d  # large blocks: few programs on the GPU, few numpy steps in the interpreter


def launch_forward(
    tokens: torch.Tensor,
    pos: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    lin_w: torch.Tensor,
    lin_b: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, length, dim = tokens.shape
    block_m, block_n, block_d = _blocks(tokens)
    out = torch.empty_like(tokens)
    mixed = torch.empty_like(tokens)
    lse = torch.empty(batch, length, device=tokens.device, dtype=torch.float32)
    grid = (batch, triton.cdiv(length, block_m))
    _joint_attention_forward_kernel[grid](
        tokens,
        pos,
        ln_w,
        ln_b,
        lin_w,
        lin_b,
        out,
        mixed,
        lse,
        length,
        dim,
        eps,
        1.0 / math.sqrt(dim),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
    )
    return out, mixed, lse


def launch_attention_backward(
    u: torch.Tensor, d_mixed: torch.Tensor, lse: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    batch, length, dim = u.shape
    block_m, block_n, block_d = _blocks(u)
    scale = 1.0 / math.sqrt(dim)
    du_query = torch.empty_like(u)
    du_key = torch.empty_like(u)
    args = (u, d_mixed, lse, delta)
    _attention_backward_query_kernel[(batch, triton.cdiv(length, block_m))](
        *args, du_query, length, dim, scale, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d
    )
    _attention_backward_key_kernel[(batch, triton.cdiv(length, block_n))](
        *args, du_key, length, dim, scale, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d
    )
    return du_query + du_key
