// audio_expand_residual on the CPU, one clip and one channel per work unit: the clip's tokens are
// interpolated into one zero-bordered signal row, then the channel's K-tap convolution of it, its bias
// and the scaled residual are written in one pass (the interpolated signal and the (C, L) expansion
// never reach memory; recomputing the signal per channel costs 1/K of the convolution).
// Backward, one pass over grad in tiles of positions of one clip (so that one clip still splits across
// threads): the clips' signals are interpolated once into zero-bordered rows (B L values, 1/C of the
// audio); per tile and channel grad_audio = scale grad, the bias and scale sums, the K weight sums as dot
// products (per thread, in double), and the transposed convolution (the mirrored taps) summed over the
// channels into the tile's signal gradient; that is finally spread back onto the tokens, the
// interpolation's transpose.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../common/depthwise.h"
#include "audio_expand_residual.h"

namespace avfused {
namespace {

using namespace depthwise;

struct AudioExpandArgs {
  const float* audio;   // (B, C, L)
  const float* tokens;  // (B, M = T D)
  const float* weight;  // (C, K)
  const float* bias;    // (C,)
  const float* scale;   // (C,)
  float* out;           // (B, C, L): the forward's output or the backward's grad_audio
  int64_t channels, length, values, kernel;
};

// row[half + i] = the tokens linearly interpolated at output i; the K / 2 values either side stay zero.
void interpolate(const float* tokens, int64_t values, int64_t length, float* row, int64_t half) {
  const double ratio = static_cast<double>(values) / static_cast<double>(length);
  for (int64_t i = 0; i < length; ++i) {
    const InterpolationSource s = interpolation_source(ratio, values, i);
    row[half + i] = (1.f - s.lambda) * tokens[s.left] + s.lambda * tokens[s.right];
  }
}

// The interpolation's transpose: grad_tokens (M,) from the signal's gradient (L,), summed in double.
void interpolate_backward(const float* grad_signal, int64_t values, int64_t length, float* grad_tokens) {
  const double ratio = static_cast<double>(values) / static_cast<double>(length);
  std::vector<double> sums(values, 0.0);
  for (int64_t i = 0; i < length; ++i) {
    const InterpolationSource s = interpolation_source(ratio, values, i);
    sums[s.left] += static_cast<double>((1.f - s.lambda) * grad_signal[i]);
    sums[s.right] += static_cast<double>(s.lambda * grad_signal[i]);
  }
  for (int64_t j = 0; j < values; ++j) grad_tokens[j] = static_cast<float>(sums[j]);
}

template <int W>
AVFUSED_INLINE void expand_channel(const AudioExpandArgs& a, int64_t unit, std::vector<float>& row, int64_t& clip) {
  using V = typename simd::Vec<W>::f;
  const int64_t b = unit / a.channels, c = unit % a.channels, length = a.length, kernel = a.kernel;
  const int64_t half = kernel / 2, lanes = round_up(length, W);
  if (clip != b) {  // consecutive units of one clip share the signal row
    row.assign(lanes + kernel - 1, 0.f);
    interpolate(a.tokens + b * a.values, a.values, length, row.data(), half);
    clip = b;
  }
  const float* w = a.weight + c * kernel;
  const V scale = simd::splat<V>(a.scale[c]), bias = simd::splat<V>(a.bias[c]);
  const float* audio = a.audio + (b * a.channels + c) * length;
  float* out = a.out + (b * a.channels + c) * length;
  for (int64_t l = 0; l < length; l += W) {
    const int64_t count = std::min<int64_t>(W, length - l);
    V acc = bias + scale * (count == W ? simd::load<V>(audio + l) : load_first<V>(audio + l, count));
    for (int64_t k = 0; k < kernel; ++k) acc += w[k] * simd::load<V>(row.data() + l + k);
    if (count == W) {
      simd::store(out + l, acc);
    } else {
      store_first(out + l, acc, count);
    }
  }
}

constexpr int64_t kBackwardTile = 1024;  // positions per work unit of the backward

struct AudioExpandBackward {
  const float* grad;      // (B, C, L)
  const float* signals;   // (B, row): each clip's signal at half + l, zero-bordered
  const float* mirrored;  // (C, K): the transposed convolution's taps
  float* grad_signal;     // (B, L)
  int64_t row, tiles;
};

// Offsets of each gradient in a thread's block of GradientSums.
struct AudioExpandGradientLayout {
  int64_t weight, bias, scale, size;
  AudioExpandGradientLayout(int64_t c, int64_t k) : weight(0), bias(c * k), scale(c * k + c), size(c * k + 2 * c) {}
};

struct BackwardBuffers {
  std::vector<float> own, window, grad_signal;
};

template <int W>
AVFUSED_INLINE void expand_backward_tile(const AudioExpandArgs& a, const AudioExpandBackward& g, int64_t unit,
                                         double* sums, const AudioExpandGradientLayout& layout, BackwardBuffers& buf) {
  using V = typename simd::Vec<W>::f;
  const int64_t channels = a.channels, length = a.length, kernel = a.kernel, half = kernel / 2;
  const int64_t b = unit / g.tiles, l0 = (unit % g.tiles) * kBackwardTile;
  const int64_t count = std::min(kBackwardTile, length - l0), lanes = round_up(count, W);
  buf.own.assign(lanes, 0.f);                   // grad over the tile, zero past it
  buf.window.assign(lanes + kernel - 1, 0.f);   // grad at l0 - half + i, zero outside [0, L)
  buf.grad_signal.assign(lanes, 0.f);
  const float* signal = g.signals + b * g.row + l0;  // signal[l0 + i + k - half] = signal[i + k]
  const int64_t first = std::max<int64_t>(0, l0 - half), last = std::min(length, l0 + count + half);
  for (int64_t c = 0; c < channels; ++c) {
    const int64_t offset = (b * channels + c) * length;
    const float* grad = g.grad + offset;
    const float* audio = a.audio + offset;
    float* grad_audio = a.out + offset;
    std::copy(grad + l0, grad + l0 + count, buf.own.begin());
    std::copy(grad + first, grad + last, buf.window.begin() + (first - (l0 - half)));
    const V scale = simd::splat<V>(a.scale[c]);
    V bias_acc = V{}, scale_acc = V{};
    for (int64_t i = 0; i < lanes; i += W) {
      const V gv = simd::load<V>(buf.own.data() + i);
      const int64_t valid = std::min<int64_t>(W, count - i);
      const V av = valid == W ? simd::load<V>(audio + l0 + i) : load_first<V>(audio + l0 + i, valid);
      bias_acc += gv;
      scale_acc += gv * av;
      if (valid == W) {
        simd::store(grad_audio + l0 + i, scale * gv);
      } else {
        store_first(grad_audio + l0 + i, scale * gv, valid);
      }
    }
    sums[layout.bias + c] += horizontal_sum(bias_acc);
    sums[layout.scale + c] += horizontal_sum(scale_acc);
    double* grad_weight = sums + layout.weight + c * kernel;
    for (int64_t k = 0; k < kernel; ++k) grad_weight[k] += dot<W>(buf.own.data(), signal + k, lanes);
    const float* w = g.mirrored + c * kernel;
    for (int64_t i = 0; i < lanes; i += W) {
      V acc = simd::load<V>(buf.grad_signal.data() + i);
      for (int64_t k = 0; k < kernel; ++k) acc += w[k] * simd::load<V>(buf.window.data() + i + k);
      simd::store(buf.grad_signal.data() + i, acc);
    }
  }
  std::copy_n(buf.grad_signal.data(), count, g.grad_signal + b * length + l0);
}

AVFUSED_TARGET_CLONES
void expand_backward_tiles_w8(const AudioExpandArgs& a, const AudioExpandBackward& g, int64_t begin, int64_t end,
                              GradientSums& sums, const AudioExpandGradientLayout& layout) {
  BackwardBuffers buffers;
  double* mine = sums.mine();
  for (int64_t unit = begin; unit < end; ++unit) expand_backward_tile<8>(a, g, unit, mine, layout, buffers);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void expand_backward_tiles_w16(const AudioExpandArgs& a, const AudioExpandBackward& g, int64_t begin, int64_t end,
                               GradientSums& sums, const AudioExpandGradientLayout& layout) {
  BackwardBuffers buffers;
  double* mine = sums.mine();
  for (int64_t unit = begin; unit < end; ++unit) expand_backward_tile<16>(a, g, unit, mine, layout, buffers);
}
#endif

// The 16-lane code for the baseline ISA: AVFUSED_CPU_PORTABLE_WIDE=1 (tests on CPUs without AVX-512).
void expand_backward_tiles_w16_portable(const AudioExpandArgs& a, const AudioExpandBackward& g,
                                        int64_t begin, int64_t end,
                                        GradientSums& sums, const AudioExpandGradientLayout& layout) {
  BackwardBuffers buffers;
  double* mine = sums.mine();
  for (int64_t unit = begin; unit < end; ++unit) expand_backward_tile<16>(a, g, unit, mine, layout, buffers);
}

AVFUSED_TARGET_CLONES
void expand_channels_w8(const AudioExpandArgs& a, int64_t begin, int64_t end) {
  std::vector<float> row;
  int64_t clip = -1;
  for (int64_t unit = begin; unit < end; ++unit) expand_channel<8>(a, unit, row, clip);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void expand_channels_w16(const AudioExpandArgs& a, int64_t begin, int64_t end) {
  std::vector<float> row;
  int64_t clip = -1;
  for (int64_t unit = begin; unit < end; ++unit) expand_channel<16>(a, unit, row, clip);
}
#endif

// The 16-lane code for the baseline ISA: AVFUSED_CPU_PORTABLE_WIDE=1 (tests on CPUs without AVX-512).
void expand_channels_w16_portable(const AudioExpandArgs& a, int64_t begin, int64_t end) {
  std::vector<float> row;
  int64_t clip = -1;
  for (int64_t unit = begin; unit < end; ++unit) expand_channel<16>(a, unit, row, clip);
}

struct AudioExpandInputs {
  at::Tensor audio, tokens, weight, bias, scale;
};

AudioExpandInputs check_cpu_inputs(const char* op, const at::Tensor& audio, const at::Tensor& tokens,
                                   const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale) {
  check_audio_expand_shapes(op, audio, tokens, weight, bias, scale);
  const int64_t clips = audio.size(0), channels = audio.size(1), kernel = weight.size(2);
  check_image_op_tensor(op, "audio", audio, audio.sizes());
  check_image_op_tensor(op, "tokens", tokens, {clips, tokens.size(1), tokens.size(2)});
  check_image_op_tensor(op, "weight", weight, {channels, 1, kernel});
  check_image_op_tensor(op, "bias", bias, {channels});
  check_image_op_tensor(op, "scale", scale, {channels});
  return {audio.contiguous(), tokens.contiguous(), weight.contiguous(), bias.contiguous(), scale.contiguous()};
}

AudioExpandArgs make_args(const AudioExpandInputs& in, at::Tensor& out) {
  return {in.audio.data_ptr<float>(), in.tokens.data_ptr<float>(), in.weight.data_ptr<float>(),
          in.bias.data_ptr<float>(),  in.scale.data_ptr<float>(),  out.data_ptr<float>(),
          in.audio.size(1),           in.audio.size(2),            in.tokens.size(1) * in.tokens.size(2),
          in.weight.size(2)};
}

at::Tensor audio_expand_residual_cpu(const at::Tensor& audio, const at::Tensor& tokens, const at::Tensor& weight,
                                     const at::Tensor& bias, const at::Tensor& scale) {
  const AudioExpandInputs in = check_cpu_inputs("audio_expand_residual", audio, tokens, weight, bias, scale);
  const int64_t clips = audio.size(0), channels = audio.size(1);
  at::Tensor out = at::empty_like(in.audio);
  const AudioExpandArgs args = make_args(in, out);
  const Lanes isa = image_kernel_lanes();
  at::parallel_for(0, clips * channels, 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (isa == Lanes::k16) return expand_channels_w16(args, begin, end);
#endif
    if (isa == Lanes::k16Portable) return expand_channels_w16_portable(args, begin, end);
    expand_channels_w8(args, begin, end);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> audio_expand_residual_backward_cpu(
    const at::Tensor& grad, const at::Tensor& audio, const at::Tensor& tokens, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& scale) {
  const char* op = "audio_expand_residual_backward";
  const AudioExpandInputs in = check_cpu_inputs(op, audio, tokens, weight, bias, scale);
  check_image_op_tensor(op, "grad", grad, in.audio.sizes());
  const at::Tensor grad_c = grad.contiguous();
  at::Tensor grad_audio = at::empty_like(in.audio);
  const AudioExpandArgs args = make_args(in, grad_audio);
  const int64_t clips = audio.size(0), channels = args.channels, length = args.length, kernel = args.kernel;
  // each clip's signal row: read up to the last tile's whole vectors plus the kernel's reach
  const int64_t row = round_up(length, kBackwardTile) + kernel - 1;
  std::vector<float> signals(clips * row, 0.f), grad_signal(clips * length);
  at::parallel_for(0, clips, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      interpolate(args.tokens + b * args.values, args.values, length, signals.data() + b * row, kernel / 2);
    }
  });
  const std::vector<float> mirrored = [&] {
    std::vector<float> taps(channels * kernel);
    for (int64_t c = 0; c < channels; ++c) {
      for (int64_t k = 0; k < kernel; ++k) taps[c * kernel + k] = args.weight[c * kernel + kernel - 1 - k];
    }
    return taps;
  }();
  const int64_t tiles = (length + kBackwardTile - 1) / kBackwardTile;
  const AudioExpandBackward backward{grad_c.data_ptr<float>(), signals.data(), mirrored.data(), grad_signal.data(),
                                     row, tiles};
  const AudioExpandGradientLayout layout(channels, kernel);
  GradientSums sums(layout.size);
  const Lanes isa = image_kernel_lanes();
  at::parallel_for(0, clips * tiles, 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (isa == Lanes::k16) return expand_backward_tiles_w16(args, backward, begin, end, sums, layout);
#endif
    if (isa == Lanes::k16Portable) return expand_backward_tiles_w16_portable(args, backward, begin, end, sums, layout);
    expand_backward_tiles_w8(args, backward, begin, end, sums, layout);
  });
  at::Tensor grad_tokens = at::empty_like(in.tokens);
  at::parallel_for(0, clips, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      interpolate_backward(grad_signal.data() + b * length, args.values, length,
                           grad_tokens.data_ptr<float>() + b * args.values);
    }
  });
  const at::TensorOptions options = in.audio.options();
  at::Tensor grad_weight = at::empty({channels, 1, kernel}, options), grad_bias = at::empty({channels}, options);
  at::Tensor grad_scale = at::empty({channels}, options);
  sums.total(layout.weight, channels * kernel, grad_weight.data_ptr<float>());
  sums.total(layout.bias, channels, grad_bias.data_ptr<float>());
  sums.total(layout.scale, channels, grad_scale.data_ptr<float>());
  return {grad_audio, grad_tokens, grad_weight, grad_bias, grad_scale};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("audio_expand_residual(Tensor audio, Tensor tokens, Tensor weight, Tensor bias, Tensor scale) -> Tensor");
  m.def("audio_expand_residual_backward(Tensor grad, Tensor audio, Tensor tokens, Tensor weight, Tensor bias, "
        "Tensor scale) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) {
  m.impl("audio_expand_residual", &avfused::audio_expand_residual_cpu);
  m.impl("audio_expand_residual_backward", &avfused::audio_expand_residual_backward_cpu);
}
