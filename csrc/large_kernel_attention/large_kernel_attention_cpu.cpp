// large_kernel_attention on the CPU, fused per image so that no (N, C, H, W) intermediate reaches memory.
// Forward: each channel's dw5x5 -> dw7x7 (dilation 3) runs through two zero-bordered plane buffers into
// the image's context planes; the 1x1 + bias then gates p, row by row.
// Backward: the same recompute of the context planes, then per row the gate's gradients (dp = grad g,
// dg = grad p into the image's dg planes), the 1x1's weight gradient as plane dot products, and per
// channel dc7 = W1^T dg, dc5 = dw7^T(dc7), dp += dw5^T(dc5) through bordered planes, each depthwise weight
// gradient a correlation of the two planes in hand. Working memory: two C-plane buffers and a few
// bordered planes per thread; weight gradients sum per thread in double.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "large_kernel_attention.h"
#include "large_kernel_attention_cpu.h"

namespace avfused {
namespace {

using namespace lka_cpu;

// Offsets of each gradient in a thread's block of GradientSums.
struct LkaGradientLayout {
  int64_t w5, b5, w7, b7, w1, b1, size;
  explicit LkaGradientLayout(int64_t c)
      : w5(0), b5(25 * c), w7(26 * c), b7(75 * c), w1(76 * c), b1(76 * c + c * c), size(77 * c + c * c) {}
};

template <int W>
AVFUSED_INLINE void lka_image(const LkaArgs& a, int64_t n, LkaScratch<W>& s) {
  const int64_t image = n * a.channels * a.height * a.width;
  context_planes<W>(a, a.p + image, s.input, s.middle, s.context.data());
  gate_image<W, false>(a, s.context.data(), a.p + image, nullptr, a.out + image, nullptr);
}

template <int W>
struct LkaBackwardScratch : LkaScratch<W> {
  std::vector<float> dgate;  // C planes of H x cols, zero past the image
  BorderedPlane d_context, d_middle;  // dc7 (border 9) and dc5 (border 2) of one channel
  std::vector<float> d_row;  // one row of dw5^T(dc5)
  LkaBackwardScratch(const LkaArgs& a)
      : LkaScratch<W>(a),
        dgate(this->context.size()),
        d_context(a.height, round_up(a.width, W), 9),
        d_middle(a.height, round_up(a.width, W), 2),
        d_row(round_up(a.width, W)) {}
};

template <int W>
AVFUSED_INLINE void lka_backward_image(const LkaArgs& a, int64_t n, LkaBackwardScratch<W>& s, double* sums,
                                       const LkaGradientLayout& at) {
  using V = typename simd::Vec<W>::f;
  const int64_t channels = a.channels, height = a.height, width = a.width, plane = height * width;
  const int64_t cols = round_up(width, W), context_plane = height * cols;
  const int64_t image = n * channels * plane;
  const float* p = a.p + image;
  float* dp = a.out + image;
  float* context = s.context.data();
  float* dgate = s.dgate.data();
  context_planes<W>(a, p, s.input, s.middle, context);
  gate_image<W, true>(a, context, p, a.grad + image, dp, dgate);
  for (int64_t co = 0; co < channels; ++co) {
    const float* dg = dgate + co * context_plane;
    sums[at.b1 + co] += plane_sum<W>(dg, context_plane, 1, context_plane);
    for (int64_t ci = 0; ci < channels; ++ci) {
      sums[at.w1 + co * channels + ci] += dot<W>(dg, context + ci * context_plane, context_plane);
    }
  }
  for (int64_t c = 0; c < channels; ++c) {
    // dc7[c] = sum_co w1[co][c] dg[co]: zero past the image, as dg is
    for (int64_t y = 0; y < height; ++y) {
      float* row = s.d_context.row(y);
      for (int64_t x = 0; x < cols; x += W) {
        V acc = V{};
        for (int64_t co = 0; co < channels; ++co) {
          acc += a.w1[co * channels + c] * simd::load<V>(dgate + co * context_plane + y * cols + x);
        }
        simd::store(row + x, acc);
      }
    }
    sums[at.b7 + c] += plane_sum<W>(s.d_context.row(0), s.d_context.stride, height, cols);
    // c5 of this channel again (the planes hold the last channel's)
    for (int64_t y = 0; y < height; ++y) std::copy_n(p + c * plane + y * width, width, s.input.row(y));
    for (int64_t y = 0; y < height; ++y) {
      float* row = s.middle.row(y);
      depthwise_row<W, 5, 1, false>(s.input.window(y), s.input.stride, a.w5 + c * 25, a.b5[c], row, cols);
      std::fill(row + width, row + cols, 0.f);
    }
    depthwise_weight_grad<W, 7, 3>(s.d_context.row(0), s.d_context.stride, s.middle.window(0), s.middle.stride,
                                   height, cols, sums + at.w7 + c * 49);
    for (int64_t y = 0; y < height; ++y) {
      float* row = s.d_middle.row(y);
      depthwise_row<W, 7, 3, false>(s.d_context.window(y), s.d_context.stride, a.w7_mirrored + c * 49, 0.f, row,
                                    cols);
      std::fill(row + width, row + cols, 0.f);  // dc5 exists only inside the image
    }
    sums[at.b5 + c] += plane_sum<W>(s.d_middle.row(0), s.d_middle.stride, height, cols);
    depthwise_weight_grad<W, 5, 1>(s.d_middle.row(0), s.d_middle.stride, s.input.window(0), s.input.stride, height,
                                   cols, sums + at.w5 + c * 25);
    for (int64_t y = 0; y < height; ++y) {
      depthwise_row<W, 5, 1, false>(s.d_middle.window(y), s.d_middle.stride, a.w5_mirrored + c * 25, 0.f,
                                    s.d_row.data(), cols);
      float* dp_row = dp + c * plane + y * width;
      for (int64_t x = 0; x < width; ++x) dp_row[x] += s.d_row[x];
    }
  }
}

template <int W>
AVFUSED_INLINE void lka_images(const LkaArgs& a, int64_t begin, int64_t end) {
  LkaScratch<W> scratch(a);
  for (int64_t n = begin; n < end; ++n) lka_image<W>(a, n, scratch);
}

template <int W>
AVFUSED_INLINE void lka_backward_images(const LkaArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  LkaBackwardScratch<W> scratch(a);
  const LkaGradientLayout layout(a.channels);
  double* mine = sums.mine();
  for (int64_t n = begin; n < end; ++n) lka_backward_image<W>(a, n, scratch, mine, layout);
}

AVFUSED_TARGET_CLONES
void lka_images_w8(const LkaArgs& a, int64_t begin, int64_t end) { lka_images<8>(a, begin, end); }
AVFUSED_TARGET_CLONES
void lka_backward_images_w8(const LkaArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  lka_backward_images<8>(a, begin, end, sums);
}
void lka_images_w16_portable(const LkaArgs& a, int64_t begin, int64_t end) { lka_images<16>(a, begin, end); }
void lka_backward_images_w16_portable(const LkaArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  lka_backward_images<16>(a, begin, end, sums);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void lka_images_w16(const LkaArgs& a, int64_t begin, int64_t end) { lka_images<16>(a, begin, end); }
AVFUSED_TARGET_AVX512
void lka_backward_images_w16(const LkaArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  lka_backward_images<16>(a, begin, end, sums);
}
#endif

// The validated contiguous float32 CPU inputs.
struct LkaInputs {
  at::Tensor p, w5, b5, w7, b7, w1, b1;
  int64_t channels;
};
LkaInputs check_cpu_inputs(const at::Tensor& p, const at::Tensor& w5, const at::Tensor& b5, const at::Tensor& w7,
                           const at::Tensor& b7, const at::Tensor& w1, const at::Tensor& b1) {
  const char* op = "large_kernel_attention";
  const int64_t channels = check_large_kernel_attention_shapes(p, w5, b5, w7, b7, w1, b1);
  const char* names[] = {"p", "w5", "b5", "w7", "b7", "w1", "b1"};
  const at::Tensor* tensors[] = {&p, &w5, &b5, &w7, &b7, &w1, &b1};
  for (int i = 0; i < 7; ++i) check_image_op_tensor(op, names[i], *tensors[i], tensors[i]->sizes());
  return {p.contiguous(), w5.contiguous(), b5.contiguous(), w7.contiguous(), b7.contiguous(), w1.contiguous(),
          b1.contiguous(), channels};
}

LkaArgs make_args(const LkaInputs& in, at::Tensor& out) {
  return LkaArgs{in.p.data_ptr<float>(),  in.w5.data_ptr<float>(), in.b5.data_ptr<float>(), in.w7.data_ptr<float>(),
                 in.b7.data_ptr<float>(), in.w1.data_ptr<float>(), in.b1.data_ptr<float>(), out.data_ptr<float>(),
                 in.channels,             in.p.size(2),            in.p.size(3)};
}

at::Tensor large_kernel_attention_cpu(const at::Tensor& p, const at::Tensor& w5, const at::Tensor& b5,
                                      const at::Tensor& w7, const at::Tensor& b7, const at::Tensor& w1,
                                      const at::Tensor& b1) {
  const LkaInputs in = check_cpu_inputs(p, w5, b5, w7, b7, w1, b1);
  at::Tensor out = at::empty_like(in.p);
  const LkaArgs args = make_args(in, out);
  const Lanes lanes = image_kernel_lanes();
  at::parallel_for(0, in.p.size(0), 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (lanes == Lanes::k16) return lka_images_w16(args, begin, end);
#endif
    if (lanes == Lanes::k16Portable) return lka_images_w16_portable(args, begin, end);
    lka_images_w8(args, begin, end);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
large_kernel_attention_backward_cpu(const at::Tensor& grad, const at::Tensor& p, const at::Tensor& w5,
                                    const at::Tensor& b5, const at::Tensor& w7, const at::Tensor& b7,
                                    const at::Tensor& w1, const at::Tensor& b1) {
  const LkaInputs in = check_cpu_inputs(p, w5, b5, w7, b7, w1, b1);
  check_image_op_tensor("large_kernel_attention_backward", "grad", grad, in.p.sizes());
  const at::Tensor grad_c = grad.contiguous();
  const int64_t c = in.channels;
  at::Tensor dp = at::empty_like(in.p);
  LkaArgs args = make_args(in, dp);
  const std::vector<float> w5_mirrored = mirrored_taps(args.w5, c, 5), w7_mirrored = mirrored_taps(args.w7, c, 7);
  args.grad = grad_c.data_ptr<float>();
  args.w5_mirrored = w5_mirrored.data();
  args.w7_mirrored = w7_mirrored.data();
  const LkaGradientLayout layout(c);
  GradientSums sums(layout.size);
  const Lanes lanes = image_kernel_lanes();
  at::parallel_for(0, in.p.size(0), 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (lanes == Lanes::k16) return lka_backward_images_w16(args, begin, end, sums);
#endif
    if (lanes == Lanes::k16Portable) return lka_backward_images_w16_portable(args, begin, end, sums);
    lka_backward_images_w8(args, begin, end, sums);
  });
  const at::TensorOptions options = in.p.options();
  at::Tensor d_w5 = at::empty({c, 25}, options), d_b5 = at::empty({c}, options), d_w7 = at::empty({c, 49}, options);
  at::Tensor d_b7 = at::empty({c}, options), d_w1 = at::empty({c, c}, options), d_b1 = at::empty({c}, options);
  sums.total(layout.w5, 25 * c, d_w5.data_ptr<float>());
  sums.total(layout.b5, c, d_b5.data_ptr<float>());
  sums.total(layout.w7, 49 * c, d_w7.data_ptr<float>());
  sums.total(layout.b7, c, d_b7.data_ptr<float>());
  sums.total(layout.w1, c * c, d_w1.data_ptr<float>());
  sums.total(layout.b1, c, d_b1.data_ptr<float>());
  return {dp, d_w5, d_b5, d_w7, d_b7, d_w1, d_b1};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("large_kernel_attention(Tensor p, Tensor w5, Tensor b5, Tensor w7, Tensor b7, Tensor w1, Tensor b1) -> Tensor");
  m.def(
      "large_kernel_attention_backward(Tensor grad, Tensor p, Tensor w5, Tensor b5, Tensor w7, Tensor b7, Tensor w1, "
      "Tensor b1) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) {
  m.impl("large_kernel_attention", &avfused::large_kernel_attention_cpu);
  m.impl("large_kernel_attention_backward", &avfused::large_kernel_attention_backward_cpu);
}
