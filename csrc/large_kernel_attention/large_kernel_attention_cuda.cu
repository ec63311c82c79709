// large_kernel_attention on the GPU: one block per square tile of an image, all channels; the dw5x5 context
// lives only in shared memory.
//   gate_kernel<T, false> (forward): for each channel, stage p over the tile + 11 pixels of halo (the
//     reach of dw5x5 then dw7x7 dilation 3), form c5 over the tile + 9 (zero outside the image: dw7's
//     padding), then c7 on the tile into a per-channel shared row; then out = p (W1 c7 + b1) per pixel.
//   gate_kernel<T, true> (backward, first half): the same recompute, then dp = grad g, dg = grad p (shared),
//     dW1 and db1 (block sums, float atomics) and dc7 = W1^T dg into a float32 workspace.
//   depthwise_backward_kernel (second half): one block per tile and channel; stages p and dc7 over the
//     tile + 11, recomputes c5 over the tile + 9, forms dc5 = dw7^T(dc7) over the tile + 2, then the
//     tap gradients dw7, db7, dw5, db5 (block sums, float atomics) and dp += dw5^T(dc5).
// Indices into (N, C, H, W) tensors are 64-bit; the host passes images in chunks sized for the workspace.
#include <cuda_runtime.h>

#include "large_kernel_attention.h"

namespace avfused::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kReach = 11;  // dw5x5 (2) + dw7x7 dilation 3 (9)
constexpr int kReach7 = 9;

// Shared memory of one tile (in floats); every array is a row-major square of the tile grown by a reach,
// the per-channel rows padded by one so that a warp reading several channels at one pixel hits distinct
// banks.
struct GateLayout {
  int tile, staged, middle, pixels, row;
  __host__ __device__ GateLayout(int tile_size)
      : tile(tile_size),
        staged(tile_size + 2 * kReach),
        middle(tile_size + 2 * kReach7),
        pixels(tile_size * tile_size),
        row(tile_size * tile_size + 1) {}
  __host__ __device__ size_t floats(int channels, bool backward) const {
    return static_cast<size_t>(staged) * staged + static_cast<size_t>(middle) * middle +
           static_cast<size_t>(backward ? 2 : 1) * channels * row;
  }
};

struct DepthwiseLayout {
  int tile, staged, middle, grown, pixels;
  __host__ __device__ DepthwiseLayout(int tile_size)
      : tile(tile_size),
        staged(tile_size + 2 * kReach),
        middle(tile_size + 2 * kReach7),
        grown(tile_size + 4),
        pixels(tile_size * tile_size) {}
  __host__ __device__ size_t floats() const {
    return 2 * static_cast<size_t>(staged) * staged + static_cast<size_t>(middle) * middle +
           static_cast<size_t>(grown) * grown + kThreads;
  }
};

__device__ __forceinline__ bool inside(int y, int x, int height, int width) {
  return y >= 0 && y < height && x >= 0 && x < width;
}

// c5 of one channel over the tile + 9 into `middle` from `staged` (p over the tile + 11); zero outside the image.
__device__ __forceinline__ void context5(const float* staged, int staged_side, float* middle, int middle_side, int y0,
                                         int x0, int height, int width, const float* __restrict__ w5, float b5) {
  for (int i = threadIdx.x; i < middle_side * middle_side; i += kThreads) {
    const int ly = i / middle_side, lx = i - ly * middle_side;
    float value = 0.f;
    if (inside(y0 - kReach7 + ly, x0 - kReach7 + lx, height, width)) {
      value = b5;
#pragma unroll
      for (int ky = 0; ky < 5; ++ky) {
#pragma unroll
        for (int kx = 0; kx < 5; ++kx) value = fmaf(__ldg(w5 + ky * 5 + kx), staged[(ly + ky) * staged_side + lx + kx], value);
      }
    }
    middle[i] = value;
  }
}

// `region` over the tile + reach of one channel plane (a (H, W) plane of type T, or float), zero outside.
template <class T>
__device__ __forceinline__ void stage(const T* __restrict__ plane, float* region, int side, int reach, int y0, int x0,
                                      int height, int width) {
  for (int i = threadIdx.x; i < side * side; i += kThreads) {
    const int ly = i / side, lx = i - ly * side;
    const int y = y0 - reach + ly, x = x0 - reach + lx;
    region[i] = inside(y, x, height, width) ? load_float(plane + static_cast<long long>(y) * width + x) : 0.f;
  }
}

template <class T, bool kBackward>
__global__ void __launch_bounds__(kThreads)
    gate_kernel(const T* __restrict__ p, const T* __restrict__ grad, const float* __restrict__ w5,
                const float* __restrict__ b5, const float* __restrict__ w7, const float* __restrict__ b7,
                const float* __restrict__ w1, const float* __restrict__ b1, T* __restrict__ out,
                float* __restrict__ d_context, float* __restrict__ d_w1, float* __restrict__ d_b1, int channels,
                int height, int width, int tile_size, int tiles_x, int tiles) {
  extern __shared__ float smem[];
  const GateLayout layout(tile_size);
  float* staged = smem;
  float* middle = staged + layout.staged * layout.staged;
  float* context = middle + layout.middle * layout.middle;  // C rows of the tile's pixels: c7
  float* d_gate = context + channels * layout.row;           // backward: C rows of dg
  const long long n = blockIdx.x / tiles;
  const int t = static_cast<int>(blockIdx.x - n * tiles);
  const int y0 = (t / tiles_x) * tile_size, x0 = (t % tiles_x) * tile_size;
  const long long plane = static_cast<long long>(height) * width;
  const long long image = n * channels * plane;

  for (int c = 0; c < channels; ++c) {
    stage(p + image + c * plane, staged, layout.staged, kReach, y0, x0, height, width);
    __syncthreads();  // staged is written; the previous channel's c7 pass is done with middle
    context5(staged, layout.staged, middle, layout.middle, y0, x0, height, width, w5 + c * 25, __ldg(b5 + c));
    __syncthreads();
    const float* taps = w7 + c * 49;
    const float bias = __ldg(b7 + c);
    for (int q = threadIdx.x; q < layout.pixels; q += kThreads) {
      const int ly = q / tile_size, lx = q - ly * tile_size;
      float value = bias;
#pragma unroll
      for (int ky = 0; ky < 7; ++ky) {
#pragma unroll
        for (int kx = 0; kx < 7; ++kx) {
          value = fmaf(__ldg(taps + ky * 7 + kx), middle[(ly + 3 * ky) * layout.middle + lx + 3 * kx], value);
        }
      }
      context[c * layout.row + q] = value;
    }
  }
  __syncthreads();

  for (int i = threadIdx.x; i < channels * layout.pixels; i += kThreads) {
    const int co = i / layout.pixels, q = i - co * layout.pixels;
    const int y = y0 + q / tile_size, x = x0 + q % tile_size;
    if (!inside(y, x, height, width)) {
      if (kBackward) d_gate[co * layout.row + q] = 0.f;
      continue;
    }
    const float* w_row = w1 + static_cast<long long>(co) * channels;
    float gate = __ldg(b1 + co);
    for (int ci = 0; ci < channels; ++ci) gate = fmaf(__ldg(w_row + ci), context[ci * layout.row + q], gate);
    const long long index = image + co * plane + static_cast<long long>(y) * width + x;
    const float pv = load_float(p + index);
    if (kBackward) {
      const float gv = load_float(grad + index);
      out[index] = from_float<T>(gv * gate);  // dp's first term
      d_gate[co * layout.row + q] = gv * pv;
    } else {
      out[index] = from_float<T>(pv * gate);
    }
  }
  if (!kBackward) return;
  __syncthreads();

  // dW1[co][ci] = sum_q dg[co][q] c7[ci][q] and db1[co] = sum_q dg[co][q] (the last column), this tile's share
  for (int i = threadIdx.x; i < channels * (channels + 1); i += kThreads) {
    const int co = i / (channels + 1), ci = i - co * (channels + 1);
    const float* dg = d_gate + co * layout.row;
    float sum = 0.f;
    if (ci < channels) {
      const float* c7 = context + ci * layout.row;
      for (int q = 0; q < layout.pixels; ++q) sum = fmaf(dg[q], c7[q], sum);
      atomicAdd(d_w1 + static_cast<long long>(co) * channels + ci, sum);
    } else {
      for (int q = 0; q < layout.pixels; ++q) sum += dg[q];
      atomicAdd(d_b1 + co, sum);
    }
  }
  // dc7[ci] = sum_co w1[co][ci] dg[co] on the tile's pixels inside the image
  for (int i = threadIdx.x; i < channels * layout.pixels; i += kThreads) {
    const int ci = i / layout.pixels, q = i - ci * layout.pixels;
    const int y = y0 + q / tile_size, x = x0 + q % tile_size;
    if (!inside(y, x, height, width)) continue;
    float sum = 0.f;
    for (int co = 0; co < channels; ++co) {
      sum = fmaf(__ldg(w1 + static_cast<long long>(co) * channels + ci), d_gate[co * layout.row + q], sum);
    }
    d_context[image + ci * plane + static_cast<long long>(y) * width + x] = sum;
  }
}

// The block's sums of grad (x) input over the tile for the K x K taps of one channel, then its sum of grad:
// threads take (tap, stripe) pairs, stripes of the tile's pixels, and the stripes are added in shared memory.
//   grad_at(q) = the gradient at tile pixel q (0 outside the image); input_at(q, ky, kx) = the input it meets.
template <int K, class Grad, class Input>
__device__ __forceinline__ void tap_sums(int pixels, float* scratch, float* __restrict__ d_taps,
                                         float* __restrict__ d_bias, Grad grad_at, Input input_at) {
  constexpr int kSums = K * K + 1;
  constexpr int kStripes = kThreads / kSums;
  const int tap = threadIdx.x / kStripes, stripe = threadIdx.x - tap * kStripes;
  float sum = 0.f;
  if (tap < kSums) {
    const int ky = tap / K, kx = tap - ky * K;
    for (int q = stripe; q < pixels; q += kStripes) {
      sum = fmaf(grad_at(q), tap < K * K ? input_at(q, ky, kx) : 1.f, sum);
    }
  }
  scratch[threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.x < kSums) {
    float total = 0.f;
    for (int s = 0; s < kStripes; ++s) total += scratch[threadIdx.x * kStripes + s];
    atomicAdd(threadIdx.x < K * K ? d_taps + threadIdx.x : d_bias, total);
  }
  __syncthreads();  // scratch is free again
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    depthwise_backward_kernel(const T* __restrict__ p, const float* __restrict__ d_context,
                              const float* __restrict__ w5, const float* __restrict__ b5,
                              const float* __restrict__ w7, T* __restrict__ dp, float* __restrict__ d_w5,
                              float* __restrict__ d_b5, float* __restrict__ d_w7, float* __restrict__ d_b7,
                              int channels, int height, int width, int tile_size, int tiles_x, int tiles) {
  extern __shared__ float smem[];
  const DepthwiseLayout layout(tile_size);
  float* staged = smem;                                       // p, tile + 11
  float* d_staged = staged + layout.staged * layout.staged;   // dc7, tile + 11
  float* middle = d_staged + layout.staged * layout.staged;   // c5, tile + 9
  float* d_middle = middle + layout.middle * layout.middle;   // dc5, tile + 2
  float* scratch = d_middle + layout.grown * layout.grown;    // kThreads partial sums
  const long long nc = blockIdx.x / tiles;
  const int t = static_cast<int>(blockIdx.x - nc * tiles);
  const int c = static_cast<int>(nc % channels);
  const int y0 = (t / tiles_x) * tile_size, x0 = (t % tiles_x) * tile_size;
  const long long plane_offset = nc * static_cast<long long>(height) * width;

  stage(p + plane_offset, staged, layout.staged, kReach, y0, x0, height, width);
  stage(d_context + plane_offset, d_staged, layout.staged, kReach, y0, x0, height, width);
  __syncthreads();
  context5(staged, layout.staged, middle, layout.middle, y0, x0, height, width, w5 + c * 25, __ldg(b5 + c));
  // dc5 over the tile + 2: the correlation of dc7 with the mirrored 7x7 taps (dilation 3); zero outside
  const float* taps7 = w7 + c * 49;
  for (int i = threadIdx.x; i < layout.grown * layout.grown; i += kThreads) {
    const int ly = i / layout.grown, lx = i - ly * layout.grown;
    float value = 0.f;
    if (inside(y0 - 2 + ly, x0 - 2 + lx, height, width)) {
#pragma unroll
      for (int ky = 0; ky < 7; ++ky) {
#pragma unroll
        for (int kx = 0; kx < 7; ++kx) {
          value = fmaf(__ldg(taps7 + 48 - (ky * 7 + kx)), d_staged[(ly + 3 * ky) * layout.staged + lx + 3 * kx], value);
        }
      }
    }
    d_middle[i] = value;
  }
  __syncthreads();

  const int tile = tile_size, staged_side = layout.staged, middle_side = layout.middle, grown = layout.grown;
  // dw7[k] = sum_q dc7[q] c5[q + 3k - 9], db7 = sum_q dc7[q]
  tap_sums<7>(
      layout.pixels, scratch, d_w7 + c * 49, d_b7 + c,
      [&](int q) { return d_staged[(q / tile + kReach) * staged_side + q % tile + kReach]; },
      [&](int q, int ky, int kx) { return middle[(q / tile + 3 * ky) * middle_side + q % tile + 3 * kx]; });
  // dw5[k] = sum_q dc5[q] p[q + k - 2], db5 = sum_q dc5[q]
  tap_sums<5>(
      layout.pixels, scratch, d_w5 + c * 25, d_b5 + c,
      [&](int q) { return d_middle[(q / tile + 2) * grown + q % tile + 2]; },
      [&](int q, int ky, int kx) { return staged[(q / tile + ky + kReach - 2) * staged_side + q % tile + kx + kReach - 2]; });
  // dp += the correlation of dc5 with the mirrored 5x5 taps
  const float* taps5 = w5 + c * 25;
  for (int q = threadIdx.x; q < layout.pixels; q += kThreads) {
    const int ly = q / tile, lx = q - ly * tile;
    const int y = y0 + ly, x = x0 + lx;
    if (!inside(y, x, height, width)) continue;
    float value = 0.f;
#pragma unroll
    for (int ky = 0; ky < 5; ++ky) {
#pragma unroll
      for (int kx = 0; kx < 5; ++kx) value = fmaf(__ldg(taps5 + 24 - (ky * 5 + kx)), d_middle[(ly + ky) * grown + lx + kx], value);
    }
    const long long index = plane_offset + static_cast<long long>(y) * width + x;
    dp[index] = from_float<T>(to_float(dp[index]) + value);
  }
}

// Blocks to aim for: enough for every multiprocessor twice over.
long long wanted_blocks(const DeviceLimits& limits) { return 2LL * limits.multiprocessors; }

constexpr long long kMaxBlocks = 0x7fffffffLL;  // a 1-D grid's limit

}  // namespace

cudaError_t launch_large_kernel_attention_forward(ActivationType type, const void* p, const float* w5, const float* b5,
                                                  const float* w7, const float* b7, const float* w1, const float* b1,
                                                  void* out, long long images, int channels, int height, int width,
                                                  DeviceLimits limits, cudaStream_t stream) {
  if (channels > kLargeKernelAttentionMaxChannels) return cudaErrorInvalidValue;
  const TileGrid grid = choose_tile(images, height, width, wanted_blocks(limits), limits.shared_bytes_per_block,
                                    [&](int size) { return GateLayout(size).floats(channels, false) * sizeof(float); });
  if (grid.size == 0 || images * grid.tiles > kMaxBlocks) return cudaErrorInvalidValue;
  const size_t bytes = GateLayout(grid.size).floats(channels, false) * sizeof(float);
  return dispatch_activation(type, [&](auto zero) {
    using T = decltype(zero);
    auto kernel = gate_kernel<T, false>;
    cudaError_t err = allow_shared_bytes(kernel, bytes);
    if (err != cudaSuccess) return err;
    kernel<<<static_cast<unsigned>(images * grid.tiles), kThreads, bytes, stream>>>(
        static_cast<const T*>(p), nullptr, w5, b5, w7, b7, w1, b1, static_cast<T*>(out), nullptr, nullptr, nullptr,
        channels, height, width, grid.size, grid.tiles_x, grid.tiles);
    return cudaGetLastError();
  });
}

cudaError_t launch_large_kernel_attention_backward(ActivationType type, const void* grad, const void* p,
                                                   const float* w5, const float* b5, const float* w7, const float* b7,
                                                   const float* w1, const float* b1, void* dp, float* workspace,
                                                   float* d_w5, float* d_b5, float* d_w7, float* d_b7, float* d_w1,
                                                   float* d_b1, long long images, int channels, int height, int width,
                                                   DeviceLimits limits, cudaStream_t stream) {
  if (channels > kLargeKernelAttentionMaxChannels) return cudaErrorInvalidValue;
  const TileGrid gate_grid =
      choose_tile(images, height, width, wanted_blocks(limits), limits.shared_bytes_per_block,
                  [&](int size) { return GateLayout(size).floats(channels, true) * sizeof(float); });
  const TileGrid depthwise_grid =
      choose_tile(images * channels, height, width, wanted_blocks(limits), limits.shared_bytes_per_block,
                  [&](int size) { return DepthwiseLayout(size).floats() * sizeof(float); });
  if (gate_grid.size == 0 || depthwise_grid.size == 0 || images * channels * depthwise_grid.tiles > kMaxBlocks) {
    return cudaErrorInvalidValue;
  }
  const size_t gate_bytes = GateLayout(gate_grid.size).floats(channels, true) * sizeof(float);
  const size_t depthwise_bytes = DepthwiseLayout(depthwise_grid.size).floats() * sizeof(float);
  return dispatch_activation(type, [&](auto zero) {
    using T = decltype(zero);
    auto gate = gate_kernel<T, true>;
    auto depthwise = depthwise_backward_kernel<T>;
    cudaError_t err = allow_shared_bytes(gate, gate_bytes);
    if (err == cudaSuccess) err = allow_shared_bytes(depthwise, depthwise_bytes);
    if (err != cudaSuccess) return err;
    gate<<<static_cast<unsigned>(images * gate_grid.tiles), kThreads, gate_bytes, stream>>>(
        static_cast<const T*>(p), static_cast<const T*>(grad), w5, b5, w7, b7, w1, b1, static_cast<T*>(dp), workspace,
        d_w1, d_b1, channels, height, width, gate_grid.size, gate_grid.tiles_x, gate_grid.tiles);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    depthwise<<<static_cast<unsigned>(images * channels * depthwise_grid.tiles), kThreads, depthwise_bytes, stream>>>(
        static_cast<const T*>(p), workspace, w5, b5, w7, static_cast<T*>(dp), d_w5, d_b5, d_w7, d_b7, channels, height,
        width, depthwise_grid.size, depthwise_grid.tiles_x, depthwise_grid.tiles);
    return cudaGetLastError();
  });
}

}  // namespace avfused::cuda
