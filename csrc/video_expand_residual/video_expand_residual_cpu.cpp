// video_expand_residual on the CPU, one pass per image: the image's tokens are laid into one
// zero-bordered map plane, then each channel's 3x3 of the map, its bias and the scaled residual are
// written row by row, so neither the (C, H, W) expansion nor the map reach memory.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/depthwise.h"
#include "video_expand_residual.h"

namespace avfused {
namespace {

using namespace depthwise;

struct ExpandArgs {
  const float* video;   // (N, C, H, W)
  const float* tokens;  // (N / T, T R Q, window^2): image n's R Q tokens at n R Q
  const float* weight;  // (C, 9)
  const float* bias;    // (C,)
  const float* scale;   // (C,)
  float* out;           // (N, C, H, W)
  int64_t channels, height, width, window, cols;  // cols: windows per row of the map
};

template <int W>
AVFUSED_INLINE void expand_image(const ExpandArgs& a, int64_t n) {
  using V = typename simd::Vec<W>::f;
  const int64_t channels = a.channels, height = a.height, width = a.width, plane = height * width;
  const int64_t window = a.window, values = window * window, lanes = round_up(width, W);
  const int64_t rows = (height + window - 1) / window;
  BorderedPlane map(height, lanes, 1);  // columns past the width stay zero: the right padding
  const float* tokens = a.tokens + n * rows * a.cols * values;
  for (int64_t y = 0; y < height; ++y) {
    const float* token_row = tokens + (y / window) * a.cols * values + (y % window) * window;
    float* row = map.row(y);
    for (int64_t x = 0; x < width; ++x) row[x] = token_row[(x / window) * values + x % window];
  }
  std::vector<float> expanded(lanes);
  const float* video = a.video + n * channels * plane;
  float* out = a.out + n * channels * plane;
  for (int64_t c = 0; c < channels; ++c) {
    const V scale = simd::splat<V>(a.scale[c]);
    for (int64_t y = 0; y < height; ++y) {
      depthwise_row<W, 3, 1, false>(map.window(y), map.stride, a.weight + c * 9, a.bias[c], expanded.data(), lanes);
      const float* source = video + c * plane + y * width;
      float* target = out + c * plane + y * width;
      int64_t x = 0;
      for (; x + W <= width; x += W) {
        simd::store(target + x, simd::load<V>(expanded.data() + x) + scale * simd::load<V>(source + x));
      }
      if (x < width) {
        const int64_t count = width - x;
        store_first(target + x, simd::load<V>(expanded.data() + x) + scale * load_first<V>(source + x, count), count);
      }
    }
  }
}

AVFUSED_TARGET_CLONES
void expand_images_w8(const ExpandArgs& a, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) expand_image<8>(a, n);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void expand_images_w16(const ExpandArgs& a, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) expand_image<16>(a, n);
}
#endif

at::Tensor video_expand_residual_cpu(const at::Tensor& video, const at::Tensor& tokens, const at::Tensor& weight,
                                     const at::Tensor& bias, const at::Tensor& scale, int64_t window) {
  const char* op = "video_expand_residual";
  const std::vector<int64_t> sizes = check_images(op, "video", video);
  const int64_t channels = sizes[1];
  TORCH_CHECK(window > 0, "avfused_ext.video_expand_residual: window must be positive, got ", window);
  TORCH_CHECK(tokens.dim() == 3 && tokens.size(0) > 0 && sizes[0] % tokens.size(0) == 0,
              "avfused_ext.video_expand_residual: tokens must be (B, T R Q, window^2) for whole clips of the ",
              sizes[0], " images, got ", tokens.sizes());
  const int64_t frames = sizes[0] / tokens.size(0);
  const int64_t rows = (sizes[2] + window - 1) / window, cols = (sizes[3] + window - 1) / window;
  check_image_op_tensor(op, "tokens", tokens, {tokens.size(0), frames * rows * cols, window * window});
  check_image_op_tensor(op, "weight", weight, {channels, 1, 3, 3});
  check_image_op_tensor(op, "bias", bias, {channels});
  check_image_op_tensor(op, "scale", scale, {channels});
  const at::Tensor video_c = video.contiguous(), tokens_c = tokens.contiguous(), weight_c = weight.contiguous();
  const at::Tensor bias_c = bias.contiguous(), scale_c = scale.contiguous();
  at::Tensor out = at::empty_like(video_c);
  const ExpandArgs args{video_c.data_ptr<float>(), tokens_c.data_ptr<float>(), weight_c.data_ptr<float>(),
                        bias_c.data_ptr<float>(),  scale_c.data_ptr<float>(),  out.data_ptr<float>(),
                        channels,                  sizes[2],                   sizes[3],
                        window,                    cols};
  const bool wide = simd::use_wide_vectors();
  at::parallel_for(0, sizes[0], 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (wide) return expand_images_w16(args, begin, end);
#endif
    expand_images_w8(args, begin, end);
  });
  return out;
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("video_expand_residual(Tensor video, Tensor tokens, Tensor weight, Tensor bias, Tensor scale, int window) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) { m.impl("video_expand_residual", &avfused::video_expand_residual_cpu); }
