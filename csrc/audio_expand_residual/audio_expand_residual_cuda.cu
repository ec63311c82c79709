// audio_expand_residual on CUDA (no torch headers: nvcc stays fast). The interpolated signal (B L values) is
// never written: each block interpolates the stretch of it that its tile of positions reads (the tile and
// K - 1 around it) into shared memory, straight from the tokens (L1/L2-cached, C times smaller than the audio).
// Work units are (clip, tile of positions, group of channels): the channels are split into as many groups as
// it takes to give the device enough blocks at batch 1 (one group at large batches); a block loops over
// its group's channels with the signal tile loaded once.
// Forward: one thread per position of a 256-position tile, out = scale audio + bias + sum_k weight signal.
// Backward, in three kernels and without atomics (deterministic):
//   1. per unit (512-position tile, two positions per thread) and channel of its group: grad_audio = scale
//      grad, the bias, scale and K weight sums of the tile (one warp per tap) as per-tile partials, and the
//      transposed convolution summed over the group's channels into the group's signal gradient;
//   2. one warp per weight / bias / scale sum adds its tile partials in a fixed order, in double;
//   3. one warp per token value gathers the positions that read it (a binary search over the monotone
//      interpolation source) and the groups' signal gradients there: the interpolation's transpose.
#include "audio_expand_residual.h"

namespace avfused::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kForwardTile = kThreads;       // positions per forward unit, one per thread
constexpr int kBackwardTile = 2 * kThreads;  // positions per backward unit, two per thread
constexpr int kBlocksPerMultiprocessor = 4;  // what the channel groups aim for

// How a launch cuts the work: units = clips * tiles * groups, unit u = (clip tile u / groups, group u % groups).
struct Geometry {
  long long clips, tiles, units;
  double ratio;  // values / length, the interpolation's scale
  int channels, length, values, kernel, groups, per_group;
};

Geometry geometry(const AudioExpandShape& s, int tile, DeviceLimits limits) {
  Geometry g{};
  g.clips = s.clips;
  g.tiles = (static_cast<long long>(s.length) + tile - 1) / tile;
  g.ratio = static_cast<double>(s.values) / static_cast<double>(s.length);
  g.channels = s.channels;
  g.length = s.length;
  g.values = s.values;
  g.kernel = s.kernel;
  const long long have = g.clips * g.tiles, wanted = static_cast<long long>(kBlocksPerMultiprocessor) *
                                                     (limits.multiprocessors > 0 ? limits.multiprocessors : 1);
  long long groups = (wanted + have - 1) / have;
  groups = groups < 1 ? 1 : (groups > s.channels ? s.channels : groups);
  g.per_group = static_cast<int>((s.channels + groups - 1) / groups);
  g.groups = static_cast<int>((s.channels + static_cast<long long>(g.per_group) - 1) / g.per_group);  // none empty
  g.units = have * g.groups;
  return g;
}

unsigned blocks_for(long long units) {
  const long long most = 0x7fffffffLL;  // grid.x's limit; the kernels stride over the rest
  return static_cast<unsigned>(units < most ? units : most);
}

// The signal of one clip at position l: its tokens linearly interpolated, zero outside [0, length) (the
// convolution's padding).
template <class T>
__device__ __forceinline__ float signal_at(const T* tokens, double ratio, int values, int length, long long l) {
  if (l < 0 || l >= length) return 0.f;
  const InterpolationSource s = interpolation_source(ratio, values, l);
  return (1.f - s.lambda) * load_float(tokens + s.left) + s.lambda * load_float(tokens + s.right);
}

// signal[i] = the clip's signal at start + i, i < count.
template <class T>
__device__ __forceinline__ void load_signal(float* signal, const T* tokens, const Geometry& g, long long start,
                                            int count) {
  for (int i = threadIdx.x; i < count; i += blockDim.x) signal[i] = signal_at(tokens, g.ratio, g.values, g.length,
                                                                              start + i);
}

template <class T>
__global__ void __launch_bounds__(kThreads) forward_kernel(const T* __restrict__ audio, const T* __restrict__ tokens,
                                                           const float* __restrict__ weight,
                                                           const float* __restrict__ bias,
                                                           const float* __restrict__ scale, T* __restrict__ out,
                                                           Geometry g) {
  extern __shared__ float signal[];  // kForwardTile + K - 1: the signal at l0 - K / 2 + i
  const int kernel = g.kernel, half = kernel / 2;
  for (long long unit = blockIdx.x; unit < g.units; unit += gridDim.x) {
    const int group = static_cast<int>(unit % g.groups);
    const long long clip_tile = unit / g.groups, b = clip_tile / g.tiles;
    const long long l0 = (clip_tile % g.tiles) * kForwardTile, l = l0 + threadIdx.x;
    __syncthreads();  // the previous unit's reads of the signal are done
    load_signal(signal, tokens + b * g.values, g, l0 - half, kForwardTile + kernel - 1);
    __syncthreads();
    if (l >= g.length) continue;
    const int first = group * g.per_group, last = min(g.channels, first + g.per_group);
    for (int c = first; c < last; ++c) {
      const long long at = (b * g.channels + c) * g.length + l;
      const float* w = weight + static_cast<long long>(c) * kernel;
      float acc = __ldg(bias + c) + __ldg(scale + c) * load_float(audio + at);
      for (int k = 0; k < kernel; ++k) acc += __ldg(w + k) * signal[threadIdx.x + k];
      out[at] = from_float<T>(acc);
    }
  }
}

// Kernel 1 of the backward. partials (C (K + 2), clips tiles): tile p's sums of channel c at (c (K + 2) + j) P
// + p, j < K the weight taps, then bias and scale; grad_signal (groups, B, L): group r's share of the signal
// gradient. Every entry of both is written exactly once.
template <class T>
__global__ void __launch_bounds__(kThreads) backward_kernel(const T* __restrict__ grad, const T* __restrict__ audio,
                                                            const T* __restrict__ tokens,
                                                            const float* __restrict__ weight,
                                                            const float* __restrict__ scale,
                                                            T* __restrict__ grad_audio,
                                                            float* __restrict__ grad_signal,
                                                            float* __restrict__ partials, Geometry g) {
  extern __shared__ float shared[];
  __shared__ float block_sums[kWarps][2];  // per warp: the bias and scale sums of one channel
  const int kernel = g.kernel, half = kernel / 2, window = kBackwardTile + kernel - 1;
  float* signal = shared;              // the signal at l0 - half + i
  float* window_grad = shared + window;  // one channel's grad at l0 - half + i, zero outside [0, L)
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const long long parts = g.clips * g.tiles;
  for (long long unit = blockIdx.x; unit < g.units; unit += gridDim.x) {
    const int group = static_cast<int>(unit % g.groups);
    const long long clip_tile = unit / g.groups, b = clip_tile / g.tiles;
    const long long l0 = (clip_tile % g.tiles) * kBackwardTile;
    __syncthreads();  // the previous unit's reads of shared memory are done
    load_signal(signal, tokens + b * g.values, g, l0 - half, window);
    float acc0 = 0.f, acc1 = 0.f;  // the group's signal gradient at l0 + tid and l0 + tid + kThreads
    const int first = group * g.per_group, last = min(g.channels, first + g.per_group);
    for (int c = first; c < last; ++c) {
      const long long row = (b * g.channels + c) * g.length;
      const float s = __ldg(scale + c);
      float bias_sum = 0.f, scale_sum = 0.f;
      for (int i = tid; i < window; i += kThreads) {
        const long long l = l0 - half + i;
        float gv = 0.f;
        if (l >= 0 && l < g.length) {
          gv = load_float(grad + row + l);
          if (i >= half && i < half + kBackwardTile) {  // the tile's own positions: l0 <= l < l0 + kBackwardTile
            grad_audio[row + l] = from_float<T>(s * gv);
            bias_sum += gv;
            scale_sum += gv * load_float(audio + row + l);
          }
        }
        window_grad[i] = gv;
      }
      __syncthreads();  // the signal (first channel) and window_grad are in
      // conv1d^T: grad_signal[m] += sum_k w[k] grad[m - k + half] = sum_k w[k] window_grad[m - l0 - k + 2 half]
      const float* w = weight + static_cast<long long>(c) * kernel;
      for (int k = 0; k < kernel; ++k) {
        const float wk = __ldg(w + k);
        acc0 += wk * window_grad[tid - k + 2 * half];
        acc1 += wk * window_grad[tid + kThreads - k + 2 * half];
      }
      // the weight sums: warp w takes taps w, w + kWarps, ...: sum_i grad[l0 + i] signal[l0 + i + k - half]
      float* part = partials + static_cast<long long>(c) * (kernel + 2) * parts + clip_tile;
      for (int k = warp; k < kernel; k += kWarps) {
        float sum = 0.f;
        for (int i = lane; i < kBackwardTile; i += 32) sum += window_grad[i + half] * signal[i + k];
        sum = warp_sum(sum);
        if (lane == 0) part[k * parts] = sum;
      }
      bias_sum = warp_sum(bias_sum);
      scale_sum = warp_sum(scale_sum);
      if (lane == 0) {
        block_sums[warp][0] = bias_sum;
        block_sums[warp][1] = scale_sum;
      }
      __syncthreads();  // block_sums are in; every read of window_grad is done
      if (tid < 2) {
        float total = 0.f;
        for (int v = 0; v < kWarps; ++v) total += block_sums[v][tid];
        part[(kernel + tid) * parts] = total;
      }
    }
    float* mine = grad_signal + (group * g.clips + b) * g.length;
    if (l0 + tid < g.length) mine[l0 + tid] = acc0;
    if (l0 + tid + kThreads < g.length) mine[l0 + tid + kThreads] = acc1;
  }
}

// Kernel 2: one warp per sum (C (K + 2) of them), its tile partials added in double in a fixed order.
__global__ void __launch_bounds__(kThreads) sums_kernel(const float* __restrict__ partials,
                                                        float* __restrict__ grad_weight, float* __restrict__ grad_bias,
                                                        float* __restrict__ grad_scale, long long parts, int channels,
                                                        int kernel) {
  const int lane = threadIdx.x % 32;
  const long long sums = static_cast<long long>(channels) * (kernel + 2), warps = gridDim.x * (kThreads / 32LL);
  for (long long s = blockIdx.x * (kThreads / 32LL) + threadIdx.x / 32; s < sums; s += warps) {
    const float* p = partials + s * parts;
    double total = 0.0;
    for (long long i = lane; i < parts; i += 32) total += p[i];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) total += __shfl_down_sync(0xffffffffu, total, offset);
    if (lane == 0) {
      const long long c = s / (kernel + 2);
      const int j = static_cast<int>(s % (kernel + 2));
      float* target = j < kernel ? grad_weight + c * kernel + j : (j == kernel ? grad_bias + c : grad_scale + c);
      *target = static_cast<float>(total);
    }
  }
}

// The first position l in [0, length] whose interpolation source's left token is at least `target` (length if
// none): the source only grows with l.
__device__ __forceinline__ long long first_reading(double ratio, int values, int length, long long target) {
  long long lo = 0, hi = length;
  while (lo < hi) {
    const long long mid = lo + (hi - lo) / 2;
    if (interpolation_source(ratio, values, mid).left >= target) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// Kernel 3: one warp per token value j of clip b: grad_tokens = sum over the positions l that read j (left
// source j - 1 or j) of its interpolation weight there times the signal gradient (the groups' shares added).
template <class T>
__global__ void __launch_bounds__(kThreads) tokens_kernel(const float* __restrict__ grad_signal,
                                                          T* __restrict__ grad_tokens, Geometry g) {
  const int lane = threadIdx.x % 32;
  const long long total = g.clips * g.values, warps = gridDim.x * (kThreads / 32LL);
  for (long long v = blockIdx.x * (kThreads / 32LL) + threadIdx.x / 32; v < total; v += warps) {
    const long long b = v / g.values, j = v % g.values;
    const long long begin = first_reading(g.ratio, g.values, g.length, j - 1);
    const long long end = first_reading(g.ratio, g.values, g.length, j + 1);
    float acc = 0.f;
    for (long long l = begin + lane; l < end; l += 32) {
      const InterpolationSource s = interpolation_source(g.ratio, g.values, l);
      const float share = (s.left == j ? 1.f - s.lambda : 0.f) + (s.right == j ? s.lambda : 0.f);
      float sum = 0.f;
      for (int r = 0; r < g.groups; ++r) sum += grad_signal[(r * g.clips + b) * g.length + l];
      acc += share * sum;
    }
    acc = warp_sum(acc);
    if (lane == 0) grad_tokens[v] = from_float<T>(acc);
  }
}

unsigned warp_blocks(long long warps, DeviceLimits limits) {
  const long long blocks = (warps + kWarps - 1) / kWarps, most = 32LL * (limits.multiprocessors > 0 ?
                                                                          limits.multiprocessors : 1);
  return static_cast<unsigned>(blocks < most ? (blocks > 0 ? blocks : 1) : most);
}

// Dynamic shared memory per block; the backward's static block_sums come on top.
size_t forward_shared_bytes(int kernel) { return sizeof(float) * (kForwardTile + static_cast<size_t>(kernel) - 1); }
size_t backward_shared_bytes(int kernel) {
  return 2 * sizeof(float) * (kBackwardTile + static_cast<size_t>(kernel) - 1);
}
constexpr size_t kBackwardStaticBytes = sizeof(float) * kWarps * 2;

}  // namespace

size_t audio_expand_residual_shared_bytes(int kernel) {
  const size_t forward = forward_shared_bytes(kernel), backward = backward_shared_bytes(kernel) + kBackwardStaticBytes;
  return forward > backward ? forward : backward;
}

long long audio_expand_residual_backward_workspace(AudioExpandShape shape, DeviceLimits limits) {
  const Geometry g = geometry(shape, kBackwardTile, limits);
  return static_cast<long long>(shape.channels) * (shape.kernel + 2) * g.clips * g.tiles +
         static_cast<long long>(g.groups) * g.clips * g.length;
}

cudaError_t launch_audio_expand_residual_forward(ActivationType type, const void* audio, const void* tokens,
                                                 const float* weight, const float* bias, const float* scale, void* out,
                                                 AudioExpandShape shape, DeviceLimits limits, cudaStream_t stream) {
  const Geometry g = geometry(shape, kForwardTile, limits);
  const size_t bytes = forward_shared_bytes(shape.kernel);
  if (bytes > limits.shared_bytes_per_block) return cudaErrorInvalidValue;  // the host side checks first
  return dispatch_activation(type, [&](auto zero) {
    using T = decltype(zero);
    cudaError_t err = allow_shared_bytes(forward_kernel<T>, bytes);
    if (err != cudaSuccess) return err;
    forward_kernel<T><<<blocks_for(g.units), kThreads, bytes, stream>>>(
        static_cast<const T*>(audio), static_cast<const T*>(tokens), weight, bias, scale, static_cast<T*>(out), g);
    return cudaGetLastError();
  });
}

cudaError_t launch_audio_expand_residual_backward(ActivationType type, const void* grad, const void* audio,
                                                  const void* tokens, const float* weight, const float* scale,
                                                  void* grad_audio, void* grad_tokens, float* grad_weight,
                                                  float* grad_bias, float* grad_scale, float* workspace,
                                                  AudioExpandShape shape, DeviceLimits limits, cudaStream_t stream) {
  const Geometry g = geometry(shape, kBackwardTile, limits);
  const size_t bytes = backward_shared_bytes(shape.kernel);
  if (bytes + kBackwardStaticBytes > limits.shared_bytes_per_block) return cudaErrorInvalidValue;  // checked first
  const long long parts = g.clips * g.tiles, sums = static_cast<long long>(g.channels) * (g.kernel + 2);
  float* partials = workspace;
  float* grad_signal = workspace + sums * parts;
  return dispatch_activation(type, [&](auto zero) {
    using T = decltype(zero);
    cudaError_t err = allow_shared_bytes(backward_kernel<T>, bytes);
    if (err != cudaSuccess) return err;
    backward_kernel<T><<<blocks_for(g.units), kThreads, bytes, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(audio), static_cast<const T*>(tokens), weight, scale,
        static_cast<T*>(grad_audio), grad_signal, partials, g);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    sums_kernel<<<warp_blocks(sums, limits), kThreads, 0, stream>>>(partials, grad_weight, grad_bias, grad_scale,
                                                                    parts, g.channels, g.kernel);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    tokens_kernel<T><<<warp_blocks(g.clips * g.values, limits), kThreads, 0, stream>>>(
        grad_signal, static_cast<T*>(grad_tokens), g);
    return cudaGetLastError();
  });
}

}  // namespace avfused::cuda
