// video_squeeze_stats on CUDA (launchers declared in video_squeeze_stats.h; no torch headers).
// Forward: one block per channel plane of one image computes z twice (a 3x3 read per pixel), first for
// the plane's mean, then for the deviations from it; a second kernel combines the planes in double per
// channel (Chan's formula, as the CPU half). Backward: one thread per pixel recomputes z at its 3x3
// neighbours from a 5x5 window of the plane held in registers, forms dz there and applies the transposed
// conv; each warp sums its pixels' weight-gradient terms and adds them to the float32 gradients.
#include <cuda_runtime.h>

#include "../common/cuda_depthwise3x3.h"
#include "video_squeeze_stats.h"

namespace avfused::cuda {
namespace {

constexpr int kThreads = 256;

// The sum of v over the block (every thread gets it); `scratch` holds kThreads / 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // scratch may still be read from the last call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) total += scratch[w];
  return total;  // the same in every thread
}

template <class T>
__global__ void __launch_bounds__(kThreads) stats_planes_kernel(const T* __restrict__ video, const float* __restrict__ dw,
                                                                const float* __restrict__ dw_bias, double* plane_stats,
                                                                int channels, int height, int width) {
  __shared__ float scratch[kThreads / 32];
  const long long item = blockIdx.x;
  const int c = static_cast<int>(item % channels), pixels = height * width;
  const T* plane = video + item * pixels;
  float w[9];
#pragma unroll
  for (int k = 0; k < 9; ++k) w[k] = __ldg(dw + c * 9 + k);
  const float b = __ldg(dw_bias + c);
  float sum = 0.f;
  for (int i = threadIdx.x; i < pixels; i += kThreads) sum += conv3x3_read(plane, height, width, i / width, i % width, w, b);
  const float shift = block_sum(sum, scratch) / pixels;
  float offset = 0.f, squares = 0.f;
  for (int i = threadIdx.x; i < pixels; i += kThreads) {
    const float d = conv3x3_read(plane, height, width, i / width, i % width, w, b) - shift;
    offset += d;
    squares += d * d;
  }
  offset = block_sum(offset, scratch);
  squares = block_sum(squares, scratch);
  if (threadIdx.x == 0) {  // the shift is the plane mean rounded: the deviations' own sum corrects it
    plane_stats[2 * item] = shift + static_cast<double>(offset) / pixels;
    plane_stats[2 * item + 1] = static_cast<double>(squares) - static_cast<double>(offset) * offset / pixels;
  }
}

__global__ void stats_combine_kernel(const double* __restrict__ plane_stats, float* mean, float* var, long long images,
                                     int channels, int pixels) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  double total = 0.0;
  for (long long n = 0; n < images; ++n) total += plane_stats[2 * (n * channels + c)];
  const double channel_mean = total / images;
  double squares = 0.0;
  for (long long n = 0; n < images; ++n) {
    const double spread = plane_stats[2 * (n * channels + c)] - channel_mean;
    squares += plane_stats[2 * (n * channels + c) + 1] + pixels * spread * spread;
  }
  mean[c] = static_cast<float>(channel_mean);
  var[c] = static_cast<float>(fmax(squares, 0.0) / (static_cast<double>(pixels) * images));
}

template <class T>
__global__ void __launch_bounds__(kThreads) stats_backward_kernel(
    const float* __restrict__ grad_mean, const float* __restrict__ grad_var, const T* __restrict__ video,
    const float* __restrict__ dw, const float* __restrict__ dw_bias, const float* __restrict__ mean, T* grad_video,
    float* d_dw, float* d_dw_bias, int channels, int height, int width, float inv_count) {
  const long long item = blockIdx.x;  // the plane; blockIdx.y: its chunk of kThreads pixels
  const int c = static_cast<int>(item % channels), pixels = height * width;
  const int i = blockIdx.y * kThreads + threadIdx.x;
  const bool valid = i < pixels;
  const int y = valid ? i / width : 0, x = valid ? i % width : 0;
  const T* plane = video + item * pixels;
  float w[9];
#pragma unroll
  for (int k = 0; k < 9; ++k) w[k] = __ldg(dw + c * 9 + k);
  const float b = __ldg(dw_bias + c), m = __ldg(mean + c);
  const float grad_scale = __ldg(grad_mean + c) * inv_count, dev_scale = 2.f * __ldg(grad_var + c) * inv_count;
  float xs[5][5];
  load_window5(plane, height, width, y, x, xs);
  float dz[3][3];  // dz at (y + dy - 1, x + dx - 1): zero outside the image
#pragma unroll
  for (int dy = 0; dy < 3; ++dy) {
#pragma unroll
    for (int dx = 0; dx < 3; ++dx) {
      const int yy = y + dy - 1, xx = x + dx - 1;
      const bool inside = yy >= 0 && yy < height && xx >= 0 && xx < width;
      dz[dy][dx] = inside ? grad_scale + dev_scale * (conv3x3_at(w, b, xs, dy, dx) - m) : 0.f;
    }
  }
  if (valid) grad_video[item * pixels + i] = from_float<T>(transposed3x3(w, dz));
  const float own = valid ? dz[1][1] : 0.f;
  const float bias_sum = warp_sum(own);
  if ((threadIdx.x & 31) == 0) atomicAdd(d_dw_bias + c, bias_sum);
  add_tap_gradients(own, xs, d_dw + c * 9);
}

}  // namespace

cudaError_t launch_video_squeeze_stats_forward(ActivationType type, const void* video, const float* dw,
                                               const float* dw_bias, double* plane_stats, float* mean, float* var,
                                               long long images, int channels, int height, int width,
                                               cudaStream_t stream) {
  const long long planes = images * channels;
  if (planes > 0x7fffffffLL) return cudaErrorInvalidValue;
  return dispatch_activation(type, [&](auto tag) {
    using T = decltype(tag);
    stats_planes_kernel<T><<<static_cast<unsigned>(planes), kThreads, 0, stream>>>(
        static_cast<const T*>(video), dw, dw_bias, plane_stats, channels, height, width);
    stats_combine_kernel<<<(channels + 127) / 128, 128, 0, stream>>>(plane_stats, mean, var, images, channels,
                                                                      height * width);
    return cudaGetLastError();
  });
}

cudaError_t launch_video_squeeze_stats_backward(ActivationType type, const float* grad_mean, const float* grad_var,
                                                const void* video, const float* dw, const float* dw_bias,
                                                const float* mean, void* grad_video, float* d_dw, float* d_dw_bias,
                                                long long images, int channels, int height, int width,
                                                cudaStream_t stream) {
  const long long planes = images * channels;
  const long long chunks = (static_cast<long long>(height) * width + kThreads - 1) / kThreads;
  if (planes > 0x7fffffffLL || chunks > 65535) return cudaErrorInvalidValue;
  const float inv_count = static_cast<float>(1.0 / (static_cast<double>(images) * height * width));
  return dispatch_activation(type, [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(static_cast<unsigned>(planes), static_cast<unsigned>(chunks));
    stats_backward_kernel<T><<<grid, kThreads, 0, stream>>>(grad_mean, grad_var, static_cast<const T*>(video), dw,
                                                            dw_bias, mean, static_cast<T*>(grad_video), d_dw,
                                                            d_dw_bias, channels, height, width, inv_count);
    return cudaGetLastError();
  });
}

}  // namespace avfused::cuda
