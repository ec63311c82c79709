// CPU building blocks shared by the per-image fused ops (large_kernel_attention, conv_mlp): bordered
// planes that carry a convolution's zero padding, vectorised depthwise rows, partial-vector loads and
// the input checks of (N, C, H, W) ops.
// Depthwise rows are computed `cols` = width rounded up to whole vectors wide. The pad columns of a
// bordered plane are the next convolution's zero padding: whatever is written there is re-zeroed.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "simd.h"

namespace avfused::depthwise {

constexpr int64_t kRowChunks = 4;       // vectors of one row computed together (register accumulators)

inline int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

template <class V>
AVFUSED_INLINE V load_first(const float* p, int64_t count) {
  float lanes[sizeof(V) / 4] = {};
  std::memcpy(lanes, p, count * sizeof(float));
  return simd::load<V>(lanes);
}

template <class V>
AVFUSED_INLINE void store_first(float* p, V v, int64_t count) {
  float lanes[sizeof(V) / 4];
  simd::store(lanes, v);
  std::memcpy(p, lanes, count * sizeof(float));
}

// A height x cols plane inside a zero border as wide as the convolution's padding, so output (y, x)
// reads its window from (y, x) on.
struct BorderedPlane {
  std::vector<float> data;
  int64_t border, stride;

  BorderedPlane(int64_t height, int64_t cols, int64_t border_width)
      : data((height + 2 * border_width) * (cols + 2 * border_width), 0.f),
        border(border_width),
        stride(cols + 2 * border_width) {}
  float* row(int64_t y) { return data.data() + (y + border) * stride + border; }
  const float* window(int64_t y) const { return data.data() + y * stride; }
};

// out[x] = bias + sum_{ky,kx} w[ky][kx] in[D ky][x + D kx] for U W outputs, optionally ReLU'd.
template <int W, int U, int K, int D, bool kRelu>
AVFUSED_INLINE void depthwise_chunks(const float* in, int64_t in_stride, const float* w, float bias, float* out) {
  using V = typename simd::Vec<W>::f;
  V acc[U];
  for (int u = 0; u < U; ++u) acc[u] = simd::splat<V>(bias);
  for (int ky = 0; ky < K; ++ky) {
    const float* in_row = in + ky * D * in_stride;
#pragma GCC unroll 7
    for (int kx = 0; kx < K; ++kx) {
      const float tap = w[ky * K + kx];
      for (int u = 0; u < U; ++u) acc[u] += tap * simd::load<V>(in_row + kx * D + u * W);
    }
  }
  for (int u = 0; u < U; ++u) simd::store(out + u * W, kRelu ? (acc[u] > 0.f ? acc[u] : V{}) : acc[u]);
}

// One output row of a depthwise K x K conv with dilation D over a bordered plane's window.
template <int W, int K, int D, bool kRelu>
AVFUSED_INLINE void depthwise_row(const float* in, int64_t in_stride, const float* w, float bias, float* out,
                                  int64_t cols) {
  int64_t x = 0;
  for (; x + kRowChunks * W <= cols; x += kRowChunks * W) {
    depthwise_chunks<W, kRowChunks, K, D, kRelu>(in + x, in_stride, w, bias, out + x);
  }
  for (; x < cols; x += W) depthwise_chunks<W, 1, K, D, kRelu>(in + x, in_stride, w, bias, out + x);
}

inline void check_image_op_tensor(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, "avfused_ext.", op, ": ", name, " must be ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "avfused_ext.", op, ": expected float32 tensors, got ", name, " as ",
              t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "avfused_ext.", op, ": expected CPU tensors, got ", name, " on ", t.device());
}

// (N, C, H, W) sizes of a non-empty image batch.
inline std::vector<int64_t> check_images(const char* op, const char* name, const at::Tensor& images) {
  TORCH_CHECK(images.dim() == 4, "avfused_ext.", op, ": ", name, " must be (N, C, H, W), got shape ",
              images.sizes());
  TORCH_CHECK(images.numel() > 0, "avfused_ext.", op, ": empty ", name, " ", images.sizes());
  check_image_op_tensor(op, name, images, images.sizes());
  return images.sizes().vec();
}

}  // namespace avfused::depthwise
