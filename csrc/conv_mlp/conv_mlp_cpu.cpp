// conv_mlp on the CPU, fused per image: G expanded channels at a time are expanded (1x1), copied into
// bordered planes, go through dw3x3 + ReLU and add their share of the 1x1 projection to the image's
// output accumulator, so the x4 expansion only ever occupies G planes.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/depthwise.h"
#include "conv_mlp.h"

namespace avfused {
namespace {

using namespace depthwise;

constexpr int64_t kExpandedPadding = 8;  // E is zero-padded to whole channel groups

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

// `weight` (rows, cols) zero-padded to `padded_rows` rows, contiguous.
at::Tensor pad_rows(const at::Tensor& weight, int64_t padded_rows) {
  at::Tensor padded = at::zeros({padded_rows, weight.numel() / weight.size(0)}, weight.options());
  padded.narrow(0, 0, weight.size(0)).copy_(weight.reshape({weight.size(0), -1}));
  return padded;
}

at::Tensor conv_mlp_cpu(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_dw,
                        const at::Tensor& b_dw, const at::Tensor& w_out, const at::Tensor& b_out) {
  const char* op = "conv_mlp";
  const std::vector<int64_t> sizes = check_images(op, "x", x);
  TORCH_CHECK(w_in.dim() == 2, "avfused_ext.conv_mlp: w_in must be (E, C), got shape ", w_in.sizes());
  const int64_t channels = sizes[1], expanded = w_in.size(0);
  check_image_op_tensor(op, "w_in", w_in, {expanded, channels});
  check_image_op_tensor(op, "b_in", b_in, {expanded});
  check_image_op_tensor(op, "w_dw", w_dw, {expanded, 9});
  check_image_op_tensor(op, "b_dw", b_dw, {expanded});
  check_image_op_tensor(op, "w_out", w_out, {channels, expanded});
  check_image_op_tensor(op, "b_out", b_out, {channels});
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
  const bool wide = simd::use_wide_vectors();
  at::parallel_for(0, sizes[0], 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (wide) return mlp_images_w16(args, begin, end);
#endif
    mlp_images_w8(args, begin, end);
  });
  return out;
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("conv_mlp(Tensor x, Tensor w_in, Tensor b_in, Tensor w_dw, Tensor b_dw, Tensor w_out, Tensor b_out) -> Tensor");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) { m.impl("conv_mlp", &avfused::conv_mlp_cpu); }
