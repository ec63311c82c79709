// The VPM ops on the CPU, fused per image so that no (N, C, H, W) intermediate reaches memory:
//   large_kernel_attention: each channel's dw5x5 -> dw7x7 (dilation 3) runs through two zero-bordered
//     plane buffers into the image's context planes; the 1x1 + bias then gates p, row by row.
//   conv_mlp: G expanded channels at a time are expanded (1x1), copied into bordered planes, go through
//     dw3x3 + ReLU and add their share of the 1x1 projection to the image's output accumulator, so
//     the x4 expansion only ever occupies G planes.
// Depthwise rows are computed `cols` = width rounded up to whole vectors wide. The pad columns of a
// bordered plane are the next convolution's zero padding: whatever is written there is re-zeroed.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../avfused_ops.h"
#include "../simd.h"

namespace avfused {
namespace {

constexpr int64_t kRowChunks = 4;       // vectors of one row computed together (register accumulators)
constexpr int64_t kExpandedPadding = 8;  // conv_mlp's E is zero-padded to whole channel groups

inline int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

bool wide_vectors() {
  const char* no_avx512 = std::getenv("AVFUSED_CPU_NO_AVX512");  // as in frontend_stem_cpu.cpp
  return simd::cpu_has_avx512() && !(no_avx512 != nullptr && no_avx512[0] == '1');
}

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

// ---- large kernel attention ---------------------------------------------------------------------
struct LkaArgs {
  const float* p;   // (N, C, H, W)
  const float* w5;  // (C, 25)
  const float* b5;
  const float* w7;  // (C, 49)
  const float* b7;
  const float* w1;  // (C, C)
  const float* b1;
  float* out;       // (N, C, H, W)
  int64_t channels, height, width;
};

// out[co][x] = p[co][x] * (b1[co] + sum_ci w1[co][ci] context[ci][x]) for U W pixels of one row, of
// which `valid` are inside the image.
template <int W, int U>
AVFUSED_INLINE void gate_chunks(const LkaArgs& a, const float* context, int64_t context_plane, const float* p,
                                float* out, int64_t valid) {
  using V = typename simd::Vec<W>::f;
  const int64_t channels = a.channels, plane = a.height * a.width;
  for (int64_t co = 0; co < channels; ++co) {
    V acc[U];
    for (int u = 0; u < U; ++u) acc[u] = simd::splat<V>(a.b1[co]);
    for (int64_t ci = 0; ci < channels; ++ci) {
      const float tap = a.w1[co * channels + ci];
      const float* source = context + ci * context_plane;
      for (int u = 0; u < U; ++u) acc[u] += tap * simd::load<V>(source + u * W);
    }
    for (int u = 0; u < U; ++u) {
      const int64_t offset = co * plane + u * W, count = std::min<int64_t>(W, valid - u * W);
      if (count == W) {
        simd::store(out + offset, simd::load<V>(p + offset) * acc[u]);
      } else {
        store_first(out + offset, load_first<V>(p + offset, count) * acc[u], count);
      }
    }
  }
}

template <int W>
AVFUSED_INLINE void lka_image(const LkaArgs& a, int64_t n) {
  const int64_t channels = a.channels, height = a.height, width = a.width;
  const int64_t cols = round_up(width, W), plane = height * width, context_plane = height * cols;
  const float* p = a.p + n * channels * plane;
  float* out = a.out + n * channels * plane;
  BorderedPlane input(height, cols, 2), middle(height, cols, 9);
  std::vector<float> context(channels * context_plane);
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t y = 0; y < height; ++y) std::copy_n(p + c * plane + y * width, width, input.row(y));
    for (int64_t y = 0; y < height; ++y) {
      float* row = middle.row(y);
      depthwise_row<W, 5, 1, false>(input.window(y), input.stride, a.w5 + c * 25, a.b5[c], row, cols);
      std::fill(row + width, row + cols, 0.f);
    }
    for (int64_t y = 0; y < height; ++y) {
      float* row = context.data() + c * context_plane + y * cols;
      depthwise_row<W, 7, 3, false>(middle.window(y), middle.stride, a.w7 + c * 49, a.b7[c], row, cols);
    }
  }
  for (int64_t y = 0; y < height; ++y) {
    const float* context_row = context.data() + y * cols;
    int64_t x = 0;
    for (; x + kRowChunks * W <= cols; x += kRowChunks * W) {
      gate_chunks<W, kRowChunks>(a, context_row + x, context_plane, p + y * width + x, out + y * width + x,
                                 width - x);
    }
    for (; x < cols; x += W) {
      gate_chunks<W, 1>(a, context_row + x, context_plane, p + y * width + x, out + y * width + x, width - x);
    }
  }
}

AVFUSED_TARGET_CLONES
void lka_images_w8(const LkaArgs& a, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) lka_image<8>(a, n);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void lka_images_w16(const LkaArgs& a, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) lka_image<16>(a, n);
}
#endif

// ---- conv MLP -----------------------------------------------------------------------------------
struct MlpArgs {
  const float* x;      // (N, C, H, W)
  const float* w_in;   // (E, C), E a multiple of kExpandedPadding (zero rows past the real E)
  const float* b_in;   // (E,)
  const float* w_dw;   // (E, 9)
  const float* b_dw;   // (E,)
  const float* w_out;  // (C, E)
  const float* b_out;  // (C,)
  float* out;          // (N, C, H, W)
  int64_t channels, expanded, height, width;
};

template <int W>
struct MlpGeometry {
  static constexpr int G = W == 16 ? 8 : 4;  // expanded channels per group: G x 2 accumulators fit the registers
  static constexpr int U = 2;
};

// hidden[g][i] = b_in[e0 + g] + sum_c w_in[e0 + g][c] input[c][i] for U W positions i of the flat plane.
template <int W, int U>
AVFUSED_INLINE void expand_chunks(const MlpArgs& a, int64_t e0, const float* input, float* hidden, int64_t plane) {
  using V = typename simd::Vec<W>::f;
  constexpr int G = MlpGeometry<W>::G;
  V acc[G][U];
  for (int g = 0; g < G; ++g) {
    for (int u = 0; u < U; ++u) acc[g][u] = simd::splat<V>(a.b_in[e0 + g]);
  }
  for (int64_t c = 0; c < a.channels; ++c) {
    V pixels[U];
    for (int u = 0; u < U; ++u) pixels[u] = simd::load<V>(input + c * plane + u * W);
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const float tap = a.w_in[(e0 + g) * a.channels + c];
      for (int u = 0; u < U; ++u) acc[g][u] += tap * pixels[u];
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int u = 0; u < U; ++u) simd::store(hidden + g * plane + u * W, acc[g][u]);
  }
}

// total[c][i] += sum_g w_out[c][e0 + g] activated[g][i] for U W positions i of the flattened plane.
template <int W, int U>
AVFUSED_INLINE void project_chunks(const MlpArgs& a, int64_t e0, const float* activated, float* total,
                                   int64_t plane) {
  using V = typename simd::Vec<W>::f;
  constexpr int G = MlpGeometry<W>::G;
  V act[G][U];
  for (int g = 0; g < G; ++g) {
    for (int u = 0; u < U; ++u) act[g][u] = simd::load<V>(activated + g * plane + u * W);
  }
  for (int64_t c = 0; c < a.channels; ++c) {
    V sum[U];
    for (int u = 0; u < U; ++u) sum[u] = simd::load<V>(total + c * plane + u * W);
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const float tap = a.w_out[c * a.expanded + e0 + g];
      for (int u = 0; u < U; ++u) sum[u] += tap * act[g][u];
    }
    for (int u = 0; u < U; ++u) simd::store(total + c * plane + u * W, sum[u]);
  }
}

// The 1x1s run over each plane flattened (H W rounded up to whole vectors, no per-row padding: small maps
// such as 7 x 7 would waste half the lanes); only the depthwise step works in rows.
template <int W>
AVFUSED_INLINE void mlp_image(const MlpArgs& a, int64_t n) {
  constexpr int G = MlpGeometry<W>::G, U = MlpGeometry<W>::U;
  const int64_t channels = a.channels, height = a.height, width = a.width;
  const int64_t cols = round_up(width, W), plane = height * width, flat = round_up(plane, W);
  const float* x = a.x + n * channels * plane;
  float* out = a.out + n * channels * plane;
  std::vector<float> input(channels * flat, 0.f), total(channels * flat), expanded(G * flat);
  // each depthwise row writes `cols` values at y * width: the excess is overwritten by what comes next
  // (the next row, the next channel's first row) or lands past the last plane, where nothing reads it
  std::vector<float> activated(G * flat + cols);
  std::vector<BorderedPlane> hidden(G, BorderedPlane(height, cols, 1));
  for (int64_t c = 0; c < channels; ++c) {
    std::copy_n(x + c * plane, plane, &input[c * flat]);
    std::fill_n(&total[c * flat], flat, a.b_out[c]);
  }
  for (int64_t e0 = 0; e0 < a.expanded; e0 += G) {
    int64_t i = 0;
    for (; i + U * W <= flat; i += U * W) expand_chunks<W, U>(a, e0, input.data() + i, expanded.data() + i, flat);
    for (; i < flat; i += W) expand_chunks<W, 1>(a, e0, input.data() + i, expanded.data() + i, flat);
    for (int g = 0; g < G; ++g) {
      const int64_t e = e0 + g;
      for (int64_t y = 0; y < height; ++y) std::copy_n(&expanded[g * flat + y * width], width, hidden[g].row(y));
      for (int64_t y = 0; y < height; ++y) {
        depthwise_row<W, 3, 1, true>(hidden[g].window(y), hidden[g].stride, a.w_dw + e * 9, a.b_dw[e],
                                     activated.data() + g * flat + y * width, cols);
      }
    }
    for (i = 0; i + U * W <= flat; i += U * W) {
      project_chunks<W, U>(a, e0, activated.data() + i, total.data() + i, flat);
    }
    for (; i < flat; i += W) project_chunks<W, 1>(a, e0, activated.data() + i, total.data() + i, flat);
  }
  for (int64_t c = 0; c < channels; ++c) std::copy_n(&total[c * flat], plane, out + c * plane);
}

AVFUSED_TARGET_CLONES
void mlp_images_w8(const MlpArgs& a, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) mlp_image<8>(a, n);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void mlp_images_w16(const MlpArgs& a, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) mlp_image<16>(a, n);
}
#endif

// ---- input checks -------------------------------------------------------------------------------
void check_vpm_tensor(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, "avfused_ext.", op, ": ", name, " must be ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "avfused_ext.", op, ": expected float32 tensors, got ", name, " as ",
              t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "avfused_ext.", op, ": expected CPU tensors, got ", name, " on ", t.device());
}

// (N, C, H, W) sizes of a non-empty image batch.
std::vector<int64_t> check_images(const char* op, const char* name, const at::Tensor& images) {
  TORCH_CHECK(images.dim() == 4, "avfused_ext.", op, ": ", name, " must be (N, C, H, W), got shape ",
              images.sizes());
  TORCH_CHECK(images.numel() > 0, "avfused_ext.", op, ": empty ", name, " ", images.sizes());
  check_vpm_tensor(op, name, images, images.sizes());
  return images.sizes().vec();
}

// `weight` (rows, cols) zero-padded to `padded_rows` rows, contiguous.
at::Tensor pad_rows(const at::Tensor& weight, int64_t padded_rows) {
  at::Tensor padded = at::zeros({padded_rows, weight.numel() / weight.size(0)}, weight.options());
  padded.narrow(0, 0, weight.size(0)).copy_(weight.reshape({weight.size(0), -1}));
  return padded;
}

}  // namespace

at::Tensor large_kernel_attention_cpu(const at::Tensor& p, const at::Tensor& w5, const at::Tensor& b5,
                                      const at::Tensor& w7, const at::Tensor& b7, const at::Tensor& w1,
                                      const at::Tensor& b1) {
  const char* op = "large_kernel_attention";
  const std::vector<int64_t> sizes = check_images(op, "p", p);
  const int64_t channels = sizes[1];
  check_vpm_tensor(op, "w5", w5, {channels, 25});
  check_vpm_tensor(op, "w7", w7, {channels, 49});
  check_vpm_tensor(op, "w1", w1, {channels, channels});
  for (const at::Tensor* bias : {&b5, &b7, &b1}) check_vpm_tensor(op, "bias", *bias, {channels});
  const at::Tensor p_c = p.contiguous(), w5_c = w5.contiguous(), b5_c = b5.contiguous(), w7_c = w7.contiguous(),
                   b7_c = b7.contiguous(), w1_c = w1.contiguous(), b1_c = b1.contiguous();
  at::Tensor out = at::empty_like(p_c);
  const LkaArgs args{p_c.data_ptr<float>(),  w5_c.data_ptr<float>(), b5_c.data_ptr<float>(),
                     w7_c.data_ptr<float>(), b7_c.data_ptr<float>(), w1_c.data_ptr<float>(),
                     b1_c.data_ptr<float>(), out.data_ptr<float>(),  channels,
                     sizes[2],               sizes[3]};
  const bool wide = wide_vectors();
  at::parallel_for(0, sizes[0], 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (wide) return lka_images_w16(args, begin, end);
#endif
    lka_images_w8(args, begin, end);
  });
  return out;
}

at::Tensor conv_mlp_cpu(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_dw,
                        const at::Tensor& b_dw, const at::Tensor& w_out, const at::Tensor& b_out) {
  const char* op = "conv_mlp";
  const std::vector<int64_t> sizes = check_images(op, "x", x);
  TORCH_CHECK(w_in.dim() == 2, "avfused_ext.conv_mlp: w_in must be (E, C), got shape ", w_in.sizes());
  const int64_t channels = sizes[1], expanded = w_in.size(0);
  check_vpm_tensor(op, "w_in", w_in, {expanded, channels});
  check_vpm_tensor(op, "b_in", b_in, {expanded});
  check_vpm_tensor(op, "w_dw", w_dw, {expanded, 9});
  check_vpm_tensor(op, "b_dw", b_dw, {expanded});
  check_vpm_tensor(op, "w_out", w_out, {channels, expanded});
  check_vpm_tensor(op, "b_out", b_out, {channels});
  const int64_t padded = round_up(expanded, kExpandedPadding);  // zero channels: hidden 0 -> ReLU(0) -> nothing
  const at::Tensor x_c = x.contiguous(), b_out_c = b_out.contiguous();
  const at::Tensor w_in_p = pad_rows(w_in, padded), b_in_p = pad_rows(b_in.reshape({-1, 1}), padded);
  const at::Tensor w_dw_p = pad_rows(w_dw, padded), b_dw_p = pad_rows(b_dw.reshape({-1, 1}), padded);
  const at::Tensor w_out_p = pad_rows(w_out.t(), padded).t().contiguous();
  at::Tensor out = at::empty_like(x_c);
  const MlpArgs args{x_c.data_ptr<float>(),    w_in_p.data_ptr<float>(), b_in_p.data_ptr<float>(),
                     w_dw_p.data_ptr<float>(), b_dw_p.data_ptr<float>(), w_out_p.data_ptr<float>(),
                     b_out_c.data_ptr<float>(), out.data_ptr<float>(),   channels,
                     padded,                   sizes[2],                 sizes[3]};
  const bool wide = wide_vectors();
  at::parallel_for(0, sizes[0], 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (wide) return mlp_images_w16(args, begin, end);
#endif
    mlp_images_w8(args, begin, end);
  });
  return out;
}

}  // namespace avfused
