// Device helpers of the per-pixel CUDA kernels of a depthwise 3x3 conv ('same' zero padding) whose output
// is recomputed, not stored (video_squeeze_tokens, video_squeeze_stats): z read straight from the plane
// (forwards); for the backwards, a thread holds the 5x5 input window around its pixel, recomputes z at the
// pixel's 3x3 neighbours from it, applies the transposed conv to the neighbours' dz and adds its pixel's
// share of the weight gradient. nvcc only.
#pragma once

#include "cuda_activations.h"

namespace avfused::cuda {

// z = b + dw3x3 at (y, x) of one plane (zero padding), read straight from the plane; w: the 9 taps.
template <class T>
__device__ __forceinline__ float conv3x3_read(const T* plane, int height, int width, int y, int x, const float* w, float b) {
  float z = b;
#pragma unroll
  for (int ky = 0; ky < 3; ++ky) {
    const int yy = y + ky - 1;
    if (yy < 0 || yy >= height) continue;
#pragma unroll
    for (int kx = 0; kx < 3; ++kx) {
      const int xx = x + kx - 1;
      if (xx >= 0 && xx < width) z += w[ky * 3 + kx] * load_float(plane + yy * width + xx);
    }
  }
  return z;
}

// xs[i][j] = plane(y + i - 2, x + j - 2), zero outside the plane.
template <class T>
__device__ __forceinline__ void load_window5(const T* plane, int height, int width, int y, int x, float (&xs)[5][5]) {
#pragma unroll
  for (int i = 0; i < 5; ++i) {
#pragma unroll
    for (int j = 0; j < 5; ++j) {
      const int yy = y + i - 2, xx = x + j - 2;
      xs[i][j] = (yy >= 0 && yy < height && xx >= 0 && xx < width) ? load_float(plane + yy * width + xx) : 0.f;
    }
  }
}

// z = b + dw3x3 at the neighbour (y + dy - 1, x + dx - 1) of the window's pixel.
__device__ __forceinline__ float conv3x3_at(const float (&w)[9], float b, const float (&xs)[5][5], int dy, int dx) {
  float z = b;
#pragma unroll
  for (int k = 0; k < 9; ++k) z += w[k] * xs[dy + k / 3][dx + k % 3];
  return z;
}

// The pixel's input gradient: sum_{ky,kx} w[ky][kx] dz(y - ky + 1, x - kx + 1), dz[dy][dx] at (y + dy - 1, x + dx - 1).
__device__ __forceinline__ float transposed3x3(const float (&w)[9], const float (&dz)[3][3]) {
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < 9; ++k) sum += w[k] * dz[2 - k / 3][2 - k % 3];
  return sum;
}

// d_dw[k] += the warp's sum of dz(pixel) x(pixel + tap k - 1) (every lane must call it).
__device__ __forceinline__ void add_tap_gradients(float own_dz, const float (&xs)[5][5], float* d_dw) {
#pragma unroll
  for (int k = 0; k < 9; ++k) {
    const float term = warp_sum(own_dz * xs[1 + k / 3][1 + k % 3]);
    if ((threadIdx.x & 31) == 0) atomicAdd(d_dw + k, term);
  }
}

}  // namespace avfused::cuda
