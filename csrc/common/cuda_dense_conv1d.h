// CUDA building blocks of the 'same'-padded dense Conv1d(C -> C, K odd) whose output the SAAVM's audio squeeze
// ops recompute instead of storing (audio_squeeze_stats, audio_squeeze_tokens): the convolution of a few output
// channels at one position, read straight from the audio (L1 serves the K neighbours); the transposed
// convolution of a tile of output gradients held in shared memory; the weight sums of a tile into per-block
// shared accumulators; and the fixed-order reduction of the blocks' partial sums. No atomics: every result is
// the same from run to run. The LaunchNeeds struct is the host side's too; the rest is nvcc's.
#pragma once

#include "cuda_activations.h"

namespace avfused::cuda {

// What a launch needs from its caller, which allocates and checks: elements of workspace, and the most dynamic
// shared memory one of its kernels takes per block (bytes).
struct LaunchNeeds {
  long long workspace;
  size_t shared_bytes;
};

}  // namespace avfused::cuda

#ifdef __CUDACC__
namespace avfused::cuda::dense_conv1d {

constexpr int kChunk = 32;  // input channels of audio staged in shared memory at a time (weight sums)

// row[position], zero outside [0, length) (the 'same' padding).
template <class T>
__device__ __forceinline__ float padded(const T* __restrict__ row, int length, int position) {
  return position >= 0 && position < length ? load_float(row + position) : 0.f;
}

// z[g] = bias[c] + sum_{ci, k} weight[c][ci][k] clip[ci][position + k - K / 2] for the G output channels
// c = first + g (channels past C repeat the last one: the caller drops them); clip (C, L) of one clip, weight
// (C, C, K) with C C K < 2^31.
template <int G, class T>
__device__ __forceinline__ void conv_channels(const T* __restrict__ clip, const float* __restrict__ weight,
                                              const float* __restrict__ bias, int channels, int length, int kernel,
                                              int first, int position, float (&z)[G]) {
  int rows[G];  // offset of each channel's (C, K) taps
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const int c = min(first + g, channels - 1);
    rows[g] = c * channels * kernel;
    z[g] = __ldg(bias + c);
  }
  const int start = position - kernel / 2;
  for (int ci = 0; ci < channels; ++ci) {
    const T* row = clip + static_cast<long long>(ci) * length;
    const float* taps = weight + ci * kernel;
    for (int k = 0; k < kernel; ++k) {
      const float x = padded(row, length, start + k);
#pragma unroll
      for (int g = 0; g < G; ++g) z[g] += __ldg(taps + rows[g] + k) * x;
    }
  }
}

// The input gradient of the tile [l0, l0 + tile) of one clip: grad_clip[ci][l0 + p] = sum_{c, k} weight[c][ci][k]
// grad[c][p + 2 (K / 2) - k] for the tile's positions inside [0, L), each thread G input channels of one
// position at a time. grad: the output gradient at positions l0 - K / 2 + i in shared memory (C rows `stride`
// apart, zero outside [0, L)); the block must have written it (and synchronised) before.
template <int G, class T>
__device__ __forceinline__ void transposed_tile(const float* grad, int stride, const float* __restrict__ weight,
                                                int channels, int kernel, int length, int l0, int tile,
                                                T* __restrict__ grad_clip) {
  const int count = min(tile, length - l0), groups = (channels + G - 1) / G, reach = 2 * (kernel / 2);
  for (int item = threadIdx.x; item < groups * tile; item += blockDim.x) {
    const int p = item % tile, first = (item / tile) * G;
    if (p >= count) continue;
    int columns[G];  // offset of input channel first + g's taps in an output channel's (C, K) row
#pragma unroll
    for (int g = 0; g < G; ++g) columns[g] = min(first + g, channels - 1) * kernel;
    float acc[G];
#pragma unroll
    for (int g = 0; g < G; ++g) acc[g] = 0.f;
    for (int c = 0; c < channels; ++c) {
      const float* row = grad + c * stride + p + reach;
      const float* taps = weight + c * channels * kernel;
      for (int k = 0; k < kernel; ++k) {
        const float dz = row[-k];
#pragma unroll
        for (int g = 0; g < G; ++g) acc[g] += __ldg(taps + columns[g] + k) * dz;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (first + g < channels) grad_clip[static_cast<long long>(first + g) * length + l0 + p] = from_float<T>(acc[g]);
    }
  }
}

// sums[(g C + ci) K + k] += sum_{p < tile} grad[g][p] clip[ci][l0 + p + k - K / 2] for every input channel ci,
// tap k and row g < G of grad (shared memory, rows `tile` apart, zero past the signal). The audio comes
// through `window` (shared, kChunk rows `stride` apart, stride = K mod 32 so that a warp's taps hit distinct
// banks) kChunk channels at a time; the tap (ci, k) is always summed by the same thread, so each sum is
// one thread's, in a fixed order. Every thread of the block calls it; it synchronises before each chunk
// (the caller after it, before grad or window are rewritten).
template <int G, class T>
__device__ __forceinline__ void add_weight_sums(const float* grad, int tile, float* window, int stride,
                                                const T* __restrict__ clip, int channels, int length, int kernel,
                                                int l0, float* sums) {
  const int half = kernel / 2, width = tile + 2 * half, taps = channels * kernel;
  for (int c0 = 0; c0 < channels; c0 += kChunk) {
    const int chunk = min(kChunk, channels - c0);
    __syncthreads();  // grad is written; the last chunk's window has been read
    for (int i = threadIdx.x; i < chunk * width; i += blockDim.x) {
      const int ci = i / width, j = i % width;
      window[ci * stride + j] = padded(clip + static_cast<long long>(c0 + ci) * length, length, l0 - half + j);
    }
    __syncthreads();
    for (int t = threadIdx.x; t < chunk * kernel; t += blockDim.x) {
      const float* x = window + (t / kernel) * stride + t % kernel;
      float acc[G];
#pragma unroll
      for (int g = 0; g < G; ++g) acc[g] = 0.f;
      for (int p = 0; p < tile; ++p) {
        const float v = x[p];
#pragma unroll
        for (int g = 0; g < G; ++g) acc[g] += grad[g * tile + p] * v;
      }
      float* out = sums + c0 * kernel + t;
#pragma unroll
      for (int g = 0; g < G; ++g) out[g * taps] += acc[g];
    }
  }
}

// The row stride of add_weight_sums' window: at least `width` floats, congruent to K mod 32.
inline int window_stride(int width, int kernel) { return width + (((kernel - width) % 32) + 32) % 32; }

// The gradients a reduction of partial sums ends in: slot s < end[0] goes to out[0][s], s in [end[i - 1],
// end[i]) to out[i][s - end[i - 1]]; unused sections end at 0.
struct Sections {
  float* out[4];
  long long end[4];
};

namespace {

constexpr int kReduceThreads = 256;

// out = the sum over the splits of partials (splits, slots) per slot, in double, in split order.
__global__ void __launch_bounds__(kReduceThreads) reduce_partials_kernel(const float* __restrict__ partials,
                                                                         int splits, long long slots,
                                                                         Sections sections) {
  const long long slot = static_cast<long long>(blockIdx.x) * kReduceThreads + threadIdx.x;
  if (slot >= slots) return;
  double total = 0.0;
  for (int s = 0; s < splits; ++s) total += partials[s * slots + slot];
  float* out = sections.out[0];
  long long begin = 0;
#pragma unroll
  for (int i = 1; i < 4; ++i) {
    if (sections.end[i] > 0 && slot >= sections.end[i - 1]) {
      out = sections.out[i];
      begin = sections.end[i - 1];
    }
  }
  out[slot - begin] = static_cast<float>(total);
}

}  // namespace

inline cudaError_t launch_reduce_partials(const float* partials, int splits, long long slots,
                                          const Sections& sections, cudaStream_t stream) {
  const long long blocks = (slots + kReduceThreads - 1) / kReduceThreads;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
  reduce_partials_kernel<<<static_cast<unsigned>(blocks), kReduceThreads, 0, stream>>>(partials, splits, slots,
                                                                                       sections);
  return cudaGetLastError();
}

// The tile of an input-gradient pass (one block per clip and tile, its shared memory `bytes(tile)`): the largest
// of 128, 64, 32 and 16 positions that fits and gives at least min_blocks blocks, else the smallest that fits;
// 0 when none fits.
template <class Bytes>
inline int choose_tile(long long clips, int length, long long min_blocks, size_t max_bytes, Bytes&& bytes) {
  const int sizes[] = {128, 64, 32, 16};
  int chosen = 0;
  for (int size : sizes) {
    if (bytes(size) > max_bytes) continue;
    chosen = size;
    if (clips * ((length + size - 1) / size) >= min_blocks) break;
  }
  return chosen;
}

// Blocks of one weight-sum pass: `groups` of output channels, each in `splits` that share the units (clip,
// tile) between them; enough splits to give about 2 blocks per multiprocessor, at most one per unit.
inline int weight_splits(long long units, int groups, const DeviceLimits& limits) {
  const long long wanted = (2LL * limits.multiprocessors + groups - 1) / groups;
  return static_cast<int>(wanted < units ? (wanted > 0 ? wanted : 1) : units);
}

}  // namespace avfused::cuda::dense_conv1d
#endif  // __CUDACC__
