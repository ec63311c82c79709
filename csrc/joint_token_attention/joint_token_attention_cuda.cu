// Joint token attention on the GPU, forward and backward, flash-style (q = k = v = u; the L x L scores
// are never stored):
//   layer_norm_kernel    one warp per token: u = LayerNorm(tokens + pos) into a zero-padded (B, L, 64)
//                        float32 workspace (D <= 64).
//   forward_kernel       kQueriesPerBlock queries per block, kLanesPerQuery lanes per query, each lane
//                        holding 8 of the 64 values of its query and of its output accumulator; keys
//                        stream through shared memory with an online softmax; then the Linear + bias +
//                        residual from shared memory. Writes out (tokens' dtype), the attention output
//                        `mixed` and its row log-sum-exp `lse` (float32, for the backward).
//   query_backward_kernel / key_backward_kernel   du from d_mixed with P recomputed from lse, split as
//                        the query path (scale dS u) and the key + value paths (scale dS^T u + P^T dO).
// With 8 queries of 8 lanes a block, the small model's L = 650 tokens give 82 blocks per clip at batch 1.
// tokens and out are float32, bfloat16 or float16; everything is computed in float32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "joint_token_attention.h"

namespace avfused::cuda {
namespace {

constexpr int kDim = kCudaAttentionWidth;  // padded token width (64)
constexpr int kLanesPerQuery = 8;
constexpr int kPerLane = kDim / kLanesPerQuery;  // 8 values per lane
constexpr int kQueriesPerBlock = 8;
constexpr int kThreads = kQueriesPerBlock * kLanesPerQuery;  // 64
constexpr int kKeyTile = 64;
constexpr int kNormWarps = 4;  // tokens per layer-norm block

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half(v); }

// The sum of v over the kLanesPerQuery lanes of one query (consecutive lanes of a warp).
__device__ __forceinline__ float query_sum(float v) {
#pragma unroll
  for (int offset = 1; offset < kLanesPerQuery; offset <<= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <class T>
__global__ void __launch_bounds__(kNormWarps * 32)
    layer_norm_kernel(const T* __restrict__ tokens, const float* __restrict__ pos, const float* __restrict__ weight,
                      const float* __restrict__ bias, float* __restrict__ u, long long rows, int length, int dim,
                      float eps) {
  constexpr int kPer = kDim / 32;
  const int lane = threadIdx.x & 31;
  const long long row = static_cast<long long>(blockIdx.x) * kNormWarps + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps leave together; no block-level barrier below
  const long long l = row % length;
  float values[kPer];
  float sum = 0.f;
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int d = lane + 32 * r;
    values[r] = d < dim ? to_float(tokens[row * dim + d]) + pos[l * dim + d] : 0.f;
    sum += values[r];
  }
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  const float mean = sum / dim;
  float squares = 0.f;
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int d = lane + 32 * r;
    const float centred = d < dim ? values[r] - mean : 0.f;
    squares += centred * centred;
  }
  for (int offset = 16; offset > 0; offset >>= 1) squares += __shfl_xor_sync(0xffffffffu, squares, offset);
  const float rstd = rsqrtf(squares / dim + eps);
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int d = lane + 32 * r;
    u[row * kDim + d] = d < dim ? (values[r] - mean) * rstd * weight[d] + bias[d] : 0.f;
  }
}

// Stage rows [first, first + count) of a (rows, kDim) float32 matrix into tile (zeros past count).
__device__ __forceinline__ void stage_rows(float (*tile)[kDim], const float* __restrict__ source, int first,
                                           int count) {
  for (int i = threadIdx.x; i < kKeyTile * kDim; i += kThreads) {
    const int r = i / kDim, d = i - r * kDim;
    tile[r][d] = r < count ? source[static_cast<long long>(first + r) * kDim + d] : 0.f;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const float* __restrict__ u, const T* __restrict__ tokens, const float* __restrict__ pos,
                   const float* __restrict__ lin_weight, const float* __restrict__ lin_bias, T* __restrict__ out,
                   float* __restrict__ mixed, float* __restrict__ lse, int length, int dim, float scale) {
  __shared__ float keys[kKeyTile][kDim];
  __shared__ float weight[kDim][kDim + 1];  // W[e][d]; +1: the lanes of a query read a column without conflicts
  __shared__ float attended[kQueriesPerBlock][kDim];
  const long long b = blockIdx.y;
  const int slot = threadIdx.x / kLanesPerQuery, part = threadIdx.x % kLanesPerQuery;
  const int query = blockIdx.x * kQueriesPerBlock + slot;
  const bool active = query < length;
  const float* ub = u + b * length * kDim;
  for (int i = threadIdx.x; i < kDim * kDim; i += kThreads) {
    const int e = i / kDim, d = i - e * kDim;
    weight[e][d] = e < dim && d < dim ? lin_weight[e * dim + d] : 0.f;
  }

  float q[kPerLane], acc[kPerLane];
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    q[r] = active ? ub[static_cast<long long>(query) * kDim + part * kPerLane + r] : 0.f;
    acc[r] = 0.f;
  }
  float running_max = -INFINITY, running_sum = 0.f;
  for (int k0 = 0; k0 < length; k0 += kKeyTile) {
    const int count = min(kKeyTile, length - k0);
    __syncthreads();  // the previous tile's readers are done
    stage_rows(keys, ub, k0, count);
    __syncthreads();
    for (int kk = 0; kk < count; ++kk) {
      const float* key = keys[kk] + part * kPerLane;
      float partial = 0.f;
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) partial = fmaf(q[r], key[r], partial);
      const float score = query_sum(partial) * scale;  // padded values are 0
      const float new_max = fmaxf(running_max, score);
      const float rescale = __expf(running_max - new_max);  // 0 on the first key (exp(-inf))
      const float p = __expf(score - new_max);
      running_sum = running_sum * rescale + p;
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) acc[r] = fmaf(p, key[r], acc[r] * rescale);
      running_max = new_max;
    }
  }
  const float inv_sum = 1.f / running_sum;
  const long long row = b * length + query;
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    const int d = part * kPerLane + r;
    attended[slot][d] = acc[r] * inv_sum;
    if (active && d < dim) mixed[row * dim + d] = acc[r] * inv_sum;
  }
  if (active && part == 0) lse[row] = running_max + logf(running_sum);
  __syncthreads();
  if (!active) return;
  for (int r = 0; r < kPerLane; ++r) {  // Linear(D, D) + bias + residual z = tokens + pos
    const int e = part + kLanesPerQuery * r;  // the query's 8 lanes write 8 consecutive outputs
    if (e >= dim) continue;
    float value = lin_bias[e];
#pragma unroll 8
    for (int d = 0; d < kDim; ++d) value = fmaf(weight[e][d], attended[slot][d], value);
    const long long at = row * dim + e;
    out[at] = from_float<T>(to_float(tokens[at]) + pos[static_cast<long long>(query) * dim + e] + value);
  }
}

// du_i += scale * sum_j dS_ij u_j over all keys j, for this block's queries i.
__global__ void __launch_bounds__(kThreads)
    query_backward_kernel(const float* __restrict__ u, const float* __restrict__ d_mixed, const float* __restrict__ lse,
                          const float* __restrict__ delta, float* __restrict__ du, int length, int dim, float scale) {
  __shared__ float keys[kKeyTile][kDim];
  const long long b = blockIdx.y;
  const int slot = threadIdx.x / kLanesPerQuery, part = threadIdx.x % kLanesPerQuery;
  const int query = blockIdx.x * kQueriesPerBlock + slot;
  const bool active = query < length;
  const float* ub = u + b * length * kDim;
  const long long row = b * length + query;
  float q[kPerLane], g[kPerLane], acc[kPerLane];
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    const int d = part * kPerLane + r;
    q[r] = active ? ub[static_cast<long long>(query) * kDim + d] : 0.f;
    g[r] = active && d < dim ? d_mixed[row * dim + d] : 0.f;
    acc[r] = 0.f;
  }
  const float row_lse = active ? lse[row] : 0.f, row_delta = active ? delta[row] : 0.f;
  for (int k0 = 0; k0 < length; k0 += kKeyTile) {
    const int count = min(kKeyTile, length - k0);
    __syncthreads();
    stage_rows(keys, ub, k0, count);
    __syncthreads();
    for (int kk = 0; kk < count; ++kk) {
      const float* key = keys[kk] + part * kPerLane;
      float score = 0.f, dp = 0.f;
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) {
        score = fmaf(q[r], key[r], score);
        dp = fmaf(g[r], key[r], dp);
      }
      const float p = __expf(query_sum(score) * scale - row_lse);
      const float ds = p * (query_sum(dp) - row_delta);
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) acc[r] = fmaf(ds * scale, key[r], acc[r]);
    }
  }
  if (!active) return;
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) du[row * kDim + part * kPerLane + r] = acc[r];
}

// du_j += sum_i (P_ij dO_i + scale dS_ij u_i) over all queries i, for this block's keys j.
__global__ void __launch_bounds__(kThreads)
    key_backward_kernel(const float* __restrict__ u, const float* __restrict__ d_mixed, const float* __restrict__ lse,
                        const float* __restrict__ delta, float* __restrict__ du, int length, int dim, float scale) {
  __shared__ float queries[kKeyTile][kDim];
  __shared__ float grads[kKeyTile][kDim];
  __shared__ float query_lse[kKeyTile], query_delta[kKeyTile];
  const long long b = blockIdx.y;
  const int slot = threadIdx.x / kLanesPerQuery, part = threadIdx.x % kLanesPerQuery;
  const int key = blockIdx.x * kQueriesPerBlock + slot;
  const bool active = key < length;
  const float* ub = u + b * length * kDim;
  float k[kPerLane], acc[kPerLane];
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    k[r] = active ? ub[static_cast<long long>(key) * kDim + part * kPerLane + r] : 0.f;
    acc[r] = 0.f;
  }
  for (int i0 = 0; i0 < length; i0 += kKeyTile) {
    const int count = min(kKeyTile, length - i0);
    __syncthreads();
    stage_rows(queries, ub, i0, count);
    for (int i = threadIdx.x; i < kKeyTile * kDim; i += kThreads) {
      const int r = i / kDim, d = i - r * kDim;
      grads[r][d] = r < count && d < dim ? d_mixed[(b * length + i0 + r) * dim + d] : 0.f;
    }
    for (int i = threadIdx.x; i < kKeyTile; i += kThreads) {
      query_lse[i] = i < count ? lse[b * length + i0 + i] : 0.f;
      query_delta[i] = i < count ? delta[b * length + i0 + i] : 0.f;
    }
    __syncthreads();
    for (int ii = 0; ii < count; ++ii) {
      const float* q = queries[ii] + part * kPerLane;
      const float* g = grads[ii] + part * kPerLane;
      float score = 0.f, dp = 0.f;
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) {
        score = fmaf(q[r], k[r], score);
        dp = fmaf(g[r], k[r], dp);
      }
      const float p = __expf(query_sum(score) * scale - query_lse[ii]);
      const float ds = p * (query_sum(dp) - query_delta[ii]);
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) acc[r] = fmaf(p, g[r], fmaf(ds * scale, q[r], acc[r]));
    }
  }
  if (!active) return;
  const long long row = b * length + key;
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) du[row * kDim + part * kPerLane + r] += acc[r];
}

template <class T>
cudaError_t launch_forward_typed(const void* tokens, const float* pos, const float* ln_weight, const float* ln_bias,
                                 const float* lin_weight, const float* lin_bias, float* u, void* out, float* mixed,
                                 float* lse, int batch, int length, int dim, float eps, cudaStream_t stream) {
  const long long rows = static_cast<long long>(batch) * length;
  const long long norm_blocks = (rows + kNormWarps - 1) / kNormWarps;
  layer_norm_kernel<T><<<static_cast<unsigned>(norm_blocks), kNormWarps * 32, 0, stream>>>(
      static_cast<const T*>(tokens), pos, ln_weight, ln_bias, u, rows, length, dim, eps);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const dim3 grid((length + kQueriesPerBlock - 1) / kQueriesPerBlock, batch);
  forward_kernel<T><<<grid, kThreads, 0, stream>>>(u, static_cast<const T*>(tokens), pos, lin_weight, lin_bias,
                                                   static_cast<T*>(out), mixed, lse, length, dim,
                                                   rsqrtf(static_cast<float>(dim)));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_joint_token_attention_forward(const void* tokens, TokenDtype dtype, const float* pos,
                                                 const float* ln_weight, const float* ln_bias,
                                                 const float* lin_weight, const float* lin_bias, float* u_workspace,
                                                 void* out, float* mixed, float* lse, int batch, int length, int dim,
                                                 float eps, cudaStream_t stream) {
  if (dim < 1 || dim > kDim) return cudaErrorInvalidValue;
  switch (dtype) {
    case TokenDtype::kFloat32:
      return launch_forward_typed<float>(tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, u_workspace, out,
                                         mixed, lse, batch, length, dim, eps, stream);
    case TokenDtype::kBFloat16:
      return launch_forward_typed<__nv_bfloat16>(tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, u_workspace,
                                                 out, mixed, lse, batch, length, dim, eps, stream);
    case TokenDtype::kFloat16:
      return launch_forward_typed<__half>(tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, u_workspace, out,
                                          mixed, lse, batch, length, dim, eps, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_joint_token_attention_attend_backward(const float* u, const float* d_mixed, const float* lse,
                                                         const float* delta, float* du, int batch, int length,
                                                         int dim, cudaStream_t stream) {
  if (dim < 1 || dim > kDim) return cudaErrorInvalidValue;
  const dim3 grid((length + kQueriesPerBlock - 1) / kQueriesPerBlock, batch);
  const float scale = rsqrtf(static_cast<float>(dim));
  query_backward_kernel<<<grid, kThreads, 0, stream>>>(u, d_mixed, lse, delta, du, length, dim, scale);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  key_backward_kernel<<<grid, kThreads, 0, stream>>>(u, d_mixed, lse, delta, du, length, dim, scale);
  return cudaGetLastError();
}

}  // namespace avfused::cuda
