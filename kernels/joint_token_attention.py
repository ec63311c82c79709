"""Triton kernels of ``joint_token_attention``: LayerNorm, single-head attention with q = k = v = u
(no projections), Linear, residual, flash-style (the L x L scores are never stored).

Shapes (contiguous): tokens (B, L, D), pos (L, D), ln_w / ln_b / lin_b (D,), lin_w (D, D); D = 49 is padded
to BLOCK_D = 64 inside the kernels only.

Precision. Tokens are float32, or fp16 / bf16 on a GPU. The matrix products (scores u u^T, P u, the Linear,
and the backward's dP, dS u, dS^T u, P^T d_mixed) take their operands in the tokens' dtype with fp32
accumulation (``kernels/_common.dot``; fp32 tokens: fp32 ``ieee`` dots); LayerNorm, the softmax (max, exp,
sum, lse), the residual and the biases are fp32, and so are mixed, lse and du.

    launch_forward(tokens, pos, ln_w, ln_b, lin_w, lin_b, eps) -> out (B, L, D) in tokens' dtype,
        mixed (B, L, D), lse (B, L) (fp32), u (B, L, D) in the dots' operand dtype (``operand_dtype``):
        mixed = softmax(u u^T / sqrt(D)) u, lse its row log-sum-exp, u = LayerNorm(tokens + pos) as the
        dots read it (all three kept for the backward)
    launch_attention_backward(u, d_mixed, lse, mixed) -> du (B, L, D) fp32
        du = scale (dS u + dS^T u) + P^T d_mixed; one kernel over query blocks (the dS u part), one
        over key blocks (the rest), each recomputing P from lse and the forward's own u (a u recomputed
        elsewhere can round differently to fp16 / bf16, and on a peaked softmax one such element moves a
        score by percents of P).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from avfused.kernels._common import DOT_BF16, DOT_FP16, dot, dot_kind


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
    z = tl.load(tok_ptr + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    z += tl.load(pos_ptr + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
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
    u_ptr,
    L,
    D,
    eps,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT: tl.constexpr,
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
        scores = dot(u_q, tl.trans(u_k), DOT) * scale  # u is LayerNorm'd (|u| ~ 1): fp16 / bf16 operands suffice
        scores = tl.where(key_ok[None, :], scores, float("-inf"))
        # max, sum and lse in fp32: an fp16 lse alone shifts every P of a row (30x the rule on peaked attention)
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        probs = tl.exp(scores - new_max[:, None])
        rescale = tl.exp(row_max - new_max)
        row_sum = row_sum * rescale + tl.sum(probs, axis=1)
        acc = acc * rescale[:, None] + dot(probs, u_k, DOT)  # P in [0, 1] rounds like PyTorch's own P
        row_max = new_max
    mixed = acc / row_sum[:, None]
    # Linear: proj[:, e] = sum_d mixed[:, d] lin_w[e, d]; load lin_w transposed, padded to BLOCK_D
    w_t = tl.load(lin_w_ptr + cols[None, :] * D + cols[:, None], mask=col_ok[:, None] & col_ok[None, :], other=0.0)
    lin_b = tl.load(lin_b_ptr + cols, mask=col_ok, other=0.0)
    out = z_q + dot(mixed, w_t, DOT) + lin_b[None, :]  # residual and bias in fp32, rounded once on the store
    offsets = clip * L * D + rows[:, None] * D + cols[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(mixed_ptr + offsets, mixed, mask=mask)
    tl.store(u_ptr + offsets, u_q.to(u_ptr.dtype.element_ty), mask=mask)
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
    DOT: tl.constexpr,
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
        scores = dot(u_q, tl.trans(u_k), DOT) * scale  # rounded as in the forward, so that P fits its lse
        probs = tl.where(key_ok[None, :], tl.exp(scores - lse_q[:, None]), 0.0)
        d_probs = dot(dmix_q, tl.trans(u_k), DOT)
        d_scores = probs * (d_probs - delta_q[:, None])  # fp32: a difference of near-equal numbers
        acc += dot(d_scores, u_k, DOT)
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
    DOT: tl.constexpr,
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
        scores_t = dot(u_k, tl.trans(u_q), DOT) * scale
        probs_t = tl.where(row_ok[None, :], tl.exp(scores_t - lse_q[None, :]), 0.0)
        d_value += dot(probs_t, dmix_q, DOT)
        d_probs_t = dot(u_k, tl.trans(dmix_q), DOT)
        d_scores_t = probs_t * (d_probs_t - delta_q[None, :])  # fp32: a difference of near-equal numbers
        d_key += dot(d_scores_t, u_q, DOT)
    tl.store(du_ptr + base + keys[:, None] * D + cols[None, :], d_key * scale + d_value, mask=k_mask)


def _blocks(tokens: torch.Tensor) -> tuple[int, int, int]:
    block_d = max(16, triton.next_power_of_2(tokens.shape[-1]))
    return 64, 64, block_d  # large blocks: few programs on the GPU, few numpy steps in the interpreter


def operand_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the dots round their operands to for tokens of ``dtype`` (kernels/_common.dot_kind)."""
    return {DOT_FP16: torch.float16, DOT_BF16: torch.bfloat16}.get(dot_kind(dtype, device), torch.float32)


def launch_forward(
    tokens: torch.Tensor,
    pos: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    lin_w: torch.Tensor,
    lin_b: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, length, dim = tokens.shape
    block_m, block_n, block_d = _blocks(tokens)
    out = torch.empty_like(tokens)
    floats = dict(device=tokens.device, dtype=torch.float32)
    mixed = torch.empty(batch, length, dim, **floats)  # fp32: the backward's delta = rowsum(d_mixed * mixed)
    lse = torch.empty(batch, length, **floats)
    u = torch.empty_like(tokens, dtype=operand_dtype(tokens.dtype, tokens.device))
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
        u,
        length,
        dim,
        eps,
        1.0 / math.sqrt(dim),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        DOT=dot_kind(tokens.dtype, tokens.device),
    )
    return out, mixed, lse, u


def launch_attention_backward(
    u: torch.Tensor, d_mixed: torch.Tensor, lse: torch.Tensor, mixed: torch.Tensor
) -> torch.Tensor:
    """du (fp32) from the forward's u (in the dots' operand dtype) and fp32 d_mixed, lse and mixed; d_mixed is
    cast once to u's dtype here, so the kernels read half as much in fp16 / bf16."""
    batch, length, dim = u.shape
    block_m, block_n, block_d = _blocks(u)
    scale = 1.0 / math.sqrt(dim)
    du_query = torch.empty_like(u, dtype=torch.float32)
    du_key = torch.empty_like(du_query)
    d_mixed = d_mixed.to(u.dtype)
    # delta = rowsum(d_mixed * mixed) from d_mixed as the dots read it, so that sum_k P dP = delta holds for
    # the rounded operands too: else dS = P (dP - delta) carries a systematic error (fp16: 2x more in d_ln_w)
    delta = (d_mixed.float() * mixed).sum(dim=-1).contiguous()
    args = (u, d_mixed, lse, delta)
    blocks = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, DOT=dot_kind(u.dtype, u.device))
    grid = (batch, triton.cdiv(length, block_m))
    _attention_backward_query_kernel[grid](*args, du_query, length, dim, scale, **blocks)
    grid = (batch, triton.cdiv(length, block_n))
    _attention_backward_key_kernel[grid](*args, du_key, length, dim, scale, **blocks)
    return du_query + du_key
