// large_kernel_attention on the CPU, fused per image so that no (N, C, H, W) intermediate reaches memory:
// each channel's dw5x5 -> dw7x7 (dilation 3) runs through two zero-bordered plane buffers into the
// image's context planes; the 1x1 + bias then gates p, row by row.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/depthwise.h"
#include "large_kernel_attention.h"

namespace avfused {
namespace {

using namespace depthwise;

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

at::Tensor large_kernel_attention_cpu(const at::Tensor& p, const at::Tensor& w5, const at::Tensor& b5,
                                      const at::Tensor& w7, const at::Tensor& b7, const at::Tensor& w1,
                                      const at::Tensor& b1) {
  const char* op = "large_kernel_attention";
  const std::vector<int64_t> sizes = check_images(op, "p", p);
  const int64_t channels = sizes[1];
  check_image_op_tensor(op, "w5", w5, {channels, 25});
  check_image_op_tensor(op, "w7", w7, {channels, 49});
  check_image_op_tensor(op, "w1", w1, {channels, channels});
  for (const at::Tensor* bias : {&b5, &b7, &b1}) check_image_op_tensor(op, "bias", *bias, {channels});
  const at::Tensor p_c = p.contiguous(), w5_c = w5.contiguous(), b5_c = b5.contiguous(), w7_c = w7.contiguous(),
                   b7_c = b7.contiguous(), w1_c = w1.contiguous(), b1_c = b1.contiguous();
  at::Tensor out = at::empty_like(p_c);
  const LkaArgs args{p_c.data_ptr<float>(),  w5_c.data_ptr<float>(), b5_c.data_ptr<float>(),
                     w7_c.data_ptr<float>(), b7_c.data_ptr<float>(), w1_c.data_ptr<float>(),
                     b1_c.data_ptr<float>(), out.data_ptr<float>(),  channels,
                     sizes[2],               sizes[3]};
  const bool wide = simd::use_wide_vectors();
  at::parallel_for(0, sizes[0], 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (wide) return lka_images_w16(args, begin, end);
#endif
    lka_images_w8(args, begin, end);
  });
  return out;
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("large_kernel_attention(Tensor p, Tensor w5, Tensor b5, Tensor w7, Tensor b7, Tensor w1, Tensor b1) -> Tensor");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) { m.impl("large_kernel_attention", &avfused::large_kernel_attention_cpu); }
