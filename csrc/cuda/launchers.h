// Host launchers of the avfused CUDA kernels. Plain pointers and a stream only, so the .cu files
// need no torch headers (fast nvcc builds); registration_cuda.cpp does the tensor handling.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace avfused::cuda {

constexpr int kFrontendOutTile = 63;  // stem outputs per block: 4 * 63 + 3 = 255 band positions, one per thread

// acc (B, C, O): stem of the log band energies; tile_sums (B, tiles, F): per-tile sums of the energies.
cudaError_t launch_frontend_stem_forward(const float* x, const float* filters, const float* weight, float* acc,
                                         float* tile_sums, int batch, int samples, int filter_count, int taps,
                                         int channels, int outputs, int tiles, float log_eps, cudaStream_t stream);

// In place over (rows, samples): grad <- (grad - grad_mean[row]) * sign(y) / (|y| + eps),
// y <- log(|y| + eps) - band_mean[row].
cudaError_t launch_frontend_elementwise_backward(float* y, float* grad, const float* grad_mean,
                                                 const float* band_mean, int64_t total, int64_t samples,
                                                 float log_eps, cudaStream_t stream);

// The padded token width the attention kernel uses for `dim` values (0: dim not supported).
int token_attention_padded_dim(int dim);

// u_workspace (B, L, padded_dim) is written (the normalised tokens); out (B, L, D).
cudaError_t launch_token_attention_forward(const float* tokens, const float* pos, const float* ln_weight,
                                           const float* ln_bias, const float* lin_weight, const float* lin_bias,
                                           float* u_workspace, float* out, int batch, int length, int dim, float eps,
                                           cudaStream_t stream);

}  // namespace avfused::cuda
