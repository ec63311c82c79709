// video_expand_residual on CUDA (no torch headers: nvcc stays fast). The map of image n is never written:
// every kernel reads its 3x3 neighbourhood straight from the tokens (L1/L2-cached, ten times smaller than
// the video).
// Forward: one thread per output element, out = scale video + bias + sum_taps weight map.
// Backward: grad_video = scale grad and the per-channel sums (bias, scale, 3x3 weight) in one pass over grad,
// one block per channel and slice of images, reduced in the block in float32 and added with atomics; then one
// thread per token value for grad_tokens = sum_c conv3x3^T(grad_c) (zero over the padding).
#include "video_expand_residual.h"

namespace avfused::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kSums = 11;  // per channel: 9 weight taps, bias, scale

// The map value of image n at (y, x) from the tokens (0 outside the image).
template <class T>
__device__ __forceinline__ float map_value(const T* tokens, long long n, int y, int x, int height, int width,
                                           int window, int rows, int cols) {
  if (y < 0 || y >= height || x < 0 || x >= width) return 0.f;
  const long long token = n * rows * cols + static_cast<long long>(y / window) * cols + x / window;
  return load_float(tokens + token * window * window + (y % window) * window + x % window);
}

template <class T>
__global__ void __launch_bounds__(kThreads) forward_kernel(const T* __restrict__ video, const T* __restrict__ tokens,
                                                           const float* __restrict__ weight,
                                                           const float* __restrict__ bias,
                                                           const float* __restrict__ scale, T* __restrict__ out,
                                                           long long total, int channels, int height, int width,
                                                           int window, int rows, int cols) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int x = static_cast<int>(i % width), y = static_cast<int>((i / width) % height);
    const int c = static_cast<int>((i / (static_cast<long long>(width) * height)) % channels);
    const long long n = i / (static_cast<long long>(width) * height * channels);
    float acc = bias[c] + scale[c] * load_float(video + i);
    const float* w = weight + c * 9;
#pragma unroll
    for (int ky = 0; ky < 3; ++ky) {
#pragma unroll
      for (int kx = 0; kx < 3; ++kx) {
        acc += w[ky * 3 + kx] * map_value(tokens, n, y + ky - 1, x + kx - 1, height, width, window, rows, cols);
      }
    }
    out[i] = from_float<T>(acc);
  }
}

// grid (slices, C): block (s, c) covers images s, s + slices, ... of channel c.
template <class T>
__global__ void __launch_bounds__(kThreads) sums_kernel(const T* __restrict__ grad, const T* __restrict__ video,
                                                        const T* __restrict__ tokens, const float* __restrict__ scale,
                                                        T* __restrict__ grad_video, float* __restrict__ grad_weight,
                                                        float* __restrict__ grad_bias, float* __restrict__ grad_scale,
                                                        long long images, int channels, int height, int width,
                                                        int window, int rows, int cols) {
  __shared__ float partial[kThreads / 32][kSums];
  const int c = blockIdx.y, plane = height * width;
  const float s = scale[c];
  float sums[kSums];
#pragma unroll
  for (int k = 0; k < kSums; ++k) sums[k] = 0.f;
  for (long long n = blockIdx.x; n < images; n += gridDim.x) {
    const long long base = (n * channels + c) * plane;
    for (int p = threadIdx.x; p < plane; p += blockDim.x) {
      const int y = p / width, x = p % width;
      const float g = load_float(grad + base + p);
      grad_video[base + p] = from_float<T>(s * g);
      sums[9] += g;
      sums[10] += g * load_float(video + base + p);
#pragma unroll
      for (int ky = 0; ky < 3; ++ky) {
#pragma unroll
        for (int kx = 0; kx < 3; ++kx) {
          sums[ky * 3 + kx] += g * map_value(tokens, n, y + ky - 1, x + kx - 1, height, width, window, rows, cols);
        }
      }
    }
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < kSums; ++k) {
    float v = sums[k];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) partial[warp][k] = v;
  }
  __syncthreads();
  if (threadIdx.x < kSums) {
    float total = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) total += partial[w][threadIdx.x];
    float* target = threadIdx.x < 9 ? grad_weight + c * 9 + threadIdx.x : grad_bias + c;
    atomicAdd(threadIdx.x == 10 ? grad_scale + c : target, total);
  }
}

// One thread per token value: grad_tokens = sum_c sum_taps weight[c][ky][kx] grad[c][y + 1 - ky][x + 1 - kx]
// at the value's pixel (y, x), zero where the value lies over the padding.
template <class T>
__global__ void __launch_bounds__(kThreads) tokens_kernel(const T* __restrict__ grad, const float* __restrict__ weight,
                                                          T* __restrict__ grad_tokens, long long total, int channels,
                                                          int height, int width, int window, int rows, int cols) {
  const int values = window * window;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int value = static_cast<int>(i % values);
    const long long token = i / values;
    const int col = static_cast<int>(token % cols), row = static_cast<int>((token / cols) % rows);
    const long long n = token / (static_cast<long long>(rows) * cols);
    const int y = row * window + value / window, x = col * window + value % window;
    float acc = 0.f;
    if (y < height && x < width) {
      const long long plane = static_cast<long long>(height) * width;
      for (int c = 0; c < channels; ++c) {
        const T* g = grad + (n * channels + c) * plane;
        const float* w = weight + c * 9;
#pragma unroll
        for (int ky = 0; ky < 3; ++ky) {
          const int gy = y + 1 - ky;
          if (gy < 0 || gy >= height) continue;
#pragma unroll
          for (int kx = 0; kx < 3; ++kx) {
            const int gx = x + 1 - kx;
            if (gx >= 0 && gx < width) acc += w[ky * 3 + kx] * load_float(g + gy * width + gx);
          }
        }
      }
    }
    grad_tokens[i] = from_float<T>(acc);
  }
}

unsigned grid_for(long long total, DeviceLimits limits) {
  const long long blocks = (total + kThreads - 1) / kThreads, most = 32LL * limits.multiprocessors;
  return static_cast<unsigned>(blocks < most ? (blocks > 0 ? blocks : 1) : most);
}

}  // namespace

cudaError_t launch_video_expand_residual_forward(ActivationType type, const void* video, const void* tokens,
                                                 const float* weight, const float* bias, const float* scale, void* out,
                                                 long long images, int frames, int channels, int height, int width,
                                                 int window, DeviceLimits limits, cudaStream_t stream) {
  (void)frames;  // image n's tokens sit at n R Q whatever its clip
  const int rows = (height + window - 1) / window, cols = (width + window - 1) / window;
  const long long total = images * channels * static_cast<long long>(height) * width;
  return dispatch_activation(type, [&](auto zero) {
    using T = decltype(zero);
    forward_kernel<T><<<grid_for(total, limits), kThreads, 0, stream>>>(
        static_cast<const T*>(video), static_cast<const T*>(tokens), weight, bias, scale, static_cast<T*>(out), total,
        channels, height, width, window, rows, cols);
    return cudaGetLastError();
  });
}

cudaError_t launch_video_expand_residual_backward(ActivationType type, const void* grad, const void* video,
                                                  const void* tokens, const float* weight, const float* scale,
                                                  void* grad_video, void* grad_tokens, float* grad_weight,
                                                  float* grad_bias, float* grad_scale, long long images, int frames,
                                                  int channels, int height, int width, int window,
                                                  DeviceLimits limits, cudaStream_t stream) {
  (void)frames;
  const int rows = (height + window - 1) / window, cols = (width + window - 1) / window;
  // enough blocks of (slice, channel) to fill the device, each slice at least one image
  const long long wanted = (4LL * limits.multiprocessors + channels - 1) / channels;
  const unsigned slices = static_cast<unsigned>(wanted < images ? wanted : images);
  const long long token_values = images * rows * cols * static_cast<long long>(window) * window;
  return dispatch_activation(type, [&](auto zero) {
    using T = decltype(zero);
    sums_kernel<T><<<dim3(slices, channels), kThreads, 0, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(video), static_cast<const T*>(tokens), scale,
        static_cast<T*>(grad_video), grad_weight, grad_bias, grad_scale, images, channels, height, width, window, rows,
        cols);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    tokens_kernel<T><<<grid_for(token_values, limits), kThreads, 0, stream>>>(
        static_cast<const T*>(grad), weight, static_cast<T*>(grad_tokens), token_values, channels, height, width,
        window, rows, cols);
    return cudaGetLastError();
  });
}

}  // namespace avfused::cuda
