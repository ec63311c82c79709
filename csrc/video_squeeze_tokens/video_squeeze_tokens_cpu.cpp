// video_squeeze_tokens on the CPU, one pass per image: each channel's dw3x3 + ReLU runs row by row
// through one zero-bordered plane and adds its share of the 1x1 to the image's one-channel map, which
// is then cut into window x window tokens; neither the (C, H, W) hidden layer nor the map reach memory.
// Backward, per image: the token gradients are put back on one map plane; per channel z is recomputed
// row by row from the bordered video plane into the bordered dz plane, whose correlation with the video
// plane is the dw3x3 weight gradient and whose transposed convolution is the video gradient. Weight
// gradients sum per thread in double.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
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
  // backward only
  const float* grad_tokens = nullptr;  // laid out as tokens
  float* grad_video = nullptr;         // (N, C, H, W)
  const float* dw_mirrored = nullptr;  // (C, 9): the transposed convolution's taps
};

// Offsets of each weight gradient in a thread's block of GradientSums.
struct SqueezeGradientLayout {
  int64_t dw, dw_bias, weight, bias, size;
  explicit SqueezeGradientLayout(int64_t c) : dw(0), dw_bias(9 * c), weight(10 * c), bias(11 * c), size(11 * c + 1) {}
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

// Per-thread buffers of the backward, reused across the thread's images.
template <int W>
struct SqueezeBackwardScratch {
  BorderedPlane input, d_hidden;  // video and dz of one channel (border 1: the dw3x3's padding)
  std::vector<float> d_map, row;  // the map's gradient (zero past the width), one row of z or d_video
  explicit SqueezeBackwardScratch(const SqueezeArgs& a)
      : input(a.height, round_up(a.width, W), 1),
        d_hidden(a.height, round_up(a.width, W), 1),
        d_map(a.height * round_up(a.width, W), 0.f),
        row(round_up(a.width, W)) {}
};

template <int W>
AVFUSED_INLINE void squeeze_backward_image(const SqueezeArgs& a, int64_t n, SqueezeBackwardScratch<W>& s,
                                           double* sums, const SqueezeGradientLayout& at) {
  using V = typename simd::Vec<W>::f;
  const int64_t channels = a.channels, height = a.height, width = a.width, plane = height * width;
  const int64_t lanes = round_up(width, W), window = a.window, values = window * window;
  const float* grad = a.grad_tokens + n * a.rows * a.cols * values;
  for (int64_t y = 0; y < height; ++y) {  // the padding's token values have no gradient path: dropped
    const float* token_row = grad + (y / window) * a.cols * values + (y % window) * window;
    for (int64_t x = 0; x < width; ++x) s.d_map[y * lanes + x] = token_row[(x / window) * values + x % window];
  }
  sums[at.bias] += plane_sum<W>(s.d_map.data(), lanes, height, lanes);
  const float* video = a.video + n * channels * plane;
  float* grad_video = a.grad_video + n * channels * plane;
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t y = 0; y < height; ++y) std::copy_n(video + c * plane + y * width, width, s.input.row(y));
    const V weight = simd::splat<V>(a.weight[c]);
    V d_weight = V{};
    for (int64_t y = 0; y < height; ++y) {
      depthwise_row<W, 3, 1, false>(s.input.window(y), s.input.stride, a.dw + c * 9, a.dw_bias[c], s.row.data(),
                                    lanes);
      const float* d_map = s.d_map.data() + y * lanes;
      float* dz = s.d_hidden.row(y);
      for (int64_t x = 0; x < lanes; x += W) {  // d_map is zero past the width, so dz is too
        const V z = simd::load<V>(s.row.data() + x), g = simd::load<V>(d_map + x);
        d_weight += (z > 0.f ? z : V{}) * g;
        simd::store(dz + x, z > 0.f ? weight * g : V{});
      }
    }
    sums[at.weight + c] += horizontal_sum(d_weight);
    sums[at.dw_bias + c] += plane_sum<W>(s.d_hidden.row(0), s.d_hidden.stride, height, lanes);
    depthwise_weight_grad<W, 3, 1>(s.d_hidden.row(0), s.d_hidden.stride, s.input.window(0), s.input.stride, height,
                                   lanes, sums + at.dw + c * 9);
    for (int64_t y = 0; y < height; ++y) {
      depthwise_row<W, 3, 1, false>(s.d_hidden.window(y), s.d_hidden.stride, a.dw_mirrored + c * 9, 0.f,
                                    s.row.data(), lanes);
      std::copy_n(s.row.data(), width, grad_video + c * plane + y * width);
    }
  }
}

template <int W>
AVFUSED_INLINE void squeeze_images(const SqueezeArgs& a, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) squeeze_image<W>(a, n);
}

template <int W>
AVFUSED_INLINE void squeeze_backward_images(const SqueezeArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  SqueezeBackwardScratch<W> scratch(a);
  const SqueezeGradientLayout layout(a.channels);
  double* mine = sums.mine();
  for (int64_t n = begin; n < end; ++n) squeeze_backward_image<W>(a, n, scratch, mine, layout);
}

AVFUSED_TARGET_CLONES
void squeeze_images_w8(const SqueezeArgs& a, int64_t begin, int64_t end) { squeeze_images<8>(a, begin, end); }
AVFUSED_TARGET_CLONES
void squeeze_backward_images_w8(const SqueezeArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  squeeze_backward_images<8>(a, begin, end, sums);
}
void squeeze_images_w16_portable(const SqueezeArgs& a, int64_t begin, int64_t end) {
  squeeze_images<16>(a, begin, end);
}
void squeeze_backward_images_w16_portable(const SqueezeArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  squeeze_backward_images<16>(a, begin, end, sums);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void squeeze_images_w16(const SqueezeArgs& a, int64_t begin, int64_t end) { squeeze_images<16>(a, begin, end); }
AVFUSED_TARGET_AVX512
void squeeze_backward_images_w16(const SqueezeArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  squeeze_backward_images<16>(a, begin, end, sums);
}
#endif

// The validated contiguous float32 CPU inputs.
struct SqueezeInputs {
  at::Tensor video, dw, dw_bias, weight;
  float bias;
  int64_t images, channels, height, width, frames, window, rows, cols;
};

SqueezeInputs check_cpu_inputs(const char* op, const at::Tensor& video, const at::Tensor& dw_weight,
                               const at::Tensor& dw_bias, const at::Tensor& weight, const at::Tensor& bias,
                               int64_t frames, int64_t window) {
  const std::vector<int64_t> sizes = check_images(op, "video", video);
  const int64_t channels = sizes[1];
  check_image_op_tensor(op, "dw_weight", dw_weight, {channels, 1, 3, 3});
  check_image_op_tensor(op, "dw_bias", dw_bias, {channels});
  check_image_op_tensor(op, "weight", weight, {1, channels});
  check_image_op_tensor(op, "bias", bias, {1});
  TORCH_CHECK(window > 0, "avfused_ext.", op, ": window must be positive, got ", window);
  TORCH_CHECK(frames > 0 && sizes[0] % frames == 0, "avfused_ext.", op, ": ", sizes[0],
              " images are not whole clips of ", frames, " frames");
  return {video.contiguous(), dw_weight.contiguous(), dw_bias.contiguous(), weight.contiguous(), bias.item<float>(),
          sizes[0], channels, sizes[2], sizes[3], frames, window, (sizes[2] + window - 1) / window,
          (sizes[3] + window - 1) / window};
}

SqueezeArgs make_args(const SqueezeInputs& in, float* tokens) {
  return SqueezeArgs{in.video.data_ptr<float>(), in.dw.data_ptr<float>(), in.dw_bias.data_ptr<float>(),
                     in.weight.data_ptr<float>(), in.bias, tokens, in.channels, in.height, in.width, in.window,
                     in.rows, in.cols};
}

at::Tensor video_squeeze_tokens_cpu(const at::Tensor& video, const at::Tensor& dw_weight, const at::Tensor& dw_bias,
                                    const at::Tensor& weight, const at::Tensor& bias, int64_t frames,
                                    int64_t window) {
  const SqueezeInputs in =
      check_cpu_inputs("video_squeeze_tokens", video, dw_weight, dw_bias, weight, bias, frames, window);
  at::Tensor tokens = at::empty({in.images / frames, frames * in.rows * in.cols, window * window}, in.video.options());
  const SqueezeArgs args = make_args(in, tokens.data_ptr<float>());
  const Lanes lanes = image_kernel_lanes();
  at::parallel_for(0, in.images, 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (lanes == Lanes::k16) return squeeze_images_w16(args, begin, end);
#endif
    if (lanes == Lanes::k16Portable) return squeeze_images_w16_portable(args, begin, end);
    squeeze_images_w8(args, begin, end);
  });
  return tokens;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> video_squeeze_tokens_backward_cpu(
    const at::Tensor& grad_tokens, const at::Tensor& video, const at::Tensor& dw_weight, const at::Tensor& dw_bias,
    const at::Tensor& weight, const at::Tensor& bias, int64_t frames, int64_t window) {
  const char* op = "video_squeeze_tokens_backward";
  const SqueezeInputs in = check_cpu_inputs(op, video, dw_weight, dw_bias, weight, bias, frames, window);
  check_image_op_tensor(op, "grad_tokens", grad_tokens,
                        {in.images / frames, frames * in.rows * in.cols, window * window});
  const at::Tensor grad_c = grad_tokens.contiguous();
  const int64_t c = in.channels;
  at::Tensor grad_video = at::empty_like(in.video);
  SqueezeArgs args = make_args(in, nullptr);
  args.grad_tokens = grad_c.data_ptr<float>();
  const std::vector<float> dw_mirrored = mirrored_taps(args.dw, c, 3);
  args.grad_video = grad_video.data_ptr<float>();
  args.dw_mirrored = dw_mirrored.data();
  const SqueezeGradientLayout layout(c);
  GradientSums sums(layout.size);
  const Lanes lanes = image_kernel_lanes();
  at::parallel_for(0, in.images, 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (lanes == Lanes::k16) return squeeze_backward_images_w16(args, begin, end, sums);
#endif
    if (lanes == Lanes::k16Portable) return squeeze_backward_images_w16_portable(args, begin, end, sums);
    squeeze_backward_images_w8(args, begin, end, sums);
  });
  const at::TensorOptions options = in.video.options();
  at::Tensor d_dw = at::empty({c, 1, 3, 3}, options), d_dw_bias = at::empty({c}, options);
  at::Tensor d_weight = at::empty({1, c}, options), d_bias = at::empty({1}, options);
  sums.total(layout.dw, 9 * c, d_dw.data_ptr<float>());
  sums.total(layout.dw_bias, c, d_dw_bias.data_ptr<float>());
  sums.total(layout.weight, c, d_weight.data_ptr<float>());
  sums.total(layout.bias, 1, d_bias.data_ptr<float>());
  return {grad_video, d_dw, d_dw_bias, d_weight, d_bias};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("video_squeeze_tokens(Tensor video, Tensor dw_weight, Tensor dw_bias, Tensor weight, Tensor bias, "
        "int frames, int window) -> Tensor");
  m.def("video_squeeze_tokens_backward(Tensor grad_tokens, Tensor video, Tensor dw_weight, Tensor dw_bias, "
        "Tensor weight, Tensor bias, int frames, int window) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) {
  m.impl("video_squeeze_tokens", &avfused::video_squeeze_tokens_cpu);
  m.impl("video_squeeze_tokens_backward", &avfused::video_squeeze_tokens_backward_cpu);
}
