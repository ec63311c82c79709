// video_squeeze_tokens on the CPU, one pass per image: each channel's dw3x3 + ReLU runs row by row
// through one zero-bordered plane and adds its share of the 1x1 to the image's one-channel map, which
// is then cut into window x window tokens; neither the (C, H, W) hidden layer nor the map reach memory.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/depthwise.h"
#include "video_squeeze_tokens.h"

namespace avfused {
namespace {

using namespace depthwise;

struct SqueezeArgs {
  const float* video;    // (N, C, H, W)
  const float* dw;       // (C, 9)
  const float* dw_bias;  // (C,)
  const float* weight;   // (C,)
  float bias;
  float* tokens;         // (N / T, T R Q, window^2): image n's R Q tokens at n R Q
  int64_t channels, height, width, window, rows, cols;
};

template <int W>
AVFUSED_INLINE void squeeze_image(const SqueezeArgs& a, int64_t n) {
  using V = typename simd::Vec<W>::f;
  const int64_t channels = a.channels, height = a.height, width = a.width, plane = height * width;
  const int64_t lanes = round_up(width, W);
  BorderedPlane input(height, lanes, 1);  // columns past the width stay zero: the right padding
  std::vector<float> hidden(lanes), map(height * lanes, a.bias);
  const float* video = a.video + n * channels * plane;
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t y = 0; y < height; ++y) std::copy_n(video + c * plane + y * width, width, input.row(y));
    const V weight = simd::splat<V>(a.weight[c]);
    for (int64_t y = 0; y < height; ++y) {
      depthwise_row<W, 3, 1, true>(input.window(y), input.stride, a.dw + c * 9, a.dw_bias[c], hidden.data(), lanes);
      float* row = map.data() + y * lanes;
      for (int64_t x = 0; x < lanes; x += W) {
        simd::store(row + x, simd::load<V>(row + x) + weight * simd::load<V>(hidden.data() + x));
      }
    }
  }
  const int64_t window = a.window, values = window * window;
  float* tokens = a.tokens + n * a.rows * a.cols * values;
  std::fill(tokens, tokens + a.rows * a.cols * values, 0.f);  // the windows' zero padding past the map
  for (int64_t y = 0; y < height; ++y) {
    float* token_row = tokens + (y / window) * a.cols * values + (y % window) * window;
    for (int64_t x = 0; x < width; ++x) token_row[(x / window) * values + x % window] = map[y * lanes + x];
  }
}

AVFUSED_TARGET_CLONES
void squeeze_images_w8(const SqueezeArgs& a, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) squeeze_image<8>(a, n);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void squeeze_images_w16(const SqueezeArgs& a, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) squeeze_image<16>(a, n);
}
#endif

at::Tensor video_squeeze_tokens_cpu(const at::Tensor& video, const at::Tensor& dw_weight, const at::Tensor& dw_bias,
                                    const at::Tensor& weight, const at::Tensor& bias, int64_t frames,
                                    int64_t window) {
  const char* op = "video_squeeze_tokens";
  const std::vector<int64_t> sizes = check_images(op, "video", video);
  const int64_t channels = sizes[1];
  check_image_op_tensor(op, "dw_weight", dw_weight, {channels, 1, 3, 3});
  check_image_op_tensor(op, "dw_bias", dw_bias, {channels});
  check_image_op_tensor(op, "weight", weight, {1, channels});
  check_image_op_tensor(op, "bias", bias, {1});
  TORCH_CHECK(window > 0, "avfused_ext.video_squeeze_tokens: window must be positive, got ", window);
  TORCH_CHECK(frames > 0 && sizes[0] % frames == 0, "avfused_ext.video_squeeze_tokens: ", sizes[0],
              " images are not whole clips of ", frames, " frames");
  const int64_t rows = (sizes[2] + window - 1) / window, cols = (sizes[3] + window - 1) / window;
  const at::Tensor video_c = video.contiguous(), dw_c = dw_weight.contiguous(), dw_bias_c = dw_bias.contiguous();
  const at::Tensor weight_c = weight.contiguous();
  at::Tensor tokens = at::empty({sizes[0] / frames, frames * rows * cols, window * window}, video.options());
  const SqueezeArgs args{video_c.data_ptr<float>(), dw_c.data_ptr<float>(), dw_bias_c.data_ptr<float>(),
                         weight_c.data_ptr<float>(), bias.item<float>(), tokens.data_ptr<float>(), channels,
                         sizes[2], sizes[3], window, rows, cols};
  const bool wide = simd::use_wide_vectors();
  at::parallel_for(0, sizes[0], 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (wide) return squeeze_images_w16(args, begin, end);
#endif
    squeeze_images_w8(args, begin, end);
  });
  return tokens;
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("video_squeeze_tokens(Tensor video, Tensor dw_weight, Tensor dw_bias, Tensor weight, Tensor bias, "
        "int frames, int window) -> Tensor");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) { m.impl("video_squeeze_tokens", &avfused::video_squeeze_tokens_cpu); }
