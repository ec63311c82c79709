// conv_mlp on the CPU, fused per image: G expanded channels at a time are expanded (1x1), copied into
// bordered planes and go through dw3x3, so the x4 expansion only ever occupies G planes.
// Forward: ReLU, then each group adds its share of the 1x1 projection to the image's output accumulator.
// Backward: each group's h and pre are recomputed the same way; dpre = (W_out^T grad) [pre > 0] is formed
// for the group from the image's gradient planes, then dh = dw3x3^T(dpre) through a bordered plane, and
// the group adds its share of dx = W_in^T dh; the weight gradients are plane dot products, summed per
// thread in double.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
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
  float* out;          // (N, C, H, W): the forward's output or the backward's dx
  int64_t channels, expanded, height, width;
  // backward only
  const float* grad = nullptr;          // (N, C, H, W)
  const float* w_in_t = nullptr;        // (C, E): W_in^T, dx's weights
  const float* w_out_t = nullptr;       // (E, C): W_out^T, da's weights
  const float* w_dw_mirrored = nullptr;  // (E, 9): the transposed dw3x3's taps
};

template <int W>
struct MlpGeometry {
  static constexpr int G = W == 16 ? 8 : 4;  // expanded channels per group: G x 2 accumulators fit the registers
  static constexpr int U = 2;
};

// Offsets of each gradient in a thread's block of GradientSums (E padded).
struct MlpGradientLayout {
  int64_t w_in, b_in, w_dw, b_dw, w_out, b_out, size;
  MlpGradientLayout(int64_t c, int64_t e)
      : w_in(0), b_in(e * c), w_dw(e * c + e), b_dw(e * c + 10 * e), w_out(e * c + 11 * e),
        b_out(2 * e * c + 11 * e), size(2 * e * c + 11 * e + c) {}
};

// hidden[g][i] = bias[e0 + g] + sum_c weight[e0 + g][c] input[c][i] for U W positions i of the flat plane
// (weight (E, in_channels); no bias when null).
template <int W, int U>
AVFUSED_INLINE void expand_chunks(const float* weight, const float* bias, int64_t in_channels, int64_t e0,
                                  const float* input, float* hidden, int64_t plane) {
  using V = typename simd::Vec<W>::f;
  constexpr int G = MlpGeometry<W>::G;
  V acc[G][U];
  for (int g = 0; g < G; ++g) {
    for (int u = 0; u < U; ++u) acc[g][u] = simd::splat<V>(bias == nullptr ? 0.f : bias[e0 + g]);
  }
  pointwise_accumulate<W, U, G>(input, plane, in_channels, weight + e0 * in_channels, acc);
  for (int g = 0; g < G; ++g) {
    for (int u = 0; u < U; ++u) simd::store(hidden + g * plane + u * W, acc[g][u]);
  }
}

// total[c][i] += sum_g weight[c][e0 + g] group[g][i] for U W positions i of the flattened plane
// (weight (out_channels, expanded)).
template <int W, int U>
AVFUSED_INLINE void project_chunks(const float* weight, int64_t expanded, int64_t out_channels, int64_t e0,
                                   const float* group, float* total, int64_t plane) {
  using V = typename simd::Vec<W>::f;
  constexpr int G = MlpGeometry<W>::G;
  V act[G][U];
  for (int g = 0; g < G; ++g) {
    for (int u = 0; u < U; ++u) act[g][u] = simd::load<V>(group + g * plane + u * W);
  }
  for (int64_t c = 0; c < out_channels; ++c) {
    V sum[U];
    for (int u = 0; u < U; ++u) sum[u] = simd::load<V>(total + c * plane + u * W);
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const float tap = weight[c * expanded + e0 + g];
      for (int u = 0; u < U; ++u) sum[u] += tap * act[g][u];
    }
    for (int u = 0; u < U; ++u) simd::store(total + c * plane + u * W, sum[u]);
  }
}

template <int W>
AVFUSED_INLINE void expand_plane(const float* weight, const float* bias, int64_t in_channels, int64_t e0,
                                 const float* input, float* hidden, int64_t flat) {
  constexpr int U = MlpGeometry<W>::U;
  int64_t i = 0;
  for (; i + U * W <= flat; i += U * W) expand_chunks<W, U>(weight, bias, in_channels, e0, input + i, hidden + i, flat);
  for (; i < flat; i += W) expand_chunks<W, 1>(weight, bias, in_channels, e0, input + i, hidden + i, flat);
}

template <int W>
AVFUSED_INLINE void project_plane(const float* weight, int64_t expanded, int64_t out_channels, int64_t e0,
                                  const float* group, float* total, int64_t flat) {
  constexpr int U = MlpGeometry<W>::U;
  int64_t i = 0;
  for (; i + U * W <= flat; i += U * W) {
    project_chunks<W, U>(weight, expanded, out_channels, e0, group + i, total + i, flat);
  }
  for (; i < flat; i += W) project_chunks<W, 1>(weight, expanded, out_channels, e0, group + i, total + i, flat);
}

// out[c stride_c + g stride_g] += sum_i planes[c][i] group[g][i] (ReLU'd when kRelu) for every channel c
// and the G planes of a group; `flat` values per plane (a multiple of W).
template <int W, bool kRelu>
AVFUSED_INLINE void group_dots(const float* planes, int64_t channels, const float* group, int64_t flat, double* out,
                               int64_t stride_c, int64_t stride_g) {
  using V = typename simd::Vec<W>::f;
  constexpr int G = MlpGeometry<W>::G;
  for (int64_t c = 0; c < channels; ++c) {
    V acc[G];
    for (int g = 0; g < G; ++g) acc[g] = V{};
    for (int64_t i = 0; i < flat; i += W) {
      const V v = simd::load<V>(planes + c * flat + i);
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) {
        V other = simd::load<V>(group + g * flat + i);
        if constexpr (kRelu) other = other > 0.f ? other : V{};
        acc[g] += v * other;
      }
    }
    for (int g = 0; g < G; ++g) out[c * stride_c + g * stride_g] += horizontal_sum(acc[g]);
  }
}

// The depthwise 3x3 of G bordered planes, row by row, into G flat planes: each row writes `cols` values
// at y * width, the excess overwritten by what comes next (the next row, the next plane's first row) or
// landing in the `cols` spare values past the last plane; the flat padding is zeroed at the end.
template <int W, bool kRelu>
AVFUSED_INLINE void depthwise_group(const std::vector<BorderedPlane>& in, const float* taps, const float* bias,
                                    int64_t e0, int64_t height, int64_t width, int64_t flat, float* out) {
  constexpr int G = MlpGeometry<W>::G;
  const int64_t cols = round_up(width, W), plane = height * width;
  for (int g = 0; g < G; ++g) {
    const int64_t e = e0 + g;
    for (int64_t y = 0; y < height; ++y) {
      depthwise_row<W, 3, 1, kRelu>(in[g].window(y), in[g].stride, taps + e * 9, bias == nullptr ? 0.f : bias[e],
                                    out + g * flat + y * width, cols);
    }
  }
  for (int g = 0; g < G; ++g) std::fill(out + g * flat + plane, out + (g + 1) * flat, 0.f);
}

// Per-thread buffers of one image, reused across the thread's images.
template <int W>
struct MlpScratch {
  std::vector<float> input, total, expanded, activated;  // C, C, G and G flat planes (+ spare, see depthwise_group)
  std::vector<BorderedPlane> hidden;                      // G bordered planes of h
  MlpScratch(const MlpArgs& a, int64_t flat, int64_t cols)
      : input(a.channels * flat, 0.f),
        total(a.channels * flat),
        expanded(MlpGeometry<W>::G * flat),
        activated(MlpGeometry<W>::G * flat + cols),
        hidden(MlpGeometry<W>::G, BorderedPlane(a.height, cols, 1)) {}
};

// The 1x1s run over each plane flattened (H W rounded up to whole vectors, no per-row padding: small maps
// such as 7 x 7 would waste half the lanes); only the depthwise step works in rows.
template <int W>
AVFUSED_INLINE void copy_in(const float* planes, int64_t channels, int64_t plane, int64_t flat, float* flat_planes) {
  for (int64_t c = 0; c < channels; ++c) std::copy_n(planes + c * plane, plane, flat_planes + c * flat);
}

template <int W>
AVFUSED_INLINE void expand_group(const MlpArgs& a, int64_t e0, MlpScratch<W>& s, int64_t flat) {
  constexpr int G = MlpGeometry<W>::G;
  expand_plane<W>(a.w_in, a.b_in, a.channels, e0, s.input.data(), s.expanded.data(), flat);
  for (int g = 0; g < G; ++g) {
    for (int64_t y = 0; y < a.height; ++y) {
      std::copy_n(&s.expanded[g * flat + y * a.width], a.width, s.hidden[g].row(y));
    }
  }
}

template <int W>
AVFUSED_INLINE void mlp_image(const MlpArgs& a, int64_t n, MlpScratch<W>& s) {
  constexpr int G = MlpGeometry<W>::G;
  const int64_t channels = a.channels, plane = a.height * a.width, flat = round_up(plane, W);
  const float* x = a.x + n * channels * plane;
  float* out = a.out + n * channels * plane;
  copy_in<W>(x, channels, plane, flat, s.input.data());
  for (int64_t c = 0; c < channels; ++c) std::fill_n(&s.total[c * flat], flat, a.b_out[c]);
  for (int64_t e0 = 0; e0 < a.expanded; e0 += G) {
    expand_group<W>(a, e0, s, flat);
    depthwise_group<W, true>(s.hidden, a.w_dw, a.b_dw, e0, a.height, a.width, flat, s.activated.data());
    project_plane<W>(a.w_out, a.expanded, channels, e0, s.activated.data(), s.total.data(), flat);
  }
  for (int64_t c = 0; c < channels; ++c) std::copy_n(&s.total[c * flat], plane, out + c * plane);
}

template <int W>
struct MlpBackwardScratch : MlpScratch<W> {
  std::vector<float> grad, d_pre_dense, d_hidden;  // C flat planes of grad; G flat planes of W_out^T grad, dh
  std::vector<BorderedPlane> d_pre;                // G bordered planes of dpre
  MlpBackwardScratch(const MlpArgs& a, int64_t flat, int64_t cols)
      : MlpScratch<W>(a, flat, cols),
        grad(a.channels * flat, 0.f),
        d_pre_dense(MlpGeometry<W>::G * flat + cols),
        d_hidden(MlpGeometry<W>::G * flat + cols),
        d_pre(MlpGeometry<W>::G, BorderedPlane(a.height, cols, 1)) {}
};

template <int W>
AVFUSED_INLINE void mlp_backward_image(const MlpArgs& a, int64_t n, MlpBackwardScratch<W>& s, double* sums,
                                       const MlpGradientLayout& at) {
  using V = typename simd::Vec<W>::f;
  constexpr int G = MlpGeometry<W>::G;
  const int64_t channels = a.channels, expanded = a.expanded, height = a.height, width = a.width;
  const int64_t plane = height * width, flat = round_up(plane, W), cols = round_up(width, W);
  const int64_t image = n * channels * plane;
  float* pre = s.activated.data();  // the forward's buffer, here before the ReLU
  float* d_x = s.total.data();
  copy_in<W>(a.x + image, channels, plane, flat, s.input.data());
  copy_in<W>(a.grad + image, channels, plane, flat, s.grad.data());
  std::fill(s.total.begin(), s.total.end(), 0.f);
  for (int64_t c = 0; c < channels; ++c) sums[at.b_out + c] += plane_sum<W>(&s.grad[c * flat], flat, 1, flat);
  for (int64_t e0 = 0; e0 < expanded; e0 += G) {
    expand_group<W>(a, e0, s, flat);
    depthwise_group<W, false>(s.hidden, a.w_dw, a.b_dw, e0, height, width, flat, pre);
    group_dots<W, true>(s.grad.data(), channels, pre, flat, sums + at.w_out + e0, expanded, 1);
    expand_plane<W>(a.w_out_t, nullptr, channels, e0, s.grad.data(), s.d_pre_dense.data(), flat);
    for (int g = 0; g < G; ++g) {
      const int64_t e = e0 + g;
      for (int64_t y = 0; y < height; ++y) {  // dpre = da [pre > 0]: rows `cols` wide, then the columns past the
        float* row = s.d_pre[g].row(y);       // image zeroed (they read the next row)
        const int64_t offset = g * flat + y * width;
        for (int64_t x = 0; x < cols; x += W) {
          const V p = simd::load<V>(pre + offset + x);
          simd::store(row + x, p > 0.f ? simd::load<V>(&s.d_pre_dense[offset + x]) : V{});
        }
        std::fill(row + width, row + cols, 0.f);
      }
      sums[at.b_dw + e] += plane_sum<W>(s.d_pre[g].row(0), s.d_pre[g].stride, height, cols);
      depthwise_weight_grad<W, 3, 1>(s.d_pre[g].row(0), s.d_pre[g].stride, s.hidden[g].window(0), s.hidden[g].stride,
                                     height, cols, sums + at.w_dw + e * 9);
    }
    depthwise_group<W, false>(s.d_pre, a.w_dw_mirrored, nullptr, e0, height, width, flat, s.d_hidden.data());
    for (int g = 0; g < G; ++g) sums[at.b_in + e0 + g] += plane_sum<W>(&s.d_hidden[g * flat], flat, 1, flat);
    group_dots<W, false>(s.input.data(), channels, s.d_hidden.data(), flat, sums + at.w_in + e0 * channels, 1,
                         channels);
    project_plane<W>(a.w_in_t, expanded, channels, e0, s.d_hidden.data(), d_x, flat);
  }
  for (int64_t c = 0; c < channels; ++c) std::copy_n(d_x + c * flat, plane, a.out + image + c * plane);
}

template <int W>
AVFUSED_INLINE void mlp_images(const MlpArgs& a, int64_t begin, int64_t end) {
  const int64_t flat = round_up(a.height * a.width, W), cols = round_up(a.width, W);
  MlpScratch<W> scratch(a, flat, cols);
  for (int64_t n = begin; n < end; ++n) mlp_image<W>(a, n, scratch);
}

template <int W>
AVFUSED_INLINE void mlp_backward_images(const MlpArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  const int64_t flat = round_up(a.height * a.width, W), cols = round_up(a.width, W);
  MlpBackwardScratch<W> scratch(a, flat, cols);
  const MlpGradientLayout layout(a.channels, a.expanded);
  double* mine = sums.mine();
  for (int64_t n = begin; n < end; ++n) mlp_backward_image<W>(a, n, scratch, mine, layout);
}

AVFUSED_TARGET_CLONES
void mlp_images_w8(const MlpArgs& a, int64_t begin, int64_t end) { mlp_images<8>(a, begin, end); }
AVFUSED_TARGET_CLONES
void mlp_backward_images_w8(const MlpArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  mlp_backward_images<8>(a, begin, end, sums);
}
void mlp_images_w16_portable(const MlpArgs& a, int64_t begin, int64_t end) { mlp_images<16>(a, begin, end); }
void mlp_backward_images_w16_portable(const MlpArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  mlp_backward_images<16>(a, begin, end, sums);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void mlp_images_w16(const MlpArgs& a, int64_t begin, int64_t end) { mlp_images<16>(a, begin, end); }
AVFUSED_TARGET_AVX512
void mlp_backward_images_w16(const MlpArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  mlp_backward_images<16>(a, begin, end, sums);
}
#endif

// `weight` (rows, cols) zero-padded to `padded_rows` rows, contiguous (no copy where it has them already, as
// the model's E = 4 C always does).
at::Tensor pad_rows(const at::Tensor& weight, int64_t padded_rows) {
  if (weight.size(0) == padded_rows) return weight.reshape({padded_rows, -1}).contiguous();
  at::Tensor padded = at::zeros({padded_rows, weight.numel() / weight.size(0)}, weight.options());
  padded.narrow(0, 0, weight.size(0)).copy_(weight.reshape({weight.size(0), -1}));
  return padded;
}

// The validated CPU inputs with E zero-padded to whole groups: the weights padded, x contiguous.
struct MlpInputs {
  at::Tensor x, w_in, b_in, w_dw, b_dw, w_out, b_out;  // w_in (Ep, C), w_out (C, Ep); b_out undefined in backward
  int64_t channels, expanded, padded;
};
MlpInputs check_cpu_inputs(const char* op, const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in,
                           const at::Tensor& w_dw, const at::Tensor& b_dw, const at::Tensor& w_out,
                           const at::Tensor& b_out) {
  const auto [channels, expanded] = check_conv_mlp_shapes(x, w_in, b_in, w_dw, b_dw, w_out, b_out);
  const char* names[] = {"x", "w_in", "b_in", "w_dw", "b_dw", "w_out", "b_out"};
  const at::Tensor* tensors[] = {&x, &w_in, &b_in, &w_dw, &b_dw, &w_out, &b_out};
  for (int i = 0; i < 7; ++i) {
    if (tensors[i]->defined()) check_image_op_tensor(op, names[i], *tensors[i], tensors[i]->sizes());
  }
  const int64_t padded = round_up(expanded, kExpandedPadding);  // zero channels: hidden 0 -> ReLU(0) -> nothing
  MlpInputs in;
  in.x = x.contiguous();
  in.w_in = pad_rows(w_in, padded);
  in.b_in = pad_rows(b_in.reshape({-1, 1}), padded);
  in.w_dw = pad_rows(w_dw, padded);
  in.b_dw = pad_rows(b_dw.reshape({-1, 1}), padded);
  in.w_out = padded == expanded ? w_out.contiguous() : pad_rows(w_out.t(), padded).t().contiguous();
  if (b_out.defined()) in.b_out = b_out.contiguous();
  in.channels = channels;
  in.expanded = expanded;
  in.padded = padded;
  return in;
}

MlpArgs make_args(const MlpInputs& in, at::Tensor& out) {
  return MlpArgs{in.x.data_ptr<float>(),    in.w_in.data_ptr<float>(), in.b_in.data_ptr<float>(),
                 in.w_dw.data_ptr<float>(), in.b_dw.data_ptr<float>(), in.w_out.data_ptr<float>(),
                 in.b_out.defined() ? in.b_out.data_ptr<float>() : nullptr,
                 out.data_ptr<float>(),     in.channels,               in.padded,
                 in.x.size(2),              in.x.size(3)};
}

at::Tensor conv_mlp_cpu(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_dw,
                        const at::Tensor& b_dw, const at::Tensor& w_out, const at::Tensor& b_out) {
  TORCH_CHECK(b_out.defined(), "avfused_ext.conv_mlp: b_out is required");
  const MlpInputs in = check_cpu_inputs("conv_mlp", x, w_in, b_in, w_dw, b_dw, w_out, b_out);
  at::Tensor out = at::empty_like(in.x);
  const MlpArgs args = make_args(in, out);
  const Lanes lanes = image_kernel_lanes();
  at::parallel_for(0, in.x.size(0), 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (lanes == Lanes::k16) return mlp_images_w16(args, begin, end);
#endif
    if (lanes == Lanes::k16Portable) return mlp_images_w16_portable(args, begin, end);
    mlp_images_w8(args, begin, end);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv_mlp_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in,
    const at::Tensor& w_dw, const at::Tensor& b_dw, const at::Tensor& w_out) {
  const MlpInputs in = check_cpu_inputs("conv_mlp_backward", x, w_in, b_in, w_dw, b_dw, w_out, at::Tensor());
  check_image_op_tensor("conv_mlp_backward", "grad", grad, in.x.sizes());
  const at::Tensor grad_c = grad.contiguous();
  const int64_t c = in.channels, e = in.expanded, ep = in.padded;
  const at::Tensor w_in_t = in.w_in.t().contiguous(), w_out_t = in.w_out.t().contiguous();
  const at::Tensor w_dw_mirrored = in.w_dw.flip({1}).contiguous();  // the 3 x 3 taps in reverse order
  at::Tensor dx = at::empty_like(in.x);
  MlpArgs args = make_args(in, dx);
  args.grad = grad_c.data_ptr<float>();
  args.w_in_t = w_in_t.data_ptr<float>();
  args.w_out_t = w_out_t.data_ptr<float>();
  args.w_dw_mirrored = w_dw_mirrored.data_ptr<float>();
  const MlpGradientLayout layout(c, ep);
  GradientSums sums(layout.size);
  const Lanes lanes = image_kernel_lanes();
  at::parallel_for(0, in.x.size(0), 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (lanes == Lanes::k16) return mlp_backward_images_w16(args, begin, end, sums);
#endif
    if (lanes == Lanes::k16Portable) return mlp_backward_images_w16_portable(args, begin, end, sums);
    mlp_backward_images_w8(args, begin, end, sums);
  });
  const at::TensorOptions options = in.x.options();
  at::Tensor d_w_in = at::empty({ep, c}, options), d_b_in = at::empty({ep}, options);
  at::Tensor d_w_dw = at::empty({ep, 9}, options), d_b_dw = at::empty({ep}, options);
  at::Tensor d_w_out = at::empty({c, ep}, options), d_b_out = at::empty({c}, options);
  sums.total(layout.w_in, ep * c, d_w_in.data_ptr<float>());
  sums.total(layout.b_in, ep, d_b_in.data_ptr<float>());
  sums.total(layout.w_dw, ep * 9, d_w_dw.data_ptr<float>());
  sums.total(layout.b_dw, ep, d_b_dw.data_ptr<float>());
  sums.total(layout.w_out, c * ep, d_w_out.data_ptr<float>());
  sums.total(layout.b_out, c, d_b_out.data_ptr<float>());
  return {dx,
          d_w_in.narrow(0, 0, e).contiguous(),
          d_b_in.narrow(0, 0, e).contiguous(),
          d_w_dw.narrow(0, 0, e).contiguous(),
          d_b_dw.narrow(0, 0, e).contiguous(),
          d_w_out.narrow(1, 0, e).contiguous(),
          d_b_out};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("conv_mlp(Tensor x, Tensor w_in, Tensor b_in, Tensor w_dw, Tensor b_dw, Tensor w_out, Tensor b_out) -> Tensor");
  m.def(
      "conv_mlp_backward(Tensor grad, Tensor x, Tensor w_in, Tensor b_in, Tensor w_dw, Tensor b_dw, Tensor w_out) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) {
  m.impl("conv_mlp", &avfused::conv_mlp_cpu);
  m.impl("conv_mlp_backward", &avfused::conv_mlp_backward_cpu);
}
