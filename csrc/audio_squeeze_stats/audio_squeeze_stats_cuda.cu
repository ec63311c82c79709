// audio_squeeze_stats on CUDA (launchers declared in audio_squeeze_stats.h; no torch headers). No atomics: the
// results are the same from run to run.
// Forward: one block per (clip, tile of 128 positions, 8 output channels), a thread per position computes z of
// its 8 channels straight from the audio (csrc/common/cuda_dense_conv1d.h); the block's moments per channel
// come from its mean and the deviations from it (float32 over 128 values, the mean corrected in double);
// then one block per channel merges the tiles' moments in double in a fixed order (Chan's update, Moments).
// Backward: (1) one block per (clip, tile) recomputes z of every channel over the tile and K / 2 either side,
// turns it into grad_z in shared memory and writes the tile's audio gradient; (2) one block per (8 output
// channels, split of the tiles) recomputes their z, forms grad_z and sums grad_z (x) audio per tap in shared
// memory, one partial per split; (3) the splits' partials are added in a fixed order. z never reaches memory.
#include <cuda_runtime.h>

#include "audio_squeeze_stats.h"

namespace avfused::cuda {
namespace {

using audio_squeeze_stats::Moments;
using dense_conv1d::kChunk;

constexpr int kTile = 128;            // positions per block of the forward and the weight sums: a thread each
constexpr int kGroup = 8;             // output channels per thread there
constexpr int kThreads = 256;         // threads of the input-gradient pass
constexpr int kCombineThreads = 256;  // threads merging one channel's moments

// Each of v's G values summed over the block (every thread gets the totals); scratch holds G x kTile / 32.
template <int G>
__device__ __forceinline__ void block_sums(float (&v)[G], float (*scratch)[kTile / 32]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int g = 0; g < G; ++g) v[g] = warp_sum(v[g]);
  __syncthreads();  // scratch may still be read from the last call
  if (lane == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) scratch[g][warp] = v[g];
  }
  __syncthreads();
#pragma unroll
  for (int g = 0; g < G; ++g) {
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kTile / 32; ++w) total += scratch[g][w];
    v[g] = total;
  }
}

// workspace[2 (c units + unit) + {0, 1}]: the mean and sum of squared deviations of z_c over the unit's positions
// (unit = clip tiles + tile).
template <class T>
__global__ void __launch_bounds__(kTile) stats_tiles_kernel(const T* __restrict__ audio, const float* __restrict__ weight,
                                                            const float* __restrict__ bias, double* __restrict__ moments,
                                                            int channels, int length, int kernel, int tiles, int groups,
                                                            int units) {
  __shared__ float scratch[kGroup][kTile / 32];
  const int block = blockIdx.x, unit = block / groups;
  const long long clip = unit / tiles;
  const int first = (block % groups) * kGroup, l0 = (unit % tiles) * kTile;
  const int count = min(kTile, length - l0);
  const bool valid = static_cast<int>(threadIdx.x) < count;
  float z[kGroup];
  dense_conv1d::conv_channels<kGroup>(audio + clip * channels * length, weight, bias, channels, length, kernel, first,
                                      l0 + static_cast<int>(threadIdx.x), z);
  float shift[kGroup], offset[kGroup], squares[kGroup];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) shift[g] = valid ? z[g] : 0.f;
  block_sums(shift, scratch);
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    shift[g] /= count;
    offset[g] = valid ? z[g] - shift[g] : 0.f;
    squares[g] = offset[g] * offset[g];
  }
  block_sums(offset, scratch);
  block_sums(squares, scratch);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      if (first + g >= channels) continue;
      // the shift is the tile mean rounded: the deviations' own sum corrects it
      double* out = moments + 2 * (static_cast<long long>(first + g) * units + unit);
      out[0] = shift[g] + static_cast<double>(offset[g]) / count;
      out[1] = static_cast<double>(squares[g]) - static_cast<double>(offset[g]) * offset[g] / count;
    }
  }
}

// One block per channel: the units' moments merged, each thread over a strided share in order, then pairwise.
__global__ void __launch_bounds__(kCombineThreads) stats_combine_kernel(const double* __restrict__ moments,
                                                                        float* __restrict__ mean,
                                                                        float* __restrict__ var, int units, int tiles,
                                                                        int length) {
  __shared__ double counts[kCombineThreads], means[kCombineThreads], m2s[kCombineThreads];
  const int c = blockIdx.x, i = threadIdx.x;
  const double* mine = moments + 2LL * c * units;
  Moments total;
  for (int unit = i; unit < units; unit += kCombineThreads) {
    const int count = min(kTile, length - (unit % tiles) * kTile);
    total.merge({static_cast<double>(count), mine[2LL * unit], mine[2LL * unit + 1]});
  }
  counts[i] = total.count;
  means[i] = total.mean;
  m2s[i] = total.m2;
  __syncthreads();
  for (int half = kCombineThreads / 2; half > 0; half >>= 1) {
    if (i < half) {
      Moments merged{counts[i], means[i], m2s[i]};
      merged.merge({counts[i + half], means[i + half], m2s[i + half]});
      counts[i] = merged.count;
      means[i] = merged.mean;
      m2s[i] = merged.m2;
    }
    __syncthreads();
  }
  if (i == 0) {
    mean[c] = static_cast<float>(means[0]);
    var[c] = static_cast<float>(fmax(m2s[0], 0.0) / counts[0]);
  }
}

// grad_z of channel c at a position inside the signal, from its z.
__device__ __forceinline__ float stats_grad(const float* grad_mean, const float* grad_var, const float* mean, int c,
                                            float z, float inv_count) {
  const float base = __ldg(grad_mean + c) * inv_count, slope = 2.f * __ldg(grad_var + c) * inv_count;
  return base + slope * (z - __ldg(mean + c));
}

// One block per (clip, tile): grad_z of every channel at positions l0 - K / 2 + q into shared memory, then the
// tile's audio gradient (the transposed convolution).
template <class T>
__global__ void __launch_bounds__(kThreads, 1) stats_grad_audio_kernel(
    const float* __restrict__ grad_mean, const float* __restrict__ grad_var, const T* __restrict__ audio,
    const float* __restrict__ weight, const float* __restrict__ bias, const float* __restrict__ mean,
    T* __restrict__ grad_audio, int channels, int length, int kernel, int tile, int tiles, float inv_count) {
  extern __shared__ float grad_z[];  // (C, tile + 2 (K / 2))
  constexpr int G = 4;
  const int unit = blockIdx.x, l0 = (unit % tiles) * tile, half = kernel / 2, stride = tile + 2 * half;
  const long long clip = unit / tiles;
  const long long offset = clip * channels * length;
  const int groups = (channels + G - 1) / G;
  for (int item = threadIdx.x; item < groups * stride; item += kThreads) {
    const int q = item % stride, first = (item / stride) * G, position = l0 - half + q;
    float z[G];
    dense_conv1d::conv_channels<G>(audio + offset, weight, bias, channels, length, kernel, first, position, z);
    const bool inside = position >= 0 && position < length;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int c = first + g;
      if (c < channels) grad_z[c * stride + q] = inside ? stats_grad(grad_mean, grad_var, mean, c, z[g], inv_count) : 0.f;
    }
  }
  __syncthreads();
  dense_conv1d::transposed_tile<G>(grad_z, stride, weight, channels, kernel, length, l0, tile, grad_audio + offset);
}

// One block per (8 output channels, split): over the units split, split + splits, ... (clip, tile of kTile) the
// sums grad_z (x) audio per tap and of grad_z, in shared memory, then written to the split's partials
// (C C K weight slots, then C bias slots).
template <class T>
__global__ void __launch_bounds__(kTile) stats_weight_kernel(
    const float* __restrict__ grad_mean, const float* __restrict__ grad_var, const T* __restrict__ audio,
    const float* __restrict__ weight, const float* __restrict__ bias, const float* __restrict__ mean,
    float* __restrict__ partials, int channels, int length, int kernel, int tiles, int units, int groups, int splits,
    int window_stride, float inv_count) {
  extern __shared__ float shared[];
  float* grad_z = shared;                        // (kGroup, kTile)
  float* window = grad_z + kGroup * kTile;       // (kChunk, window_stride)
  float* sums = window + kChunk * window_stride;  // (kGroup, C, K) weight sums, then kGroup bias sums
  const int group = static_cast<int>(blockIdx.x) % groups, split = static_cast<int>(blockIdx.x) / groups;
  const int first = group * kGroup, taps = channels * kernel, bias_at = kGroup * taps, i = threadIdx.x;
  for (int s = i; s < bias_at + kGroup; s += kTile) sums[s] = 0.f;
  for (int unit = split; unit < units; unit += splits) {
    const int l0 = (unit % tiles) * kTile, position = l0 + i;
    const T* clip_audio = audio + static_cast<long long>(unit / tiles) * channels * length;
    float z[kGroup];
    dense_conv1d::conv_channels<kGroup>(clip_audio, weight, bias, channels, length, kernel, first, position, z);
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const int c = min(first + g, channels - 1);
      grad_z[g * kTile + i] = position < length ? stats_grad(grad_mean, grad_var, mean, c, z[g], inv_count) : 0.f;
    }
    __syncthreads();
    if (i < kGroup) {
      float total = 0.f;
      for (int p = 0; p < kTile; ++p) total += grad_z[i * kTile + p];
      sums[bias_at + i] += total;
    }
    dense_conv1d::add_weight_sums<kGroup>(grad_z, kTile, window, window_stride, clip_audio, channels, length, kernel,
                                          l0, sums);
    __syncthreads();  // grad_z and window are rewritten for the next unit
  }
  __syncthreads();
  float* out = partials + static_cast<long long>(split) * (static_cast<long long>(taps) * channels + channels);
  for (int s = i; s < bias_at; s += kTile) {
    const int g = s / taps;
    if (first + g < channels) out[static_cast<long long>(first + g) * taps + s % taps] = sums[s];
  }
  if (i < kGroup && first + i < channels) out[static_cast<long long>(taps) * channels + first + i] = sums[bias_at + i];
}

struct BackwardPlan {
  int tile, tiles;            // the input-gradient pass
  int groups, splits, units;  // the weight sums, over units (clip, tile of kTile)
  int window_stride;
  size_t audio_bytes, weight_bytes;
  long long slots;  // C C K + C
};

BackwardPlan backward_plan(long long clips, int channels, int length, int kernel, DeviceLimits limits) {
  const int half = kernel / 2;
  const auto audio_bytes = [&](int tile) { return sizeof(float) * channels * static_cast<size_t>(tile + 2 * half); };
  BackwardPlan plan{};
  plan.tile = dense_conv1d::choose_tile(clips, length, limits.multiprocessors, limits.shared_bytes_per_block,
                                        audio_bytes);
  const int tile = plan.tile > 0 ? plan.tile : 16;  // none fits: what the smallest would need
  plan.audio_bytes = audio_bytes(tile);
  plan.tiles = (length + tile - 1) / tile;
  const long long units = clips * ((length + kTile - 1) / kTile);
  plan.units = units > 0x7fffffffLL ? 0 : static_cast<int>(units);  // 0: too many for the kernels' int indices
  plan.groups = (channels + kGroup - 1) / kGroup;
  plan.splits = dense_conv1d::weight_splits(units, plan.groups, limits);
  plan.window_stride = dense_conv1d::window_stride(kTile + 2 * half, kernel);
  plan.weight_bytes = sizeof(float) * (static_cast<size_t>(kGroup) * kTile + static_cast<size_t>(kChunk) * plan.window_stride +
                                       static_cast<size_t>(kGroup) * channels * kernel + kGroup);
  plan.slots = static_cast<long long>(channels) * channels * kernel + channels;
  return plan;
}

}  // namespace

LaunchNeeds audio_squeeze_stats_forward_needs(long long clips, int channels, int length) {
  return {2LL * channels * clips * ((length + kTile - 1) / kTile), 0};
}

cudaError_t launch_audio_squeeze_stats_forward(ActivationType type, const void* audio, const float* weight,
                                               const float* bias, double* workspace, float* mean, float* var,
                                               long long clips, int channels, int length, int kernel,
                                               cudaStream_t stream) {
  const int tiles = (length + kTile - 1) / kTile, groups = (channels + kGroup - 1) / kGroup;
  const long long units = clips * tiles, blocks = units * groups;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;  // the kernels index units and blocks with int
  return dispatch_activation(type, [&](auto zero) {
    using T = decltype(zero);
    stats_tiles_kernel<T><<<static_cast<unsigned>(blocks), kTile, 0, stream>>>(
        static_cast<const T*>(audio), weight, bias, workspace, channels, length, kernel, tiles, groups,
        static_cast<int>(units));
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    stats_combine_kernel<<<channels, kCombineThreads, 0, stream>>>(workspace, mean, var, static_cast<int>(units),
                                                                    tiles, length);
    return cudaGetLastError();
  });
}

LaunchNeeds audio_squeeze_stats_backward_needs(long long clips, int channels, int length, int kernel,
                                               DeviceLimits limits) {
  const BackwardPlan plan = backward_plan(clips, channels, length, kernel, limits);
  return {plan.splits * plan.slots, plan.audio_bytes > plan.weight_bytes ? plan.audio_bytes : plan.weight_bytes};
}

cudaError_t launch_audio_squeeze_stats_backward(ActivationType type, const float* grad_mean, const float* grad_var,
                                                const void* audio, const float* weight, const float* bias,
                                                const float* mean, void* grad_audio, float* grad_weight,
                                                float* grad_bias, float* workspace, long long clips, int channels,
                                                int length, int kernel, DeviceLimits limits, cudaStream_t stream) {
  const BackwardPlan plan = backward_plan(clips, channels, length, kernel, limits);
  const long long audio_blocks = clips * plan.tiles, weight_blocks = static_cast<long long>(plan.groups) * plan.splits;
  if (plan.tile == 0 || plan.units == 0 || plan.weight_bytes > limits.shared_bytes_per_block ||
      audio_blocks > 0x7fffffffLL) {
    return cudaErrorInvalidValue;
  }
  const float inv_count = static_cast<float>(1.0 / (static_cast<double>(clips) * length));
  const int tiles_w = (length + kTile - 1) / kTile;
  return dispatch_activation(type, [&](auto zero) {
    using T = decltype(zero);
    cudaError_t err = allow_shared_bytes(stats_grad_audio_kernel<T>, plan.audio_bytes);
    if (err == cudaSuccess) err = allow_shared_bytes(stats_weight_kernel<T>, plan.weight_bytes);
    if (err != cudaSuccess) return err;
    stats_grad_audio_kernel<T><<<static_cast<unsigned>(audio_blocks), kThreads, plan.audio_bytes, stream>>>(
        grad_mean, grad_var, static_cast<const T*>(audio), weight, bias, mean, static_cast<T*>(grad_audio), channels,
        length, kernel, plan.tile, plan.tiles, inv_count);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    stats_weight_kernel<T><<<static_cast<unsigned>(weight_blocks), kTile, plan.weight_bytes, stream>>>(
        grad_mean, grad_var, static_cast<const T*>(audio), weight, bias, mean, workspace, channels, length, kernel,
        tiles_w, plan.units, plan.groups, plan.splits, plan.window_stride, inv_count);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    const long long weights = static_cast<long long>(channels) * channels * kernel;
    const dense_conv1d::Sections sections{{grad_weight, grad_bias, nullptr, nullptr}, {weights, plan.slots, 0, 0}};
    return dense_conv1d::launch_reduce_partials(workspace, plan.splits, plan.slots, sections, stream);
  });
}

}  // namespace avfused::cuda
