// Fused audio front end + stem on the GPU: sinc band-pass conv -> |.| -> log -> stem Conv1d(k7, s4).
//
// One block per (tile of 63 stem outputs, clip). The block stages the waveform window it needs in
// shared memory once, then walks the filters: each of its 256 threads computes one band position
// (4 * 63 + 3 = 255 positions cover the stem's receptive field), takes the log, and the block adds the
// stem taps into per-block accumulators. The (B, F, S) band energies never reach global memory.
// Per-tile sums of the energies give the band means; their (linear) stem is subtracted on the host
// side (audio_frontend_stem_cuda_host.cpp).
#include <cuda_runtime.h>

#include "audio_frontend_stem.h"

namespace avfused::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kOutTile = kCudaFrontendOutTile;
constexpr int kPositions = 4 * kOutTile + 3;
constexpr int kStemTaps = static_cast<int>(kStemKernel);
constexpr int kDefaultSharedLimit = 48 * 1024;
static_assert(kPositions <= kThreads, "one band position per thread");

size_t frontend_shared_floats(int taps, int channels) {
  return static_cast<size_t>(kPositions + taps - 1)   // waveform window
         + taps                                        // current filter
         + channels * kStemTaps                      // its stem taps
         + kPositions + 1                              // log energies of the current filter
         + static_cast<size_t>(channels) * kOutTile    // stem accumulators
         + kThreads / 32;                              // warp partial sums
}

__global__ void __launch_bounds__(kThreads)
    audio_frontend_stem_forward_kernel(const float* __restrict__ x, const float* __restrict__ filters,
                                 const float* __restrict__ weight, float* __restrict__ acc,
                                 float* __restrict__ tile_sums, int samples, int filter_count, int taps, int channels,
                                 int outputs, int tiles, float log_eps) {
  extern __shared__ float smem[];
  const int window_len = kPositions + taps - 1;
  float* window = smem;
  float* h = window + window_len;
  float* wf = h + taps;
  float* energy = wf + channels * kStemTaps;
  float* out_tile = energy + kPositions + 1;
  float* warp_sums = out_tile + channels * kOutTile;

  const int tid = threadIdx.x;
  const int tile = blockIdx.x;
  const long long b = blockIdx.y;
  const int o0 = tile * kOutTile;
  const int out_count = min(kOutTile, outputs - o0);
  const long long t0 = 4LL * o0 - 3;  // band position of local index 0
  const int half = taps / 2;
  const int positions = 4 * out_count + 3;
  // local indices whose positions this tile owns for the band means: [3, own_end)
  const long long own_end = min(3LL + 4LL * out_count, static_cast<long long>(samples) - t0);
  const float* xb = x + b * samples;

  for (int i = tid; i < window_len; i += kThreads) {  // zero padding of the sinc conv
    const long long src = t0 - half + i;
    window[i] = (src >= 0 && src < samples) ? xb[src] : 0.f;
  }
  for (int i = tid; i < channels * kOutTile; i += kThreads) out_tile[i] = 0.f;

  for (int f = 0; f < filter_count; ++f) {
    __syncthreads();  // the previous filter's readers of h, wf and energy are done
    for (int k = tid; k < taps; k += kThreads) h[k] = filters[static_cast<long long>(f) * taps + k];
    for (int i = tid; i < channels * kStemTaps; i += kThreads) {
      const int c = i / kStemTaps, j = i - c * kStemTaps;
      wf[i] = weight[(static_cast<long long>(c) * filter_count + f) * kStemTaps + j];
    }
    __syncthreads();

    float own = 0.f;
    if (tid < kPositions) {
      const long long t = t0 + tid;
      float value = 0.f;  // the stem pads the energies with zeros
      if (tid < positions && t >= 0 && t < samples) {
        float y = 0.f;
        for (int k = 0; k < taps; ++k) y = fmaf(h[k], window[tid + k], y);
        value = logf(fabsf(y) + log_eps);
        if (tid >= 3 && tid < own_end) own = value;
      }
      energy[tid] = value;
    }
    for (int offset = 16; offset > 0; offset >>= 1) own += __shfl_down_sync(0xffffffffu, own, offset);
    if ((tid & 31) == 0) warp_sums[tid >> 5] = own;
    __syncthreads();  // energies and warp sums are complete

    if (tid == 0) {
      float sum = 0.f;
      for (int w = 0; w < kThreads / 32; ++w) sum += warp_sums[w];
      tile_sums[(b * tiles + tile) * filter_count + f] = sum;
    }
    for (int idx = tid; idx < channels * kOutTile; idx += kThreads) {  // each accumulator has one owner
      const int c = idx / kOutTile, o = idx - c * kOutTile;
      if (o < out_count) {
        const float* w = wf + c * kStemTaps;
        const float* e = energy + 4 * o;  // stem tap j of output o reads local index 4 o + j
        float s = 0.f;
#pragma unroll
        for (int j = 0; j < kStemTaps; ++j) s = fmaf(w[j], e[j], s);
        out_tile[idx] += s;
      }
    }
  }
  __syncthreads();
  for (int idx = tid; idx < channels * kOutTile; idx += kThreads) {
    const int c = idx / kOutTile, o = idx - c * kOutTile;
    if (o < out_count) acc[(b * channels + c) * outputs + o0 + o] = out_tile[idx];
  }
}

__global__ void audio_frontend_stem_elementwise_backward_kernel(float* __restrict__ y, float* __restrict__ grad,
                                                     const float* __restrict__ grad_mean,
                                                     const float* __restrict__ band_mean, long long total,
                                                     long long samples, float log_eps) {
  const long long stride = static_cast<long long>(blockDim.x) * gridDim.x;
  for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const long long row = idx / samples;
    const float v = y[idx];
    const float magnitude = fabsf(v) + log_eps;
    const float sign = v > 0.f ? 1.f : (v < 0.f ? -1.f : 0.f);
    grad[idx] = (grad[idx] - grad_mean[row]) * sign / magnitude;
    y[idx] = logf(magnitude) - band_mean[row];
  }
}

}  // namespace

cudaError_t launch_audio_frontend_stem_forward(const float* x, const float* filters, const float* weight, float* acc,
                                               float* tile_sums, int batch, int samples, int filter_count, int taps,
                                               int channels, int outputs, int tiles, float log_eps,
                                               cudaStream_t stream) {
  const size_t shared_bytes = frontend_shared_floats(taps, channels) * sizeof(float);
  if (shared_bytes > static_cast<size_t>(kDefaultSharedLimit)) {
    const cudaError_t err = cudaFuncSetAttribute(audio_frontend_stem_forward_kernel,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(shared_bytes));
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(tiles, batch);
  audio_frontend_stem_forward_kernel<<<grid, kThreads, shared_bytes, stream>>>(
      x, filters, weight, acc, tile_sums, samples, filter_count, taps, channels, outputs, tiles, log_eps);
  return cudaGetLastError();
}

cudaError_t launch_audio_frontend_stem_elementwise_backward(float* y, float* grad, const float* grad_mean,
                                                            const float* band_mean, int64_t total, int64_t samples,
                                                            float log_eps, cudaStream_t stream) {
  if (total == 0) return cudaSuccess;
  constexpr int threads = 256;
  const long long wanted = (total + threads - 1) / threads;
  const int blocks = static_cast<int>(wanted < (1LL << 20) ? wanted : (1LL << 20));  // grid-stride beyond
  audio_frontend_stem_elementwise_backward_kernel<<<blocks, threads, 0, stream>>>(y, grad, grad_mean, band_mean,
                                                                                   total, samples, log_eps);
  return cudaGetLastError();
}

}  // namespace avfused::cuda
