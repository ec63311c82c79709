// CPU building blocks shared by the per-image fused ops (large_kernel_attention, conv_mlp): bordered
// planes that carry a convolution's zero padding, vectorised depthwise rows and their weight gradients, the
// 1x1 convolution's blocked multiply-adds,
// plane sums and dot products, partial-vector loads, per-thread gradient accumulators, the lane-width
// choice and the input checks of (N, C, H, W) ops.
// Depthwise rows are computed `cols` = width rounded up to whole vectors wide. The pad columns of a
// bordered plane are the next convolution's zero padding: whatever is written there is re-zeroed.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "simd.h"

namespace avfused::depthwise {

constexpr int64_t kRowChunks = 4;       // vectors of one row computed together (register accumulators)

using simd::round_up;

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

template <class V>
AVFUSED_INLINE double horizontal_sum(V v) {
  float lanes[sizeof(V) / 4];
  simd::store(lanes, v);
  double sum = 0.0;
  for (float lane : lanes) sum += lane;
  return sum;
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

// A 1x1 convolution's multiply-adds for B output channels at U W positions: acc[b][u] += sum_c
// w[b in_channels + c] in[c in_stride + u W] (w: the B rows of those channels). Each input vector is loaded
// once for all B channels; one output channel at a time, the loop is bound by its loads.
template <int W, int U, int B>
AVFUSED_INLINE void pointwise_accumulate(const float* in, int64_t in_stride, int64_t in_channels, const float* w,
                                         typename simd::Vec<W>::f (&acc)[B][U]) {
  using V = typename simd::Vec<W>::f;
  for (int64_t c = 0; c < in_channels; ++c) {
    V v[U];
    for (int u = 0; u < U; ++u) v[u] = simd::load<V>(in + c * in_stride + u * W);
#pragma GCC unroll 8
    for (int b = 0; b < B; ++b) {
      const float tap = w[b * in_channels + c];
      for (int u = 0; u < U; ++u) acc[b][u] += tap * v[u];
    }
  }
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

// Weight gradient of a depthwise K x K conv with dilation D over one plane: w_grad[ky K + kx] +=
// sum_{y, x} grad[y][x] in[y + D ky][x + D kx], where `in` is the input's bordered window (output (y, x)
// reads from (y, x) on) and grad holds `rows` rows of `cols` values whose columns past the image are 0.
// Each row's sum collects in W float lanes (a plane is a few hundred terms per lane); the plane's total
// goes into double.
template <int W, int K, int D>
AVFUSED_INLINE void depthwise_weight_grad(const float* grad, int64_t grad_stride, const float* in, int64_t in_stride,
                                          int64_t rows, int64_t cols, double* w_grad) {
  using V = typename simd::Vec<W>::f;
  for (int ky = 0; ky < K; ++ky) {
    V acc[K];
    for (int kx = 0; kx < K; ++kx) acc[kx] = V{};
    for (int64_t y = 0; y < rows; ++y) {
      const float* g = grad + y * grad_stride;
      const float* in_row = in + (y + D * ky) * in_stride;
      for (int64_t x = 0; x < cols; x += W) {
        const V gv = simd::load<V>(g + x);
#pragma GCC unroll 7
        for (int kx = 0; kx < K; ++kx) acc[kx] += gv * simd::load<V>(in_row + x + D * kx);
      }
    }
    for (int kx = 0; kx < K; ++kx) w_grad[ky * K + kx] += horizontal_sum(acc[kx]);
  }
}

// sum of rows x cols values (rows `stride` apart; cols a multiple of W).
template <int W>
AVFUSED_INLINE double plane_sum(const float* plane, int64_t stride, int64_t rows, int64_t cols) {
  using V = typename simd::Vec<W>::f;
  V acc = V{};
  for (int64_t y = 0; y < rows; ++y) {
    for (int64_t x = 0; x < cols; x += W) acc += simd::load<V>(plane + y * stride + x);
  }
  return horizontal_sum(acc);
}

// sum_i a[i] b[i] over `count` values (a multiple of W).
template <int W>
AVFUSED_INLINE double dot(const float* a, const float* b, int64_t count) {
  using V = typename simd::Vec<W>::f;
  V acc = V{};
  for (int64_t i = 0; i < count; i += W) acc += simd::load<V>(a + i) * simd::load<V>(b + i);
  return horizontal_sum(acc);
}

// The K x K taps of each of `channels` depthwise filters mirrored in both axes: the transposed
// convolution (the input gradient) is the correlation of the bordered output gradient with them.
inline std::vector<float> mirrored_taps(const float* taps, int64_t channels, int64_t k) {
  std::vector<float> mirrored(channels * k * k);
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t i = 0; i < k * k; ++i) mirrored[c * k * k + i] = taps[c * k * k + k * k - 1 - i];
  }
  return mirrored;
}

// Weight-gradient sums in double, one block per thread of at::parallel_for (no locks), added up at the end.
class GradientSums {
 public:
  explicit GradientSums(int64_t size) : size_(size), sums_(at::get_num_threads() * size, 0.0) {}
  double* mine() { return sums_.data() + at::get_thread_num() * size_; }
  // The total of every thread's block at `offset`, `count` values, into `out` (float32).
  void total(int64_t offset, int64_t count, float* out) const {
    for (int64_t i = 0; i < count; ++i) {
      double sum = 0.0;
      for (size_t t = 0; t < sums_.size() / size_; ++t) sum += sums_[t * size_ + offset + i];
      out[i] = static_cast<float>(sum);
    }
  }

 private:
  int64_t size_;
  std::vector<double> sums_;
};

// Which build of an op's per-image kernels runs.
enum class Lanes {
  k8,           // 8 lanes (AVX2 + FMA clone, or the baseline)
  k16,          // 16 lanes compiled for AVX-512 (the CPU has it)
  k16Portable,  // the 16-lane code compiled for the baseline ISA: AVFUSED_CPU_PORTABLE_WIDE=1, so that
                // tests cover the 16-lane code on CPUs without AVX-512 (slow: no use otherwise)
};
inline Lanes image_kernel_lanes() {
  if (simd::use_wide_vectors()) return Lanes::k16;
  const char* portable = std::getenv("AVFUSED_CPU_PORTABLE_WIDE");
  return portable != nullptr && portable[0] == '1' ? Lanes::k16Portable : Lanes::k8;
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
