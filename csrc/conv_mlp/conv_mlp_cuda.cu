// conv_mlp on the GPU: one block per square tile of an image, every channel; the x4 expansion exists only
// in shared memory, kExpandedChunk expanded channels at a time.
//   forward_kernel: stage x over the tile + 1 (dw3x3's reach), then per chunk h = W_in x + b_in over the
//     tile + 1 (zero outside the image: dw3x3's padding), a = ReLU(dw3x3(h) + b_dw) on the tile, and the
//     chunk's share of W_out a added to the tile's output accumulators; out = that + b_out.
//   backward_kernel: stage x over the tile + 2 and grad over the tile + 1; per chunk recompute h over the
//     tile + 2 and pre over the tile + 1, form dpre = (W_out^T grad) [pre > 0] over the tile + 1 and
//     dh = dw3x3^T(dpre) on the tile; the weight gradients of the chunk are block sums added with float
//     atomics, and its share of dx = W_in^T dh goes to the tile's dx accumulators.
// Every shared array of one channel is padded to an odd length so that a warp reading many channels at
// one pixel hits distinct banks. Indices into (N, C, H, W) tensors are 64-bit.
#include <cuda_runtime.h>

#include "conv_mlp.h"

namespace avfused::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kExpandedChunk = 16;
constexpr long long kMaxBlocks = 0x7fffffffLL;  // a 1-D grid's limit

__host__ __device__ inline int odd(int floats) { return floats | 1; }

// Shared memory of one tile (floats): per channel one odd-padded square of the tile grown by 0, 1 or 2.
struct MlpLayout {
  int tile, pixels, grown1, grown2;  // sides: tile, tile + 2, tile + 4
  int stride0, stride1, stride2;     // padded squares
  __host__ __device__ MlpLayout(int tile_size)
      : tile(tile_size),
        pixels(tile_size * tile_size),
        grown1(tile_size + 2),
        grown2(tile_size + 4),
        stride0(odd(tile_size * tile_size)),
        stride1(odd((tile_size + 2) * (tile_size + 2))),
        stride2(odd((tile_size + 4) * (tile_size + 4))) {}
  // forward: x (C, tile + 1), out accumulators (C, tile), h (chunk, tile + 1), a (chunk, tile)
  __host__ __device__ size_t forward_floats(int channels) const {
    return static_cast<size_t>(channels) * (stride1 + stride0) + static_cast<size_t>(kExpandedChunk) * (stride1 + stride0);
  }
  // backward: x (C, tile + 2), grad (C, tile + 1), dx accumulators (C, tile), h (chunk, tile + 2),
  // pre and dpre (chunk, tile + 1), dh (chunk, tile)
  __host__ __device__ size_t backward_floats(int channels) const {
    return static_cast<size_t>(channels) * (stride2 + stride1 + stride0) +
           static_cast<size_t>(kExpandedChunk) * (stride2 + 2 * stride1 + stride0);
  }
};

__device__ __forceinline__ bool inside(int y, int x, int height, int width) {
  return y >= 0 && y < height && x >= 0 && x < width;
}

// `region` (channels x stride) over the tile + reach of every channel of one image, zero outside.
template <class T>
__device__ __forceinline__ void stage_channels(const T* __restrict__ image, int channels, float* region, int stride,
                                               int side, int reach, int y0, int x0, int height, int width) {
  const long long plane = static_cast<long long>(height) * width;
  const int squares = side * side;
  for (int i = threadIdx.x; i < channels * squares; i += kThreads) {
    const int c = i / squares, r = i - c * squares;
    const int ly = r / side, lx = r - ly * side;
    const int y = y0 - reach + ly, x = x0 - reach + lx;
    region[c * stride + r] =
        inside(y, x, height, width) ? load_float(image + c * plane + static_cast<long long>(y) * width + x) : 0.f;
  }
}

// h[e] = b_in[e0 + e] + sum_c w_in[e0 + e][c] x[c] over a square of `side` (x staged over the same square),
// zero outside the image.
__device__ __forceinline__ void expand_chunk(const float* x, int x_stride, int channels, float* hidden, int h_stride,
                                             int side, int reach, int y0, int x0, int height, int width, int e0,
                                             int count, const float* __restrict__ w_in, const float* __restrict__ b_in) {
  const int squares = side * side;
  for (int i = threadIdx.x; i < count * squares; i += kThreads) {
    const int e = i / squares, r = i - e * squares;
    const int ly = r / side, lx = r - ly * side;
    float value = 0.f;
    if (inside(y0 - reach + ly, x0 - reach + lx, height, width)) {
      const float* w_row = w_in + static_cast<long long>(e0 + e) * channels;
      value = __ldg(b_in + e0 + e);
      for (int c = 0; c < channels; ++c) value = fmaf(__ldg(w_row + c), x[c * x_stride + r], value);
    }
    hidden[e * h_stride + r] = value;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ x, const float* __restrict__ w_in, const float* __restrict__ b_in,
                   const float* __restrict__ w_dw, const float* __restrict__ b_dw, const float* __restrict__ w_out,
                   const float* __restrict__ b_out, T* __restrict__ out, int channels, int expanded, int height,
                   int width, int tile_size, int tiles_x, int tiles) {
  extern __shared__ float smem[];
  const MlpLayout layout(tile_size);
  float* xs = smem;                                  // C x (tile + 1)
  float* total = xs + channels * layout.stride1;     // C x tile
  float* hidden = total + channels * layout.stride0;  // chunk x (tile + 1)
  float* act = hidden + kExpandedChunk * layout.stride1;  // chunk x tile
  const long long n = blockIdx.x / tiles;
  const int t = static_cast<int>(blockIdx.x - n * tiles);
  const int y0 = (t / tiles_x) * tile_size, x0 = (t % tiles_x) * tile_size;
  const long long plane = static_cast<long long>(height) * width;
  const long long image = n * channels * plane;

  stage_channels(x + image, channels, xs, layout.stride1, layout.grown1, 1, y0, x0, height, width);
  for (int i = threadIdx.x; i < channels * layout.pixels; i += kThreads) {
    const int c = i / layout.pixels;
    total[c * layout.stride0 + i - c * layout.pixels] = __ldg(b_out + c);
  }
  for (int e0 = 0; e0 < expanded; e0 += kExpandedChunk) {
    const int count = min(kExpandedChunk, expanded - e0);
    __syncthreads();  // xs is staged; the previous chunk's act is consumed
    expand_chunk(xs, layout.stride1, channels, hidden, layout.stride1, layout.grown1, 1, y0, x0, height, width, e0,
                 count, w_in, b_in);
    __syncthreads();
    for (int i = threadIdx.x; i < count * layout.pixels; i += kThreads) {
      const int e = i / layout.pixels, q = i - e * layout.pixels;
      const int ly = q / tile_size, lx = q - ly * tile_size;
      const float* taps = w_dw + (e0 + e) * 9;
      float value = __ldg(b_dw + e0 + e);
#pragma unroll
      for (int ky = 0; ky < 3; ++ky) {
#pragma unroll
        for (int kx = 0; kx < 3; ++kx) {
          value = fmaf(__ldg(taps + ky * 3 + kx), hidden[e * layout.stride1 + (ly + ky) * layout.grown1 + lx + kx], value);
        }
      }
      act[e * layout.stride0 + q] = fmaxf(value, 0.f);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < channels * layout.pixels; i += kThreads) {
      const int c = i / layout.pixels, q = i - c * layout.pixels;
      const float* w_row = w_out + static_cast<long long>(c) * expanded + e0;
      float sum = total[c * layout.stride0 + q];
      for (int e = 0; e < count; ++e) sum = fmaf(__ldg(w_row + e), act[e * layout.stride0 + q], sum);
      total[c * layout.stride0 + q] = sum;  // this thread's own accumulator in every chunk
    }
  }
  for (int i = threadIdx.x; i < channels * layout.pixels; i += kThreads) {
    const int c = i / layout.pixels, q = i - c * layout.pixels;
    const int y = y0 + q / tile_size, xx = x0 + q % tile_size;
    if (inside(y, xx, height, width)) {
      out[image + c * plane + static_cast<long long>(y) * width + xx] = from_float<T>(total[c * layout.stride0 + q]);
    }
  }
}

// (the second bound lets ptxas use the registers it needs: without it, it spills at 40)
template <class T>
__global__ void __launch_bounds__(kThreads, 2)
    backward_kernel(const T* __restrict__ grad, const T* __restrict__ x, const float* __restrict__ w_in,
                    const float* __restrict__ b_in, const float* __restrict__ w_dw, const float* __restrict__ b_dw,
                    const float* __restrict__ w_out, T* __restrict__ dx, float* __restrict__ d_w_in,
                    float* __restrict__ d_b_in, float* __restrict__ d_w_dw, float* __restrict__ d_b_dw,
                    float* __restrict__ d_w_out, float* __restrict__ d_b_out, int channels, int expanded, int height,
                    int width, int tile_size, int tiles_x, int tiles) {
  extern __shared__ float smem[];
  const MlpLayout layout(tile_size);
  const int s0 = layout.stride0, s1 = layout.stride1, s2 = layout.stride2, g1 = layout.grown1, g2 = layout.grown2;
  float* xs = smem;                                     // C x (tile + 2)
  float* gs = xs + channels * s2;                       // C x (tile + 1)
  float* d_total = gs + channels * s1;                  // C x tile
  float* hidden = d_total + channels * s0;              // chunk x (tile + 2)
  float* pre = hidden + kExpandedChunk * s2;            // chunk x (tile + 1)
  float* d_pre = pre + kExpandedChunk * s1;             // chunk x (tile + 1)
  float* d_hidden = d_pre + kExpandedChunk * s1;        // chunk x tile
  const long long n = blockIdx.x / tiles;
  const int t = static_cast<int>(blockIdx.x - n * tiles);
  const int y0 = (t / tiles_x) * tile_size, x0 = (t % tiles_x) * tile_size;
  const int tile = tile_size, pixels = layout.pixels;
  const long long plane = static_cast<long long>(height) * width;
  const long long image = n * channels * plane;

  stage_channels(x + image, channels, xs, s2, g2, 2, y0, x0, height, width);
  stage_channels(grad + image, channels, gs, s1, g1, 1, y0, x0, height, width);
  for (int i = threadIdx.x; i < channels * pixels; i += kThreads) {
    const int c = i / pixels;
    d_total[c * s0 + i - c * pixels] = 0.f;
  }
  __syncthreads();
  // db_out: the tile's sum of grad (zero outside the image)
  for (int c = threadIdx.x; c < channels; c += kThreads) {
    float sum = 0.f;
    for (int q = 0; q < pixels; ++q) sum += gs[c * s1 + (q / tile + 1) * g1 + q % tile + 1];
    atomicAdd(d_b_out + c, sum);
  }
  for (int e0 = 0; e0 < expanded; e0 += kExpandedChunk) {
    const int count = min(kExpandedChunk, expanded - e0);
    expand_chunk(xs, s2, channels, hidden, s2, g2, 2, y0, x0, height, width, e0, count, w_in, b_in);
    __syncthreads();
    // pre over the tile + 1 (only read where inside the image)
    for (int i = threadIdx.x; i < count * g1 * g1; i += kThreads) {
      const int e = i / (g1 * g1), r = i - e * g1 * g1;
      const int ly = r / g1, lx = r - ly * g1;
      const float* taps = w_dw + (e0 + e) * 9;
      float value = __ldg(b_dw + e0 + e);
#pragma unroll
      for (int ky = 0; ky < 3; ++ky) {
#pragma unroll
        for (int kx = 0; kx < 3; ++kx) value = fmaf(__ldg(taps + ky * 3 + kx), hidden[e * s2 + (ly + ky) * g2 + lx + kx], value);
      }
      pre[e * s1 + r] = value;
    }
    __syncthreads();
    // dpre = (W_out^T grad) [pre > 0] over the tile + 1, zero outside the image
    for (int i = threadIdx.x; i < count * g1 * g1; i += kThreads) {
      const int e = i / (g1 * g1), r = i - e * g1 * g1;
      const int ly = r / g1, lx = r - ly * g1;
      float value = 0.f;
      if (inside(y0 - 1 + ly, x0 - 1 + lx, height, width) && pre[e * s1 + r] > 0.f) {
        for (int c = 0; c < channels; ++c) {
          value = fmaf(__ldg(w_out + static_cast<long long>(c) * expanded + e0 + e), gs[c * s1 + r], value);
        }
      }
      d_pre[e * s1 + r] = value;
    }
    __syncthreads();
    // dW_out[c][e] = sum_q grad[c][q] ReLU(pre[e][q]) over the tile (grad is zero outside the image)
    for (int i = threadIdx.x; i < channels * count; i += kThreads) {
      const int c = i / count, e = i - c * count;
      float sum = 0.f;
      for (int q = 0; q < pixels; ++q) {
        const int r = (q / tile + 1) * g1 + q % tile + 1;
        sum = fmaf(gs[c * s1 + r], fmaxf(pre[e * s1 + r], 0.f), sum);
      }
      atomicAdd(d_w_out + static_cast<long long>(c) * expanded + e0 + e, sum);
    }
    // dw_dw[e][k] = sum_q dpre[e][q] h[e][q + k - 1] and db_dw[e] = sum_q dpre[e][q] over the tile: one
    // thread per (channel, tap or bias)
    {
      constexpr int kSums = 10;
      static_assert(kExpandedChunk * kSums <= kThreads, "one thread per (channel, tap)");
      const int e = threadIdx.x / kSums, tap = threadIdx.x - e * kSums;
      float sum = 0.f;
      if (e < count) {
        const int ky = tap / 3, kx = tap - ky * 3;
        for (int q = 0; q < pixels; ++q) {
          const int ly = q / tile, lx = q - ly * tile;
          const float d = d_pre[e * s1 + (ly + 1) * g1 + lx + 1];
          sum = fmaf(d, tap < 9 ? hidden[e * s2 + (ly + ky + 1) * g2 + lx + kx + 1] : 1.f, sum);
        }
      }
      if (e < count) atomicAdd(tap < 9 ? d_w_dw + (e0 + e) * 9 + tap : d_b_dw + e0 + e, sum);
    }
    // dh[e] on the tile: the correlation of dpre with the mirrored 3x3 taps, zero outside the image
    for (int i = threadIdx.x; i < count * pixels; i += kThreads) {
      const int e = i / pixels, q = i - e * pixels;
      const int ly = q / tile, lx = q - ly * tile;
      float value = 0.f;
      if (inside(y0 + ly, x0 + lx, height, width)) {
        const float* taps = w_dw + (e0 + e) * 9;
#pragma unroll
        for (int ky = 0; ky < 3; ++ky) {
#pragma unroll
          for (int kx = 0; kx < 3; ++kx) value = fmaf(__ldg(taps + 8 - (ky * 3 + kx)), d_pre[e * s1 + (ly + ky) * g1 + lx + kx], value);
        }
      }
      d_hidden[e * s0 + q] = value;
    }
    __syncthreads();
    // dW_in[e][c] = sum_q dh[e][q] x[c][q] and db_in[e] = sum_q dh[e][q] (the last column)
    for (int i = threadIdx.x; i < count * (channels + 1); i += kThreads) {
      const int e = i / (channels + 1), c = i - e * (channels + 1);
      float sum = 0.f;
      if (c < channels) {
        for (int q = 0; q < pixels; ++q) sum = fmaf(d_hidden[e * s0 + q], xs[c * s2 + (q / tile + 2) * g2 + q % tile + 2], sum);
        atomicAdd(d_w_in + static_cast<long long>(e0 + e) * channels + c, sum);
      } else {
        for (int q = 0; q < pixels; ++q) sum += d_hidden[e * s0 + q];
        atomicAdd(d_b_in + e0 + e, sum);
      }
    }
    // dx[c] += sum_e w_in[e0 + e][c] dh[e]: each (c, q) accumulator stays with one thread
    for (int i = threadIdx.x; i < channels * pixels; i += kThreads) {
      const int c = i / pixels, q = i - c * pixels;
      float sum = d_total[c * s0 + q];
      for (int e = 0; e < count; ++e) {
        sum = fmaf(__ldg(w_in + static_cast<long long>(e0 + e) * channels + c), d_hidden[e * s0 + q], sum);
      }
      d_total[c * s0 + q] = sum;
    }
    __syncthreads();  // the next chunk overwrites hidden, pre, d_pre and d_hidden
  }
  for (int i = threadIdx.x; i < channels * pixels; i += kThreads) {
    const int c = i / pixels, q = i - c * pixels;
    const int y = y0 + q / tile, xx = x0 + q % tile;
    if (inside(y, xx, height, width)) {
      dx[image + c * plane + static_cast<long long>(y) * width + xx] = from_float<T>(d_total[c * s0 + q]);
    }
  }
}

long long wanted_blocks(const DeviceLimits& limits) { return 2LL * limits.multiprocessors; }

}  // namespace

cudaError_t launch_conv_mlp_forward(ActivationType type, const void* x, const float* w_in, const float* b_in,
                                    const float* w_dw, const float* b_dw, const float* w_out, const float* b_out,
                                    void* out, long long images, int channels, int expanded, int height, int width,
                                    DeviceLimits limits, cudaStream_t stream) {
  if (channels > kConvMlpMaxChannels) return cudaErrorInvalidValue;
  const TileGrid grid = choose_tile(images, height, width, wanted_blocks(limits), limits.shared_bytes_per_block,
                                    [&](int size) { return MlpLayout(size).forward_floats(channels) * sizeof(float); });
  if (grid.size == 0 || images * grid.tiles > kMaxBlocks) return cudaErrorInvalidValue;
  const size_t bytes = MlpLayout(grid.size).forward_floats(channels) * sizeof(float);
  return dispatch_activation(type, [&](auto zero) {
    using T = decltype(zero);
    auto kernel = forward_kernel<T>;
    cudaError_t err = allow_shared_bytes(kernel, bytes);
    if (err != cudaSuccess) return err;
    kernel<<<static_cast<unsigned>(images * grid.tiles), kThreads, bytes, stream>>>(
        static_cast<const T*>(x), w_in, b_in, w_dw, b_dw, w_out, b_out, static_cast<T*>(out), channels, expanded,
        height, width, grid.size, grid.tiles_x, grid.tiles);
    return cudaGetLastError();
  });
}

cudaError_t launch_conv_mlp_backward(ActivationType type, const void* grad, const void* x, const float* w_in,
                                     const float* b_in, const float* w_dw, const float* b_dw, const float* w_out,
                                     void* dx, float* d_w_in, float* d_b_in, float* d_w_dw, float* d_b_dw,
                                     float* d_w_out, float* d_b_out, long long images, int channels, int expanded,
                                     int height, int width, DeviceLimits limits, cudaStream_t stream) {
  if (channels > kConvMlpMaxChannels) return cudaErrorInvalidValue;
  const TileGrid grid = choose_tile(images, height, width, wanted_blocks(limits), limits.shared_bytes_per_block,
                                    [&](int size) { return MlpLayout(size).backward_floats(channels) * sizeof(float); });
  if (grid.size == 0 || images * grid.tiles > kMaxBlocks) return cudaErrorInvalidValue;
  const size_t bytes = MlpLayout(grid.size).backward_floats(channels) * sizeof(float);
  return dispatch_activation(type, [&](auto zero) {
    using T = decltype(zero);
    auto kernel = backward_kernel<T>;
    cudaError_t err = allow_shared_bytes(kernel, bytes);
    if (err != cudaSuccess) return err;
    kernel<<<static_cast<unsigned>(images * grid.tiles), kThreads, bytes, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(x), w_in, b_in, w_dw, b_dw, w_out, static_cast<T*>(dx),
        d_w_in, d_b_in, d_w_dw, d_b_dw, d_w_out, d_b_out, channels, expanded, height, width, grid.size, grid.tiles_x,
        grid.tiles);
    return cudaGetLastError();
  });
}

}  // namespace avfused::cuda
