// large_kernel_attention_residual on the CPU: the folded VPM's attention branch, x + w_out (p g) with
// p = ReLU(w_in x + b_in) and g the large-kernel attention's gate, fused per image. Replaces two 1x1
// convolutions as batched matrix products around the large-kernel attention (each a pass over the image
// batch, with a copy of its bias or residual into the output first): per thread, the image's p planes and
// its context planes (as large_kernel_attention computes them) stay in cache, p g overwrites p, and its
// projection plus x is the only write to memory. Forward only: inference.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../large_kernel_attention/large_kernel_attention_cpu.h"
#include "large_kernel_attention_residual.h"

namespace avfused {
namespace {

using namespace lka_cpu;

struct ResidualArgs {
  LkaArgs lka;         // its p is unused: each thread builds p from x
  const float* x;      // (N, C, H, W)
  const float* w_in;   // (C, C)
  const float* b_in;   // (C,)
  const float* w_out;  // (C, C)
};

// out[co] = start[co] + sum_ci w[co][ci] in[ci] for output channels co .. co + B - 1 over U W values of each
// plane (planes in_stride apart in `in`, out_stride apart in residual and out); start is residual[co] where
// there is a residual, else bias[co]; ReLU'd where kRelu.
template <int W, int U, int B, bool kRelu>
AVFUSED_INLINE void pointwise_block(const float* in, int64_t in_stride, const float* w, const float* bias,
                                    const float* residual, float* out, int64_t out_stride, int64_t channels,
                                    int64_t co) {
  using V = typename simd::Vec<W>::f;
  V acc[B][U];
  for (int b = 0; b < B; ++b) {
    for (int u = 0; u < U; ++u) {
      acc[b][u] = residual != nullptr ? simd::load<V>(residual + (co + b) * out_stride + u * W)
                                      : simd::splat<V>(bias[co + b]);
    }
  }
  pointwise_accumulate<W, U, B>(in, in_stride, channels, w + co * channels, acc);
  for (int b = 0; b < B; ++b) {
    for (int u = 0; u < U; ++u) {
      simd::store(out + (co + b) * out_stride + u * W, kRelu ? (acc[b][u] > 0.f ? acc[b][u] : V{}) : acc[b][u]);
    }
  }
}

template <int W, int U, bool kRelu>
AVFUSED_INLINE void pointwise_chunk(const float* in, int64_t in_stride, const float* w, const float* bias,
                                    const float* residual, float* out, int64_t out_stride, int64_t channels) {
  constexpr int B = W == 16 ? 4 : 2;  // B U accumulators: 16 of AVX-512's 32 registers, 8 of AVX2's 16
  int64_t co = 0;
  for (; co + B <= channels; co += B) {
    pointwise_block<W, U, B, kRelu>(in, in_stride, w, bias, residual, out, out_stride, channels, co);
  }
  for (; co < channels; ++co) {
    pointwise_block<W, U, 1, kRelu>(in, in_stride, w, bias, residual, out, out_stride, channels, co);
  }
}

// A 1x1 convolution of one image's C planes (`plane` values each, contiguous), each plane as one row. The
// last partial vector of the planes goes through `stage` (3 C W floats): copied in once per channel, so the
// channel loops run on whole vectors only.
template <int W, bool kRelu>
AVFUSED_INLINE void pointwise_planes(const float* in, const float* w, const float* bias, const float* residual,
                                     float* out, int64_t plane, int64_t channels, float* stage) {
  int64_t i = 0;
  for (; i + kRowChunks * W <= plane; i += kRowChunks * W) {
    pointwise_chunk<W, kRowChunks, kRelu>(in + i, plane, w, bias, residual ? residual + i : nullptr, out + i, plane,
                                          channels);
  }
  for (; i + W <= plane; i += W) {
    pointwise_chunk<W, 1, kRelu>(in + i, plane, w, bias, residual ? residual + i : nullptr, out + i, plane, channels);
  }
  const int64_t rest = plane - i;
  if (rest == 0) return;
  float *stage_in = stage, *stage_residual = stage + channels * W, *stage_out = stage + 2 * channels * W;
  for (int64_t c = 0; c < channels; ++c) {
    std::fill_n(std::copy_n(in + c * plane + i, rest, stage_in + c * W), W - rest, 0.f);
    if (residual != nullptr) std::copy_n(residual + c * plane + i, rest, stage_residual + c * W);
  }
  pointwise_chunk<W, 1, kRelu>(stage_in, W, w, bias, residual ? stage_residual : nullptr, stage_out, W, channels);
  for (int64_t c = 0; c < channels; ++c) std::copy_n(stage_out + c * W, rest, out + c * plane + i);
}

// Per-thread buffers of one image.
template <int W>
struct ResidualScratch : LkaScratch<W> {
  std::vector<float> p;      // ReLU(w_in x + b_in), then p g in place: C planes of H x W
  std::vector<float> stage;  // the planes' last partial vector (pointwise_planes)
  explicit ResidualScratch(const LkaArgs& a)
      : LkaScratch<W>(a), p(a.channels * a.height * a.width), stage(3 * a.channels * W, 0.f) {}
};

template <int W>
AVFUSED_INLINE void residual_image(const ResidualArgs& r, int64_t n, ResidualScratch<W>& s) {
  const LkaArgs& a = r.lka;
  const int64_t plane = a.height * a.width, image = n * a.channels * plane;
  const float* x = r.x + image;
  float* p = s.p.data();
  pointwise_planes<W, true>(x, r.w_in, r.b_in, nullptr, p, plane, a.channels, s.stage.data());
  context_planes<W>(a, p, s.input, s.middle, s.context.data());
  gate_image<W, false>(a, s.context.data(), p, nullptr, p, nullptr);  // p g over p: each value read, then written
  pointwise_planes<W, false>(p, r.w_out, nullptr, x, a.out + image, plane, a.channels, s.stage.data());
}

template <int W>
AVFUSED_INLINE void residual_images(const ResidualArgs& r, int64_t begin, int64_t end) {
  ResidualScratch<W> scratch(r.lka);
  for (int64_t n = begin; n < end; ++n) residual_image<W>(r, n, scratch);
}

AVFUSED_TARGET_CLONES
void residual_images_w8(const ResidualArgs& r, int64_t begin, int64_t end) { residual_images<8>(r, begin, end); }
void residual_images_w16_portable(const ResidualArgs& r, int64_t begin, int64_t end) {
  residual_images<16>(r, begin, end);
}
#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void residual_images_w16(const ResidualArgs& r, int64_t begin, int64_t end) { residual_images<16>(r, begin, end); }
#endif

at::Tensor large_kernel_attention_residual_cpu(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in,
                                               const at::Tensor& w5, const at::Tensor& b5, const at::Tensor& w7,
                                               const at::Tensor& b7, const at::Tensor& w1, const at::Tensor& b1,
                                               const at::Tensor& w_out) {
  const char* op = "large_kernel_attention_residual";
  const int64_t channels = check_large_kernel_attention_residual_shapes(x, w_in, b_in, w5, b5, w7, b7, w1, b1, w_out);
  const char* names[] = {"x", "w_in", "b_in", "w5", "b5", "w7", "b7", "w1", "b1", "w_out"};
  const at::Tensor* given[] = {&x, &w_in, &b_in, &w5, &b5, &w7, &b7, &w1, &b1, &w_out};
  const int64_t flat[] = {-1, channels, 1, 25, 1, 49, 1, channels, 1, channels};  // columns of each weight
  at::Tensor tensors[10];
  for (int i = 0; i < 10; ++i) {
    check_image_op_tensor(op, names[i], *given[i], given[i]->sizes());
    tensors[i] = (i == 0 || flat[i] == 1 ? *given[i] : given[i]->reshape({channels, flat[i]})).contiguous();
  }
  at::Tensor out = at::empty_like(tensors[0]);
  auto data = [&](int i) { return tensors[i].data_ptr<float>(); };
  const ResidualArgs args{
      LkaArgs{nullptr, data(3), data(4), data(5), data(6), data(7), data(8), out.data_ptr<float>(), channels,
              x.size(2), x.size(3)},
      data(0), data(1), data(2), data(9)};
  const Lanes lanes = image_kernel_lanes();
  at::parallel_for(0, x.size(0), 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (lanes == Lanes::k16) return residual_images_w16(args, begin, end);
#endif
    if (lanes == Lanes::k16Portable) return residual_images_w16_portable(args, begin, end);
    residual_images_w8(args, begin, end);
  });
  return out;
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def(
      "large_kernel_attention_residual(Tensor x, Tensor w_in, Tensor b_in, Tensor w5, Tensor b5, Tensor w7, Tensor b7, "
      "Tensor w1, Tensor b1, Tensor w_out) -> Tensor");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) {
  m.impl("large_kernel_attention_residual", &avfused::large_kernel_attention_residual_cpu);
}
