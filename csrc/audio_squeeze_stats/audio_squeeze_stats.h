// audio_squeeze_stats: the batch statistics of the SAAVM's audio squeeze convolution, which training needs
// for its batch norm (avfused/reference.py's audio_squeeze_stats; the Python side is
// avfused/ops/audio_squeeze_stats.py).
//
// Ops (schemas in audio_squeeze_stats_cpu.cpp):
//   audio_squeeze_stats(audio (B,C,L), weight (C,C,K), bias (C,)) -> (mean (C,), var (C,))
//   z = conv1d(audio, weight) + bias ('same' zero padding, K odd);  over the M = B L positions of each
//   channel: mean = sum z / M,  var = sum (z - mean)^2 / M (biased)
//   audio_squeeze_stats_backward(grad_mean (C,), grad_var (C,), audio, weight, bias, mean (C,))
//     -> (grad_audio, grad_weight, grad_bias)
//   grad_z = grad_mean / M + 2 grad_var (z - mean) / M, then back through the convolution.
// CPU (audio_squeeze_stats_cpu.cpp) and CUDA (audio_squeeze_stats_cuda.cu, _cuda_host.cpp) halves. Both compute
// z tile by tile (its moments merged in double with Moments::merge, in a fixed order) and recompute it so in
// the backward, never storing it beyond one tile. The CUDA kernels read float32, float16 or bfloat16 audio
// (grad_audio in that type) and compute in float32; weights, statistics and weight gradients are float32.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define AVFUSED_STATS_HOST_DEVICE __host__ __device__
#else
#define AVFUSED_STATS_HOST_DEVICE
#endif

namespace avfused::audio_squeeze_stats {

constexpr int64_t kTile = 512;  // positions per CPU work unit

// Mean and sum of squared deviations of `count` values, in double.
struct Moments {
  double count = 0.0, mean = 0.0, m2 = 0.0;

  // Chan et al.'s pairwise update: this and another set of values together (an empty other changes nothing).
  AVFUSED_STATS_HOST_DEVICE void merge(const Moments& other) {
    if (other.count == 0.0) return;
    const double total = count + other.count, delta = other.mean - mean;
    mean += delta * other.count / total;
    m2 += other.m2 + delta * delta * count * other.count / total;
    count = total;
  }
};

// The moments of `count` floats (two passes over values in cache).
inline Moments row_moments(const float* values, int64_t count) {
  double sum = 0.0;
  for (int64_t i = 0; i < count; ++i) sum += values[i];
  const double mean = sum / static_cast<double>(count);
  double m2 = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    const double deviation = values[i] - mean;
    m2 += deviation * deviation;
  }
  return {static_cast<double>(count), mean, m2};
}

}  // namespace avfused::audio_squeeze_stats

#ifdef CUDART_VERSION  // the CUDA launchers (audio_squeeze_stats_cuda.cu): plain pointers and a stream
#include "../common/cuda_dense_conv1d.h"

namespace avfused::cuda {

// The forward's workspace (doubles: two per channel and tile of the clips) at these sizes.
LaunchNeeds audio_squeeze_stats_forward_needs(long long clips, int channels, int length);

// mean, var (C,) float32; audio (B, C, L) in `type`, weight (C, C, K) and bias float32.
cudaError_t launch_audio_squeeze_stats_forward(ActivationType type, const void* audio, const float* weight,
                                               const float* bias, double* workspace, float* mean, float* var,
                                               long long clips, int channels, int length, int kernel,
                                               cudaStream_t stream);

// The backward's workspace (floats: the weight-sum blocks' partials) and shared memory per block at these sizes
// on this device (shared_bytes past limits.shared_bytes_per_block: the launch cannot run).
LaunchNeeds audio_squeeze_stats_backward_needs(long long clips, int channels, int length, int kernel,
                                               DeviceLimits limits);

// grad_audio (B, C, L) in `type`, grad_weight (C, C, K) and grad_bias (C,) float32 are written (no zeroing).
cudaError_t launch_audio_squeeze_stats_backward(ActivationType type, const float* grad_mean, const float* grad_var,
                                                const void* audio, const float* weight, const float* bias,
                                                const float* mean, void* grad_audio, float* grad_weight,
                                                float* grad_bias, float* workspace, long long clips, int channels,
                                                int length, int kernel, DeviceLimits limits, cudaStream_t stream);

}  // namespace avfused::cuda
#endif
