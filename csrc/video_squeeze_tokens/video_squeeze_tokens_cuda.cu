// video_squeeze_tokens on CUDA (launchers declared in video_squeeze_tokens.h; no torch headers), one thread
// per map pixel. Forward: the pixel's map value sums weight[c] ReLU(z_c) over the channels (a 3x3 read
// each) and goes straight to its token slot. Backward: per channel, z at the pixel's 3x3 neighbours is
// recomputed from a 5x5 window of the channel plane held in registers; dz there (the map gradient read
// back from the tokens) gives the video gradient through the transposed conv; each warp sums its pixels'
// weight-gradient terms and adds them to the float32 gradients. No (N, C, H, W) hidden layer in memory.
#include <cuda_runtime.h>

#include "../common/cuda_depthwise3x3.h"
#include "video_squeeze_tokens.h"

namespace avfused::cuda {
namespace {

constexpr int kThreads = 256;

struct TokenLayout {
  int height, width, window, rows, cols;
  // offset in the (N / T, T R Q, window^2) tokens of image n's pixel (y, x)
  __device__ __forceinline__ long long offset(long long n, int y, int x) const {
    const long long token = n * rows * cols + (y / window) * cols + x / window;
    return token * window * window + (y % window) * window + x % window;
  }
};

template <class T>
__global__ void __launch_bounds__(kThreads) squeeze_forward_kernel(const T* __restrict__ video, const float* __restrict__ dw,
                                                                   const float* __restrict__ dw_bias,
                                                                   const float* __restrict__ weight, const float* __restrict__ bias, T* tokens,
                                                                   long long images, int channels, TokenLayout layout) {
  const int height = layout.height, width = layout.width, pixels = height * width;
  const long long index = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= images * pixels) return;
  const long long n = index / pixels;
  const int p = static_cast<int>(index % pixels), y = p / width, x = p % width;
  float map = __ldg(bias);
  for (int c = 0; c < channels; ++c) {
    const float z = conv3x3_read(video + (n * channels + c) * pixels, height, width, y, x, dw + c * 9,
                                 __ldg(dw_bias + c));
    map += __ldg(weight + c) * fmaxf(z, 0.f);
  }
  tokens[layout.offset(n, y, x)] = from_float<T>(map);
}

template <class T>
__global__ void __launch_bounds__(kThreads) squeeze_backward_kernel(
    const T* __restrict__ grad_tokens, const T* __restrict__ video, const float* __restrict__ dw,
    const float* __restrict__ dw_bias, const float* __restrict__ weight, T* grad_video, float* d_dw, float* d_dw_bias,
    float* d_weight, float* d_bias, long long images, int channels, TokenLayout layout) {
  const int height = layout.height, width = layout.width, pixels = height * width;
  const long long index = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  const bool valid = index < images * pixels;
  const long long n = valid ? index / pixels : 0;
  const int p = valid ? static_cast<int>(index % pixels) : 0, y = p / width, x = p % width;
  float g[3][3];  // the map gradient at (y + dy - 1, x + dx - 1), zero outside the map
#pragma unroll
  for (int dy = 0; dy < 3; ++dy) {
#pragma unroll
    for (int dx = 0; dx < 3; ++dx) {
      const int yy = y + dy - 1, xx = x + dx - 1;
      const bool inside = valid && yy >= 0 && yy < height && xx >= 0 && xx < width;
      g[dy][dx] = inside ? load_float(grad_tokens + layout.offset(n, yy, xx)) : 0.f;
    }
  }
  const float bias_sum = warp_sum(g[1][1]);
  if ((threadIdx.x & 31) == 0) atomicAdd(d_bias, bias_sum);
  for (int c = 0; c < channels; ++c) {
    const T* plane = video + (n * channels + c) * pixels;
    float w[9];
#pragma unroll
    for (int k = 0; k < 9; ++k) w[k] = __ldg(dw + c * 9 + k);
    const float b = __ldg(dw_bias + c), to_one = __ldg(weight + c);
    float xs[5][5];
    load_window5(plane, height, width, y, x, xs);
    float dz[3][3];  // dz at (y + dy - 1, x + dx - 1); g is zero outside the map
#pragma unroll
    for (int dy = 0; dy < 3; ++dy) {
#pragma unroll
      for (int dx = 0; dx < 3; ++dx) dz[dy][dx] = conv3x3_at(w, b, xs, dy, dx) > 0.f ? to_one * g[dy][dx] : 0.f;
    }
    if (valid) grad_video[(n * channels + c) * pixels + p] = from_float<T>(transposed3x3(w, dz));
    const float own_h = fmaxf(conv3x3_at(w, b, xs, 1, 1), 0.f);
    const float weight_sum = warp_sum(own_h * g[1][1]), dz_sum = warp_sum(dz[1][1]);
    if ((threadIdx.x & 31) == 0) {
      atomicAdd(d_weight + c, weight_sum);
      atomicAdd(d_dw_bias + c, dz_sum);
    }
    add_tap_gradients(dz[1][1], xs, d_dw + c * 9);
  }
}

// The map's layout in the tokens, and blocks of kThreads covering every pixel (0: too many for one grid).
TokenLayout token_layout(int height, int width, int window) {
  return {height, width, window, (height + window - 1) / window, (width + window - 1) / window};
}
unsigned pixel_blocks(long long images, int height, int width) {
  const long long blocks = (images * height * width + kThreads - 1) / kThreads;
  return blocks > 0x7fffffffLL ? 0u : static_cast<unsigned>(blocks);
}

}  // namespace

cudaError_t launch_video_squeeze_tokens_forward(ActivationType type, const void* video, const float* dw,
                                                const float* dw_bias, const float* weight, const float* bias, void* tokens,
                                                long long images, int channels, int height, int width, int window,
                                                cudaStream_t stream) {
  const TokenLayout layout = token_layout(height, width, window);
  const unsigned blocks = pixel_blocks(images, height, width);
  if (blocks == 0) return cudaErrorInvalidValue;
  return dispatch_activation(type, [&](auto tag) {
    using T = decltype(tag);
    squeeze_forward_kernel<T><<<blocks, kThreads, 0, stream>>>(
        static_cast<const T*>(video), dw, dw_bias, weight, bias, static_cast<T*>(tokens), images, channels, layout);
    return cudaGetLastError();
  });
}

cudaError_t launch_video_squeeze_tokens_backward(ActivationType type, const void* grad_tokens, const void* video,
                                                 const float* dw, const float* dw_bias, const float* weight,
                                                 void* grad_video, float* d_dw, float* d_dw_bias, float* d_weight,
                                                 float* d_bias, long long images, int channels, int height, int width,
                                                 int window, cudaStream_t stream) {
  const TokenLayout layout = token_layout(height, width, window);
  const unsigned blocks = pixel_blocks(images, height, width);
  if (blocks == 0) return cudaErrorInvalidValue;
  return dispatch_activation(type, [&](auto tag) {
    using T = decltype(tag);
    squeeze_backward_kernel<T><<<blocks, kThreads, 0, stream>>>(
        static_cast<const T*>(grad_tokens), static_cast<const T*>(video), dw, dw_bias, weight,
        static_cast<T*>(grad_video), d_dw, d_dw_bias, d_weight, d_bias, images, channels, layout);
    return cudaGetLastError();
  });
}

}  // namespace avfused::cuda
