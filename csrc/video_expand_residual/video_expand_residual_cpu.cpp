// video_expand_residual on the CPU, one pass per image: the image's tokens are laid into one
// zero-bordered map plane, then each channel's 3x3 of the map, its bias and the scaled residual are
// written row by row, so neither the (C, H, W) expansion nor the map reach memory.
// Backward, one pass per image over grad: the map is laid out again; per channel the grad plane goes
// into a zero-bordered plane, from which come grad_video (scale grad), the bias, scale and 3x3 weight
// sums (per thread, in double) and the transposed 3x3 (the mirrored taps) added into the map's gradient,
// which is finally gathered back into the image's tokens.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
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
  float* out;           // (N, C, H, W): the forward's output or the backward's grad_video
  int64_t channels, height, width, window, cols;  // cols: windows per row of the map
  // backward only
  const float* grad = nullptr;      // (N, C, H, W)
  const float* mirrored = nullptr;  // (C, 9): the transposed convolution's taps
  float* grad_tokens = nullptr;     // like tokens
};

// Offsets of each gradient in a thread's block of GradientSums.
struct ExpandGradientLayout {
  int64_t weight, bias, scale, size;
  explicit ExpandGradientLayout(int64_t c) : weight(0), bias(9 * c), scale(10 * c), size(11 * c) {}
};

// The image's tokens laid out as its map (zero past the width: the right padding; zero border).
AVFUSED_INLINE void lay_out_map(const ExpandArgs& a, int64_t n, BorderedPlane& map) {
  const int64_t values = a.window * a.window, rows = (a.height + a.window - 1) / a.window;
  const float* tokens = a.tokens + n * rows * a.cols * values;
  for (int64_t y = 0; y < a.height; ++y) {
    const float* token_row = tokens + (y / a.window) * a.cols * values + (y % a.window) * a.window;
    float* row = map.row(y);
    for (int64_t x = 0; x < a.width; ++x) row[x] = token_row[(x / a.window) * values + x % a.window];
  }
}

template <int W>
AVFUSED_INLINE void expand_image(const ExpandArgs& a, int64_t n) {
  using V = typename simd::Vec<W>::f;
  const int64_t channels = a.channels, height = a.height, width = a.width, plane = height * width;
  const int64_t lanes = round_up(width, W);
  BorderedPlane map(height, lanes, 1);  // columns past the width stay zero: the right padding
  lay_out_map(a, n, map);
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

template <int W>
AVFUSED_INLINE void expand_backward_image(const ExpandArgs& a, int64_t n, double* sums,
                                         const ExpandGradientLayout& layout) {
  using V = typename simd::Vec<W>::f;
  const int64_t channels = a.channels, height = a.height, width = a.width, plane = height * width;
  const int64_t lanes = round_up(width, W);
  BorderedPlane map(height, lanes, 1), grad(height, lanes, 1);  // grad's columns past the width stay zero
  lay_out_map(a, n, map);
  std::vector<float> grad_map(height * lanes, 0.f), row(lanes);
  const float* video = a.video + n * channels * plane;
  const float* g_image = a.grad + n * channels * plane;
  float* grad_video = a.out + n * channels * plane;
  for (int64_t c = 0; c < channels; ++c) {
    const V scale = simd::splat<V>(a.scale[c]);
    V bias_acc = V{}, scale_acc = V{};
    for (int64_t y = 0; y < height; ++y) {
      const float* g = g_image + c * plane + y * width;
      const float* source = video + c * plane + y * width;
      float* target = grad_video + c * plane + y * width;
      std::copy_n(g, width, grad.row(y));
      int64_t x = 0;
      for (; x + W <= width; x += W) {
        const V gv = simd::load<V>(g + x);
        simd::store(target + x, scale * gv);
        bias_acc += gv;
        scale_acc += gv * simd::load<V>(source + x);
      }
      if (x < width) {
        const int64_t count = width - x;
        const V gv = load_first<V>(g + x, count);
        store_first(target + x, scale * gv, count);
        bias_acc += gv;
        scale_acc += gv * load_first<V>(source + x, count);
      }
    }
    sums[layout.bias + c] += horizontal_sum(bias_acc);
    sums[layout.scale + c] += horizontal_sum(scale_acc);
    depthwise_weight_grad<W, 3, 1>(grad.row(0), grad.stride, map.window(0), map.stride, height, lanes,
                                   sums + layout.weight + c * 9);
    for (int64_t y = 0; y < height; ++y) {
      depthwise_row<W, 3, 1, false>(grad.window(y), grad.stride, a.mirrored + c * 9, 0.f, row.data(), lanes);
      float* acc = grad_map.data() + y * lanes;
      for (int64_t x = 0; x < lanes; x += W) {
        simd::store(acc + x, simd::load<V>(acc + x) + simd::load<V>(row.data() + x));
      }
    }
  }
  // the map's gradient back into the tokens; token values over the padding get zero
  const int64_t window = a.window, values = window * window, rows = (height + window - 1) / window;
  float* tokens = a.grad_tokens + n * rows * a.cols * values;
  std::fill(tokens, tokens + rows * a.cols * values, 0.f);
  for (int64_t y = 0; y < height; ++y) {
    float* token_row = tokens + (y / window) * a.cols * values + (y % window) * window;
    const float* source = grad_map.data() + y * lanes;
    for (int64_t x = 0; x < width; ++x) token_row[(x / window) * values + x % window] = source[x];
  }
}

AVFUSED_TARGET_CLONES
void expand_backward_images_w8(const ExpandArgs& a, int64_t begin, int64_t end, GradientSums& sums,
                               const ExpandGradientLayout& layout) {
  double* mine = sums.mine();
  for (int64_t n = begin; n < end; ++n) expand_backward_image<8>(a, n, mine, layout);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void expand_backward_images_w16(const ExpandArgs& a, int64_t begin, int64_t end, GradientSums& sums,
                                const ExpandGradientLayout& layout) {
  double* mine = sums.mine();
  for (int64_t n = begin; n < end; ++n) expand_backward_image<16>(a, n, mine, layout);
}
#endif

// The 16-lane code for the baseline ISA: AVFUSED_CPU_PORTABLE_WIDE=1 (tests on CPUs without AVX-512).
void expand_backward_images_w16_portable(const ExpandArgs& a, int64_t begin, int64_t end, GradientSums& sums,
                                         const ExpandGradientLayout& layout) {
  double* mine = sums.mine();
  for (int64_t n = begin; n < end; ++n) expand_backward_image<16>(a, n, mine, layout);
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

// The 16-lane code for the baseline ISA: AVFUSED_CPU_PORTABLE_WIDE=1 (tests on CPUs without AVX-512).
void expand_images_w16_portable(const ExpandArgs& a, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) expand_image<16>(a, n);
}

struct ExpandInputs {
  at::Tensor video, tokens, weight, bias, scale;
  std::vector<int64_t> sizes;
  int64_t cols;
};

ExpandInputs check_cpu_inputs(const char* op, const at::Tensor& video, const at::Tensor& tokens,
                              const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                              int64_t window) {
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
  return {video.contiguous(), tokens.contiguous(), weight.contiguous(), bias.contiguous(), scale.contiguous(),
          sizes, cols};
}

ExpandArgs make_args(const ExpandInputs& in, at::Tensor& out, int64_t window) {
  return {in.video.data_ptr<float>(), in.tokens.data_ptr<float>(), in.weight.data_ptr<float>(),
          in.bias.data_ptr<float>(),  in.scale.data_ptr<float>(),  out.data_ptr<float>(),
          in.sizes[1],                in.sizes[2],                 in.sizes[3],
          window,                     in.cols};
}

at::Tensor video_expand_residual_cpu(const at::Tensor& video, const at::Tensor& tokens, const at::Tensor& weight,
                                     const at::Tensor& bias, const at::Tensor& scale, int64_t window) {
  const ExpandInputs in = check_cpu_inputs("video_expand_residual", video, tokens, weight, bias, scale, window);
  const std::vector<int64_t>& sizes = in.sizes;
  at::Tensor out = at::empty_like(in.video);
  const ExpandArgs args = make_args(in, out, window);
  const Lanes isa = image_kernel_lanes();
  at::parallel_for(0, sizes[0], 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (isa == Lanes::k16) return expand_images_w16(args, begin, end);
#endif
    if (isa == Lanes::k16Portable) return expand_images_w16_portable(args, begin, end);
    expand_images_w8(args, begin, end);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> video_expand_residual_backward_cpu(
    const at::Tensor& grad, const at::Tensor& video, const at::Tensor& tokens, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& scale, int64_t window) {
  const char* op = "video_expand_residual_backward";
  const ExpandInputs in = check_cpu_inputs(op, video, tokens, weight, bias, scale, window);
  check_image_op_tensor(op, "grad", grad, in.video.sizes());
  const at::Tensor grad_c = grad.contiguous();
  const int64_t channels = in.sizes[1];
  at::Tensor grad_video = at::empty_like(in.video), grad_tokens = at::empty_like(in.tokens);
  ExpandArgs args = make_args(in, grad_video, window);
  const std::vector<float> mirrored = mirrored_taps(args.weight, channels, 3);
  args.grad = grad_c.data_ptr<float>();
  args.mirrored = mirrored.data();
  args.grad_tokens = grad_tokens.data_ptr<float>();
  const ExpandGradientLayout layout(channels);
  GradientSums sums(layout.size);
  const Lanes isa = image_kernel_lanes();
  at::parallel_for(0, in.sizes[0], 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (isa == Lanes::k16) return expand_backward_images_w16(args, begin, end, sums, layout);
#endif
    if (isa == Lanes::k16Portable) return expand_backward_images_w16_portable(args, begin, end, sums, layout);
    expand_backward_images_w8(args, begin, end, sums, layout);
  });
  const at::TensorOptions options = in.video.options();
  at::Tensor grad_weight = at::empty({channels, 1, 3, 3}, options), grad_bias = at::empty({channels}, options);
  at::Tensor grad_scale = at::empty({channels}, options);
  sums.total(layout.weight, 9 * channels, grad_weight.data_ptr<float>());
  sums.total(layout.bias, channels, grad_bias.data_ptr<float>());
  sums.total(layout.scale, channels, grad_scale.data_ptr<float>());
  return {grad_video, grad_tokens, grad_weight, grad_bias, grad_scale};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("video_expand_residual(Tensor video, Tensor tokens, Tensor weight, Tensor bias, Tensor scale, int window) "
        "-> Tensor");
  m.def("video_expand_residual_backward(Tensor grad, Tensor video, Tensor tokens, Tensor weight, Tensor bias, "
        "Tensor scale, int window) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) {
  m.impl("video_expand_residual", &avfused::video_expand_residual_cpu);
  m.impl("video_expand_residual_backward", &avfused::video_expand_residual_backward_cpu);
}
