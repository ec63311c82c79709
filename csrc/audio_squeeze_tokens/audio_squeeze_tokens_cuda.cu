// audio_squeeze_tokens on CUDA (launchers declared in audio_squeeze_tokens.h; no torch headers). No atomics: the
// results are the same from run to run, and the (B, C, L) hidden layer never reaches memory.
// Forward: one block per (clip, tile of 128 positions, slice of channels) computes the ReLU'd hidden layer of
// 8 channels at a time over the tile and K2 / 2 either side into shared memory (straight from the audio,
// csrc/common/cuda_dense_conv1d.h), and from it, a thread per position, the slice's share of the one-channel
// signal; one thread per token value then adds the slices and averages its pooling window. A clip's tiles
// are cut into channel slices only where the clips alone give too few blocks.
// Backward: the signal's gradient (the pooling's transpose) is gathered where it is needed. (1) One block per
// (clip, tile) recomputes z of every channel over the tile and K1 / 2 either side, forms grad_z = [z > 0]
// to_one^T(grad_signal) in shared memory and writes the tile's audio gradient; (2) one block per (8 hidden
// channels, split of the tiles) recomputes their z and sums the weight, bias and to_one gradient terms in
// shared memory, one partial per split; (3) the splits' partials are added in a fixed order.
#include <cuda_runtime.h>

#include "audio_squeeze_tokens.h"

namespace avfused::cuda {
namespace {

using dense_conv1d::kChunk;

constexpr int kTile = 128;       // positions per block of the forward and the weight sums: a thread each
constexpr int kGroup = 8;        // hidden channels per thread there
constexpr int kThreads = 256;    // threads of the input-gradient pass
constexpr int kPoolThreads = 256;

// The first and one-past-last signal positions that token value j of `outputs` averages (as
// adaptive_avg_pool1d): [floor(j L / M), ceil((j + 1) L / M)).
__device__ __forceinline__ int window_first(int j, int length, int outputs) {
  return static_cast<int>(static_cast<long long>(j) * length / outputs);
}
__device__ __forceinline__ int window_last(int j, int length, int outputs) {
  return static_cast<int>((static_cast<long long>(j + 1) * length + outputs - 1) / outputs);
}

// The signal's gradient at `position` (zero outside [0, L)) from one clip's token gradients: the sum, in token
// order, of grad[j] / (the width of window j) over the windows that hold the position (those with
// floor(p M / L) <= j <= floor(((p + 1) M - 1) / L); checked one by one).
template <class T>
__device__ __forceinline__ float signal_gradient(const T* __restrict__ grad, int length, int outputs, int position) {
  if (position < 0 || position >= length) return 0.f;
  const int lowest = static_cast<int>(static_cast<long long>(position) * outputs / length);
  const int highest = static_cast<int>(min((static_cast<long long>(position + 1) * outputs - 1) / length,
                                           static_cast<long long>(outputs - 1)));
  float sum = 0.f;
  for (int j = lowest; j <= highest; ++j) {
    const int first = window_first(j, length, outputs), last = window_last(j, length, outputs);
    if (first <= position && position < last) sum += load_float(grad + j) / static_cast<float>(last - first);
  }
  return sum;
}

// One block per (unit = clip tiles + tile, slice of `span` channels): partial_signals[slice][clip][l] = the
// slice's share of the signal before its bias, sum_{c in slice, k} to_one[c][k] hidden[c][l + k - K2 / 2].
template <class T>
__global__ void __launch_bounds__(kTile) signal_kernel(const T* __restrict__ audio, const float* __restrict__ weight,
                                                       const float* __restrict__ bias, const float* __restrict__ to_one,
                                                       float* __restrict__ partial_signals, int channels, int length,
                                                       int k1, int k2, int tiles, int slices, int span, int clips) {
  extern __shared__ float hidden[];  // (kGroup, kTile + K2 - 1): ReLU'd, at positions l0 - K2 / 2 + q, zero outside
  const int slice = static_cast<int>(blockIdx.x) % slices, unit = static_cast<int>(blockIdx.x) / slices;
  const int clip = unit / tiles, l0 = (unit % tiles) * kTile, width = kTile + k2 - 1, i = threadIdx.x;
  const int begin = slice * span, end = min(channels, begin + span);
  const T* clip_audio = audio + static_cast<long long>(clip) * channels * length;
  float signal = 0.f;
  for (int first = begin; first < end; first += kGroup) {
    for (int q = i; q < width; q += kTile) {
      const int position = l0 - k2 / 2 + q;
      float z[kGroup];
      dense_conv1d::conv_channels<kGroup>(clip_audio, weight, bias, channels, length, k1, first, position, z);
      const bool inside = position >= 0 && position < length;
#pragma unroll
      for (int g = 0; g < kGroup; ++g) hidden[g * width + q] = inside && first + g < end ? fmaxf(z[g], 0.f) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      if (first + g >= end) break;
      const float* taps = to_one + (first + g) * k2;
      const float* row = hidden + g * width + i;
      for (int k = 0; k < k2; ++k) signal += __ldg(taps + k) * row[k];
    }
    __syncthreads();  // hidden is rewritten for the next channels
  }
  if (l0 + i < length) partial_signals[(static_cast<long long>(slice) * clips + clip) * length + l0 + i] = signal;
}

// One thread per token value: the slices' signals plus the bias, averaged over the value's window.
template <class T>
__global__ void __launch_bounds__(kPoolThreads) pool_kernel(const float* __restrict__ partial_signals,
                                                            const float* __restrict__ to_one_bias, T* __restrict__ tokens,
                                                            int clips, int length, int outputs, int slices) {
  const long long index = static_cast<long long>(blockIdx.x) * kPoolThreads + threadIdx.x;
  if (index >= static_cast<long long>(clips) * outputs) return;
  const int clip = static_cast<int>(index / outputs), j = static_cast<int>(index % outputs);
  const int first = window_first(j, length, outputs), last = window_last(j, length, outputs);
  const float b = __ldg(to_one_bias);
  const long long slice_stride = static_cast<long long>(clips) * length;
  const float* signals = partial_signals + static_cast<long long>(clip) * length;
  float sum = 0.f;
  for (int l = first; l < last; ++l) {
    float value = b;
    for (int s = 0; s < slices; ++s) value += signals[s * slice_stride + l];
    sum += value;
  }
  tokens[index] = from_float<T>(sum / static_cast<float>(last - first));
}

// grad_hidden of channel c at the signal positions around a hidden position: sum_k to_one[c][k]
// grad_signal[r - k + K2 / 2], `around` pointing at grad_signal[r + K2 / 2].
__device__ __forceinline__ float hidden_gradient(const float* __restrict__ to_one, int c, int k2, const float* around) {
  const float* taps = to_one + c * k2;
  float sum = 0.f;
  for (int k = 0; k < k2; ++k) sum += __ldg(taps + k) * around[-k];
  return sum;
}

// One block per (clip, tile): the signal gradient at positions l0 - K1 / 2 - K2 / 2 + i, then grad_z of every
// channel at positions l0 - K1 / 2 + q into shared memory, then the tile's audio gradient.
template <class T>
__global__ void __launch_bounds__(kThreads, 1) tokens_grad_audio_kernel(
    const T* __restrict__ grad, const T* __restrict__ audio, const float* __restrict__ weight,
    const float* __restrict__ bias, const float* __restrict__ to_one, T* __restrict__ grad_audio, int channels,
    int length, int k1, int k2, int outputs, int tile, int tiles) {
  extern __shared__ float shared[];
  constexpr int G = 4;
  const int unit = blockIdx.x, l0 = (unit % tiles) * tile, half1 = k1 / 2, half2 = k2 / 2;
  const int stride = tile + 2 * half1, reach = stride + 2 * half2;
  float* grad_z = shared;                            // (C, stride)
  float* grad_signal = grad_z + channels * stride;   // (reach)
  const long long clip = unit / tiles, offset = clip * channels * length;
  for (int i = threadIdx.x; i < reach; i += kThreads) {
    grad_signal[i] = signal_gradient(grad + clip * outputs, length, outputs, l0 - half1 - half2 + i);
  }
  __syncthreads();
  const int groups = (channels + G - 1) / G;
  for (int item = threadIdx.x; item < groups * stride; item += kThreads) {
    const int q = item % stride, first = (item / stride) * G, position = l0 - half1 + q;
    float z[G];
    dense_conv1d::conv_channels<G>(audio + offset, weight, bias, channels, length, k1, first, position, z);
    const bool inside = position >= 0 && position < length;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int c = first + g;
      if (c >= channels) break;
      grad_z[c * stride + q] = inside && z[g] > 0.f ? hidden_gradient(to_one, c, k2, grad_signal + q + 2 * half2) : 0.f;
    }
  }
  __syncthreads();
  dense_conv1d::transposed_tile<G>(grad_z, stride, weight, channels, k1, length, l0, tile, grad_audio + offset);
}

// Slots of one split's partials: the weight (C, C, K1), bias (C), to_one (C, K2) and to_one_bias (1) sums.
struct Slots {
  int channels, k1, k2;
  __host__ __device__ long long weight() const { return static_cast<long long>(channels) * channels * k1; }
  __host__ __device__ long long bias() const { return weight(); }
  __host__ __device__ long long to_one() const { return bias() + channels; }
  __host__ __device__ long long to_one_bias() const { return to_one() + static_cast<long long>(channels) * k2; }
  __host__ __device__ long long total() const { return to_one_bias() + 1; }
};

// One block per (8 hidden channels, split): over the units split, split + splits, ... (clip, tile of kTile) the
// sums grad_z (x) audio per tap, of grad_z, hidden (x) grad_signal per to_one tap and (the first group's
// blocks) of grad_signal, in shared memory, then written to the split's partials.
template <class T>
__global__ void __launch_bounds__(kTile, 1) tokens_weight_kernel(
    const T* __restrict__ grad, const T* __restrict__ audio, const float* __restrict__ weight,
    const float* __restrict__ bias, const float* __restrict__ to_one, float* __restrict__ partials, int channels,
    int length, int k1, int k2, int outputs, int tiles, int units, int groups, int splits, int window_stride) {
  extern __shared__ float shared[];
  const int half2 = k2 / 2, taps = channels * k1, i = threadIdx.x;
  float* grad_z = shared;                             // (kGroup, kTile)
  float* hidden = grad_z + kGroup * kTile;            // (kGroup, kTile)
  float* grad_signal = hidden + kGroup * kTile;       // (kTile + K2 - 1): at positions l0 - K2 / 2 + j
  float* window = grad_signal + kTile + k2 - 1;       // (kChunk, window_stride)
  float* sums = window + kChunk * window_stride;      // weight (kGroup, C, K1), bias (kGroup), to_one (kGroup, K2), 1
  const int bias_at = kGroup * taps, to_one_at = bias_at + kGroup, to_one_bias_at = to_one_at + kGroup * k2;
  const int group = static_cast<int>(blockIdx.x) % groups, split = static_cast<int>(blockIdx.x) / groups;
  const int first = group * kGroup;
  for (int s = i; s <= to_one_bias_at; s += kTile) sums[s] = 0.f;
  for (int unit = split; unit < units; unit += splits) {
    const int clip = unit / tiles, l0 = (unit % tiles) * kTile, position = l0 + i;
    const T* clip_audio = audio + static_cast<long long>(clip) * channels * length;
    for (int j = i; j < kTile + k2 - 1; j += kTile) {
      grad_signal[j] = signal_gradient(grad + static_cast<long long>(clip) * outputs, length, outputs, l0 - half2 + j);
    }
    __syncthreads();
    float z[kGroup];
    dense_conv1d::conv_channels<kGroup>(clip_audio, weight, bias, channels, length, k1, first, position, z);
    const bool inside = position < length;
#pragma unroll
    for (int g = 0; g < kGroup; ++g) hidden[g * kTile + i] = inside && z[g] > 0.f ? z[g] : 0.f;
#pragma unroll 1
    for (int g = 0; g < kGroup; ++g) {  // the thread's own hidden values back: z is no longer held
      const int c = min(first + g, channels - 1);
      const bool active = hidden[g * kTile + i] > 0.f;
      grad_z[g * kTile + i] = active ? hidden_gradient(to_one, c, k2, grad_signal + i + 2 * half2) : 0.f;
    }
    __syncthreads();
    if (i < kGroup) {
      float total = 0.f;
      for (int p = 0; p < kTile; ++p) total += grad_z[i * kTile + p];
      sums[bias_at + i] += total;
    } else if (i == kGroup && group == 0) {
      float total = 0.f;
      for (int p = 0; p < kTile; ++p) total += grad_signal[p + half2];
      sums[to_one_bias_at] += total;
    }
    // to_one tap (g, k): sum_p hidden[g][p] grad_signal at l0 + p - k + K2 / 2
    for (int t = i; t < kGroup * k2; t += kTile) {
      const float* h = hidden + (t / k2) * kTile;
      const float* gs = grad_signal + 2 * half2 - t % k2;
      float total = 0.f;
      for (int p = 0; p < kTile; ++p) total += h[p] * gs[p];
      sums[to_one_at + t] += total;
    }
    dense_conv1d::add_weight_sums<kGroup>(grad_z, kTile, window, window_stride, clip_audio, channels, length, k1, l0,
                                          sums);
    __syncthreads();  // grad_signal, grad_z, hidden and window are rewritten for the next unit
  }
  __syncthreads();
  const Slots slots{channels, k1, k2};
  float* out = partials + static_cast<long long>(split) * slots.total();
  for (int s = i; s < bias_at; s += kTile) {
    const int g = s / taps;
    if (first + g < channels) out[static_cast<long long>(first + g) * taps + s % taps] = sums[s];
  }
  if (i < kGroup && first + i < channels) out[slots.bias() + first + i] = sums[bias_at + i];
  for (int t = i; t < kGroup * k2; t += kTile) {
    const int g = t / k2;
    if (first + g < channels) out[slots.to_one() + static_cast<long long>(first + g) * k2 + t % k2] = sums[to_one_at + t];
  }
  if (i == 0 && group == 0) out[slots.to_one_bias()] = sums[to_one_bias_at];
}

struct ForwardPlan {
  int tiles, slices, span;
  long long blocks;
  size_t bytes;
};

// Channel slices only where the clips' tiles alone give fewer blocks than multiprocessors, each at least kGroup.
ForwardPlan forward_plan(long long clips, int channels, int length, int k2, DeviceLimits limits) {
  ForwardPlan plan{};
  plan.tiles = (length + kTile - 1) / kTile;
  const long long units = clips * plan.tiles, groups = (channels + kGroup - 1) / kGroup;
  long long slices = (limits.multiprocessors + units - 1) / units;
  slices = slices < groups ? slices : groups;
  slices = slices > 0 ? slices : 1;
  const long long groups_per_slice = (groups + slices - 1) / slices;
  plan.span = static_cast<int>(groups_per_slice * kGroup);
  plan.slices = static_cast<int>((channels + plan.span - 1) / plan.span);
  plan.blocks = units * plan.slices;
  plan.bytes = sizeof(float) * kGroup * static_cast<size_t>(kTile + k2 - 1);
  return plan;
}

struct BackwardPlan {
  int tile, tiles;            // the input-gradient pass
  int groups, splits, units;  // the weight sums, over units (clip, tile of kTile)
  int window_stride;
  size_t audio_bytes, weight_bytes;
};

BackwardPlan backward_plan(long long clips, int channels, int length, int k1, int k2, DeviceLimits limits) {
  const int half1 = k1 / 2, half2 = k2 / 2;
  const auto audio_bytes = [&](int tile) {
    const size_t stride = tile + 2 * half1;
    return sizeof(float) * (channels * stride + stride + 2 * half2);
  };
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
  plan.window_stride = dense_conv1d::window_stride(kTile + 2 * half1, k1);
  const size_t floats = 2 * static_cast<size_t>(kGroup) * kTile + (kTile + k2 - 1) +
                        static_cast<size_t>(kChunk) * plan.window_stride + static_cast<size_t>(kGroup) * channels * k1 +
                        kGroup + static_cast<size_t>(kGroup) * k2 + 1;
  plan.weight_bytes = sizeof(float) * floats;
  return plan;
}

}  // namespace

LaunchNeeds audio_squeeze_tokens_forward_needs(long long clips, int channels, int length, int k2, DeviceLimits limits) {
  const ForwardPlan plan = forward_plan(clips, channels, length, k2, limits);
  return {plan.slices * clips * length, plan.bytes};
}

cudaError_t launch_audio_squeeze_tokens_forward(ActivationType type, const void* audio, const float* weight,
                                                const float* bias, const float* to_one, const float* to_one_bias,
                                                void* tokens, float* workspace, long long clips, int channels,
                                                int length, int k1, int k2, int outputs, DeviceLimits limits,
                                                cudaStream_t stream) {
  const ForwardPlan plan = forward_plan(clips, channels, length, k2, limits);
  const long long values = clips * outputs, pool_blocks = (values + kPoolThreads - 1) / kPoolThreads;
  // the kernels index clips, blocks and token values with int
  if (plan.blocks > 0x7fffffffLL || values > 0x7fffffffLL || plan.bytes > limits.shared_bytes_per_block) {
    return cudaErrorInvalidValue;
  }
  return dispatch_activation(type, [&](auto zero) {
    using T = decltype(zero);
    cudaError_t err = allow_shared_bytes(signal_kernel<T>, plan.bytes);
    if (err != cudaSuccess) return err;
    signal_kernel<T><<<static_cast<unsigned>(plan.blocks), kTile, plan.bytes, stream>>>(
        static_cast<const T*>(audio), weight, bias, to_one, workspace, channels, length, k1, k2, plan.tiles,
        plan.slices, plan.span, static_cast<int>(clips));
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    pool_kernel<T><<<static_cast<unsigned>(pool_blocks), kPoolThreads, 0, stream>>>(
        workspace, to_one_bias, static_cast<T*>(tokens), static_cast<int>(clips), length, outputs, plan.slices);
    return cudaGetLastError();
  });
}

LaunchNeeds audio_squeeze_tokens_backward_needs(long long clips, int channels, int length, int k1, int k2,
                                                DeviceLimits limits) {
  const BackwardPlan plan = backward_plan(clips, channels, length, k1, k2, limits);
  return {plan.splits * Slots{channels, k1, k2}.total(),
          plan.audio_bytes > plan.weight_bytes ? plan.audio_bytes : plan.weight_bytes};
}

cudaError_t launch_audio_squeeze_tokens_backward(ActivationType type, const void* grad, const void* audio,
                                                 const float* weight, const float* bias, const float* to_one,
                                                 void* grad_audio, float* grad_weight, float* grad_bias,
                                                 float* grad_to_one, float* grad_to_one_bias, float* workspace,
                                                 long long clips, int channels, int length, int k1, int k2,
                                                 int outputs, DeviceLimits limits, cudaStream_t stream) {
  const BackwardPlan plan = backward_plan(clips, channels, length, k1, k2, limits);
  const long long audio_blocks = clips * plan.tiles, weight_blocks = static_cast<long long>(plan.groups) * plan.splits;
  if (plan.tile == 0 || plan.units == 0 || plan.weight_bytes > limits.shared_bytes_per_block ||
      audio_blocks > 0x7fffffffLL) {
    return cudaErrorInvalidValue;
  }
  const Slots slots{channels, k1, k2};
  return dispatch_activation(type, [&](auto zero) {
    using T = decltype(zero);
    cudaError_t err = allow_shared_bytes(tokens_grad_audio_kernel<T>, plan.audio_bytes);
    if (err == cudaSuccess) err = allow_shared_bytes(tokens_weight_kernel<T>, plan.weight_bytes);
    if (err != cudaSuccess) return err;
    tokens_grad_audio_kernel<T><<<static_cast<unsigned>(audio_blocks), kThreads, plan.audio_bytes, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(audio), weight, bias, to_one, static_cast<T*>(grad_audio),
        channels, length, k1, k2, outputs, plan.tile, plan.tiles);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    tokens_weight_kernel<T><<<static_cast<unsigned>(weight_blocks), kTile, plan.weight_bytes, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(audio), weight, bias, to_one, workspace, channels, length,
        k1, k2, outputs, (length + kTile - 1) / kTile, plan.units, plan.groups, plan.splits, plan.window_stride);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    const dense_conv1d::Sections sections{{grad_weight, grad_bias, grad_to_one, grad_to_one_bias},
                                          {slots.weight(), slots.to_one(), slots.to_one_bias(), slots.total()}};
    return dense_conv1d::launch_reduce_partials(workspace, plan.splits, slots.total(), sections, stream);
  });
}

}  // namespace avfused::cuda
