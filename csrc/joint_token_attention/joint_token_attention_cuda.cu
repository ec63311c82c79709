// Joint token attention forward on the GPU (flash-style, q = k = v = u):
//   1. layer_norm_kernel: one warp per token, u = LayerNorm(tokens + pos) into a zero-padded
//      (B, L, DP) workspace (DP = 64, a compile-time width so rows live in registers; wider tokens
//      would hold 2 x DP floats per thread and spill, so dim > 64 is refused here and served by the reference).
//   2. joint_token_attention_kernel: one thread per query, its row of u and its output accumulator in
//      registers; keys stream through shared memory in tiles with an online softmax, so the (L x L)
//      scores are never stored; then Linear + bias + residual from registers.
#include <cuda_runtime.h>

#include "joint_token_attention.h"

namespace avfused::cuda {
namespace {

constexpr int kQueries = 64;   // threads (queries) per attention block
constexpr int kKeyTile = 64;   // keys staged in shared memory at a time
constexpr int kNormWarps = 4;  // tokens per layer-norm block

template <int DP>
__global__ void __launch_bounds__(kNormWarps * 32)
    layer_norm_kernel(const float* __restrict__ tokens, const float* __restrict__ pos,
                      const float* __restrict__ weight, const float* __restrict__ bias, float* __restrict__ u,
                      long long rows, int length, int dim, float eps) {
  constexpr int kPerLane = DP / 32;
  const int lane = threadIdx.x & 31;
  const long long row = static_cast<long long>(blockIdx.x) * kNormWarps + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps leave together; no block-level barrier below
  const long long l = row % length;
  float values[kPerLane];
  float sum = 0.f;
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    const int d = lane + 32 * r;
    values[r] = d < dim ? tokens[row * dim + d] + pos[l * dim + d] : 0.f;
    sum += values[r];
  }
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  const float mean = sum / dim;
  float squares = 0.f;
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    const int d = lane + 32 * r;
    const float centred = d < dim ? values[r] - mean : 0.f;
    squares += centred * centred;
  }
  for (int offset = 16; offset > 0; offset >>= 1) squares += __shfl_xor_sync(0xffffffffu, squares, offset);
  const float rstd = 1.0f / sqrtf(squares / dim + eps);
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    const int d = lane + 32 * r;
    u[row * DP + d] = d < dim ? (values[r] - mean) * rstd * weight[d] + bias[d] : 0.f;
  }
}

template <int DP>
__global__ void __launch_bounds__(kQueries)
    joint_token_attention_kernel(const float* __restrict__ u, const float* __restrict__ tokens,
                           const float* __restrict__ pos, const float* __restrict__ lin_weight,
                           const float* __restrict__ lin_bias, float* __restrict__ out, int length, int dim,
                           float scale) {
  __shared__ float keys[kKeyTile][DP];
  const long long b = blockIdx.y;
  const int query = blockIdx.x * kQueries + threadIdx.x;
  const bool active = query < length;
  const float* ub = u + b * length * DP;

  float q[DP];
  float acc[DP];
#pragma unroll
  for (int d = 0; d < DP; ++d) {
    q[d] = active ? ub[static_cast<long long>(query) * DP + d] : 0.f;
    acc[d] = 0.f;
  }
  float running_max = -INFINITY, running_sum = 0.f;

  for (int k0 = 0; k0 < length; k0 += kKeyTile) {
    const int count = min(kKeyTile, length - k0);
    __syncthreads();  // the previous tile's readers are done
    for (int i = threadIdx.x; i < kKeyTile * DP; i += kQueries) {
      const int kk = i / DP, d = i - kk * DP;
      keys[kk][d] = kk < count ? ub[static_cast<long long>(k0 + kk) * DP + d] : 0.f;
    }
    __syncthreads();
    for (int kk = 0; kk < count; ++kk) {
      float score = 0.f;
#pragma unroll
      for (int d = 0; d < DP; ++d) score = fmaf(q[d], keys[kk][d], score);  // padded lanes are 0
      score *= scale;
      const float new_max = fmaxf(running_max, score);
      const float rescale = expf(running_max - new_max);  // 0 on the first key (exp(-inf))
      const float p = expf(score - new_max);
      running_sum = running_sum * rescale + p;
#pragma unroll
      for (int d = 0; d < DP; ++d) acc[d] = fmaf(p, keys[kk][d], acc[d] * rescale);
      running_max = new_max;
    }
  }
  if (!active) return;

  const float inv_sum = 1.0f / running_sum;
#pragma unroll
  for (int d = 0; d < DP; ++d) acc[d] *= inv_sum;
  const long long row = b * length + query;
  for (int e = 0; e < dim; ++e) {  // Linear(D, D) + bias + residual z = tokens + pos
    const float* w_row = lin_weight + static_cast<long long>(e) * dim;
    float value = lin_bias[e];
#pragma unroll
    for (int d = 0; d < DP; ++d) {
      if (d < dim) value = fmaf(__ldg(w_row + d), acc[d], value);
    }
    out[row * dim + e] = tokens[row * dim + e] + pos[static_cast<long long>(query) * dim + e] + value;
  }
}

template <int DP>
cudaError_t launch(const float* tokens, const float* pos, const float* ln_weight, const float* ln_bias,
                   const float* lin_weight, const float* lin_bias, float* u, float* out, int batch, int length,
                   int dim, float eps, cudaStream_t stream) {
  const long long rows = static_cast<long long>(batch) * length;
  const long long norm_blocks = (rows + kNormWarps - 1) / kNormWarps;
  layer_norm_kernel<DP><<<static_cast<unsigned>(norm_blocks), kNormWarps * 32, 0, stream>>>(
      tokens, pos, ln_weight, ln_bias, u, rows, length, dim, eps);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const dim3 grid((length + kQueries - 1) / kQueries, batch);
  joint_token_attention_kernel<DP><<<grid, kQueries, 0, stream>>>(u, tokens, pos, lin_weight, lin_bias, out, length,
                                                                  dim, 1.0f / sqrtf(static_cast<float>(dim)));
  return cudaGetLastError();
}

}  // namespace

int joint_token_attention_padded_dim(int dim) {
  if (dim <= 0) return 0;
  if (dim <= 64) return 64;
  return 0;
}

cudaError_t launch_joint_token_attention_forward(const float* tokens, const float* pos, const float* ln_weight,
                                                 const float* ln_bias, const float* lin_weight,
                                                 const float* lin_bias, float* u_workspace, float* out, int batch,
                                                 int length, int dim, float eps, cudaStream_t stream) {
  if (joint_token_attention_padded_dim(dim) != 64) return cudaErrorInvalidValue;
  return launch<64>(tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, u_workspace, out, batch, length, dim, eps,
                    stream);
}

}  // namespace avfused::cuda
