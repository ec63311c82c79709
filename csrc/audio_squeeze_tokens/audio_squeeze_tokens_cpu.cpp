// audio_squeeze_tokens on the CPU, tile by tile of positions: the C -> C convolution + ReLU of a tile
// (and the halo the C -> 1 convolution needs) into an L1/L2-sized buffer, then the C -> 1 convolution
// into the one-channel signal; the signal is pooled into tokens at the end. The (B, C, L) hidden layer
// never reaches memory, and the C -> 1 convolution is a plain multiply-add per tap (ATen's convolution
// is slow with one output channel).
// Backward, tile by tile again: the token gradient is first spread back over the signal (the pooling's
// transpose, B L values); per tile the hidden layer is recomputed with a halo, then the C -> 1 weight sums,
// the ReLU's input gradient (with a K1 / 2 halo, so each tile writes only its own audio gradient), the
// tile's audio gradient and the C -> C weight sums; weight sums per thread in double.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

#include "../common/dense_conv1d.h"
#include "../common/depthwise.h"
#include "audio_squeeze_tokens.h"

namespace avfused {
namespace {

using namespace depthwise;
using audio_squeeze_tokens::kTile;

struct AudioSqueezeArgs {
  const float* audio;   // (B, C, L)
  const float* taps;    // (C_padded / G, C K1, G): each block's G output channels of a tap side by side
  const float* bias;    // (C_padded,)
  const float* to_one;  // (C, K2)
  float to_one_bias;
  float* signal;        // (B, L)
  int64_t channels, length, k1, k2, tiles;
};

struct TileBuffers : dense_conv1d::TileBuffers {  // out: the hidden layer
  std::vector<float> grad_hidden, grad_signal;
};

// The ReLU'd hidden layer of clip b at positions start + i, i < hidden_lanes, zero outside [0, L) (the C -> 1
// convolution's padding), into buf.out; buf.input the audio it came from (dense_conv1d::forward_tile).
template <int W>
AVFUSED_INLINE void hidden_tile(const AudioSqueezeArgs& a, int64_t b, int64_t start, int64_t hidden_lanes,
                                TileBuffers& buf) {
  const dense_conv1d::Conv conv{a.audio + b * a.channels * a.length, a.taps, a.bias, a.channels, a.length, a.k1};
  dense_conv1d::forward_tile<W, true>(conv, start, hidden_lanes, buf);
}

template <int W>
AVFUSED_INLINE void squeeze_tile(const AudioSqueezeArgs& a, int64_t unit, TileBuffers& buf) {
  using V = typename simd::Vec<W>::f;
  const int64_t channels = a.channels, length = a.length, k2 = a.k2;
  const int64_t b = unit / a.tiles, l0 = (unit % a.tiles) * kTile, count = std::min(kTile, length - l0);
  const int64_t out_lanes = round_up(count, W);
  // hidden index i is position l0 - K2 / 2 + i; the signal's vectors read up to out_lanes + k2 - 1
  const int64_t hidden_lanes = round_up(out_lanes + k2 - 1, W);
  hidden_tile<W>(a, b, l0 - k2 / 2, hidden_lanes, buf);
  float* signal = a.signal + b * length + l0;
  for (int64_t j = 0; j < out_lanes; j += W) {
    V acc = simd::splat<V>(a.to_one_bias);
    for (int64_t c = 0; c < channels; ++c) {
      const float* row = buf.out.data() + c * hidden_lanes + j;
      const float* w = a.to_one + c * k2;
      for (int64_t k = 0; k < k2; ++k) acc += w[k] * simd::load<V>(row + k);
    }
    const int64_t valid = std::min<int64_t>(W, count - j);
    if (valid == W) {
      simd::store(signal + j, acc);
    } else {
      store_first(signal + j, acc, valid);
    }
  }
}

struct AudioSqueezeBackward {
  const float* weight;        // (C, C, K1) as given
  const float* grad_signals;  // (B, row): each clip's signal gradient at border + l, zero-bordered
  float* grad_audio;          // (B, C, L)
  int64_t row, border;        // border = K1 / 2 + K2 / 2
};

// Offsets of each gradient in a thread's block of GradientSums.
struct SqueezeGradientLayout {
  int64_t weight, bias, to_one, to_one_bias, size;
  SqueezeGradientLayout(int64_t c, int64_t k1, int64_t k2)
      : weight(0), bias(c * c * k1), to_one(c * c * k1 + c), to_one_bias(c * c * k1 + c + c * k2),
        size(c * c * k1 + c + c * k2 + 1) {}
};

// Backward of one tile [l0, l0 + count) of clip b. With R = max(K1, K2) / 2 the hidden layer is recomputed over the
// tile and R either side; grad_hidden (the ReLU's input gradient) over the tile and K1 / 2 either side,
// so that the tile's audio gradient needs nothing from its neighbours; the weight sums take the tile's
// own positions only.
template <int W>
AVFUSED_INLINE void squeeze_backward_tile(const AudioSqueezeArgs& a, const AudioSqueezeBackward& g, int64_t unit,
                                          double* sums, const SqueezeGradientLayout& layout, TileBuffers& buf) {
  using V = typename simd::Vec<W>::f;
  const int64_t channels = a.channels, length = a.length, k1 = a.k1, k2 = a.k2, half1 = k1 / 2, half2 = k2 / 2;
  const int64_t reach = std::max(half1, half2);
  const int64_t b = unit / a.tiles, l0 = (unit % a.tiles) * kTile, count = std::min(kTile, length - l0);
  const int64_t lanes = round_up(count, W);
  const int64_t grad_lanes = round_up(lanes + 2 * half1, W);  // grad_hidden index i: position l0 - half1 + i
  // hidden index i is position l0 - reach + i; grad_hidden's vectors read it up to reach - half1 + grad_lanes
  const int64_t hidden_lanes = round_up(std::max(lanes + 2 * reach, reach - half1 + grad_lanes), W);
  hidden_tile<W>(a, b, l0 - reach, hidden_lanes, buf);
  const float* grad_signal = g.grad_signals + b * g.row + g.border;  // grad_signal[p], zero outside [0, L)
  buf.grad_signal.assign(lanes, 0.f);  // the tile's own signal gradient, zero past it
  std::copy_n(grad_signal + l0, count, buf.grad_signal.data());
  // to_one's sums: grad_to_one[c][k] = sum_own grad_signal[p] hidden[c][p + k - half2]
  const float* own_grad = buf.grad_signal.data();
  sums[layout.to_one_bias] += plane_sum<W>(own_grad, lanes, 1, lanes);
  for (int64_t c = 0; c < channels; ++c) {
    const float* hidden = buf.out.data() + c * hidden_lanes + reach - half2;
    double* grad_to_one = sums + layout.to_one + c * k2;
    for (int64_t k = 0; k < k2; ++k) grad_to_one[k] += dot<W>(own_grad, hidden + k, lanes);
  }
  // grad_hidden[c][i] = (hidden > 0) sum_j to_one[c][K2 - 1 - j] grad_signal[l0 - half1 + i + j - half2]
  buf.grad_hidden.resize(channels * grad_lanes);
  const float* window = grad_signal + l0 - half1 - half2;
  for (int64_t c = 0; c < channels; ++c) {
    const float* w = a.to_one + c * k2;
    const float* hidden = buf.out.data() + c * hidden_lanes + reach - half1;
    float* grad_hidden = buf.grad_hidden.data() + c * grad_lanes;
    for (int64_t i = 0; i < grad_lanes; i += W) {
      V acc = V{};
      for (int64_t j = 0; j < k2; ++j) acc += w[k2 - 1 - j] * simd::load<V>(window + i + j);
      simd::store(grad_hidden + i, simd::load<V>(hidden + i) > 0.f ? acc : V{});
    }
  }
  // the tile's audio gradient and the C -> C weight sums; audio at position l0 - half1 + i is input index
  // reach + i
  dense_conv1d::backward_tile<W>(g.weight, channels, k1, length, buf.grad_hidden.data(), grad_lanes,
                                 buf.input.data() + reach, hidden_lanes + k1 - 1, count,
                                 g.grad_audio + b * channels * length + l0, sums + layout.weight, sums + layout.bias);
}

AVFUSED_TARGET_CLONES
void squeeze_backward_tiles_w8(const AudioSqueezeArgs& a, const AudioSqueezeBackward& g, int64_t begin, int64_t end,
                               GradientSums& sums, const SqueezeGradientLayout& layout) {
  TileBuffers buffers;
  double* mine = sums.mine();
  for (int64_t unit = begin; unit < end; ++unit) squeeze_backward_tile<8>(a, g, unit, mine, layout, buffers);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void squeeze_backward_tiles_w16(const AudioSqueezeArgs& a, const AudioSqueezeBackward& g, int64_t begin, int64_t end,
                                GradientSums& sums, const SqueezeGradientLayout& layout) {
  TileBuffers buffers;
  double* mine = sums.mine();
  for (int64_t unit = begin; unit < end; ++unit) squeeze_backward_tile<16>(a, g, unit, mine, layout, buffers);
}
#endif

// The 16-lane code for the baseline ISA: AVFUSED_CPU_PORTABLE_WIDE=1 (tests on CPUs without AVX-512).
void squeeze_backward_tiles_w16_portable(const AudioSqueezeArgs& a, const AudioSqueezeBackward& g,
                                         int64_t begin, int64_t end,
                                         GradientSums& sums, const SqueezeGradientLayout& layout) {
  TileBuffers buffers;
  double* mine = sums.mine();
  for (int64_t unit = begin; unit < end; ++unit) squeeze_backward_tile<16>(a, g, unit, mine, layout, buffers);
}

AVFUSED_TARGET_CLONES
void squeeze_tiles_w8(const AudioSqueezeArgs& a, int64_t begin, int64_t end) {
  TileBuffers buffers;
  for (int64_t unit = begin; unit < end; ++unit) squeeze_tile<8>(a, unit, buffers);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void squeeze_tiles_w16(const AudioSqueezeArgs& a, int64_t begin, int64_t end) {
  TileBuffers buffers;
  for (int64_t unit = begin; unit < end; ++unit) squeeze_tile<16>(a, unit, buffers);
}
#endif

// The 16-lane code for the baseline ISA: AVFUSED_CPU_PORTABLE_WIDE=1 (tests on CPUs without AVX-512).
void squeeze_tiles_w16_portable(const AudioSqueezeArgs& a, int64_t begin, int64_t end) {
  TileBuffers buffers;
  for (int64_t unit = begin; unit < end; ++unit) squeeze_tile<16>(a, unit, buffers);
}

// adaptive average pooling of each clip's signal (B, L) into (B, M): value j averages
// [floor(j L / M), ceil((j + 1) L / M)), as torch's adaptive_avg_pool1d
void pool_signal(const float* signal, float* tokens, int64_t clips, int64_t length, int64_t outputs) {
  at::parallel_for(0, clips, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t j = 0; j < outputs; ++j) {
        const int64_t first = j * length / outputs, last = ((j + 1) * length + outputs - 1) / outputs;
        float sum = 0.f;
        for (int64_t l = first; l < last; ++l) sum += signal[b * length + l];
        tokens[b * outputs + j] = sum / static_cast<float>(last - first);
      }
    }
  });
}

void check_cpu_inputs(const char* op, const at::Tensor& audio, const at::Tensor& weight, const at::Tensor& bias,
                      const at::Tensor& to_one, const at::Tensor& to_one_bias, int64_t frames, int64_t token_dim) {
  TORCH_CHECK(audio.dim() == 3 && audio.numel() > 0, "avfused_ext.audio_squeeze_tokens: audio must be a non-empty "
              "(B, C, L), got shape ", audio.sizes());
  TORCH_CHECK(weight.dim() == 3 && to_one.dim() == 3, "avfused_ext.audio_squeeze_tokens: weight must be (C, C, K1) "
              "and to_one (1, C, K2), got ", weight.sizes(), " and ", to_one.sizes());
  const int64_t channels = audio.size(1), k1 = weight.size(2), k2 = to_one.size(2);
  check_image_op_tensor(op, "audio", audio, audio.sizes());
  check_image_op_tensor(op, "weight", weight, {channels, channels, k1});
  check_image_op_tensor(op, "bias", bias, {channels});
  check_image_op_tensor(op, "to_one", to_one, {1, channels, k2});
  check_image_op_tensor(op, "to_one_bias", to_one_bias, {1});
  TORCH_CHECK(k1 % 2 == 1 && k2 % 2 == 1, "avfused_ext.audio_squeeze_tokens: kernel sizes must be odd, got ", k1,
              " and ", k2);
  TORCH_CHECK(frames > 0 && token_dim > 0, "avfused_ext.audio_squeeze_tokens: frames and token_dim must be "
              "positive, got ", frames, " and ", token_dim);
}

at::Tensor audio_squeeze_tokens_cpu(const at::Tensor& audio, const at::Tensor& weight, const at::Tensor& bias,
                                    const at::Tensor& to_one, const at::Tensor& to_one_bias, int64_t frames,
                                    int64_t token_dim) {
  check_cpu_inputs("audio_squeeze_tokens", audio, weight, bias, to_one, to_one_bias, frames, token_dim);
  const int64_t clips = audio.size(0), channels = audio.size(1), length = audio.size(2);
  const Lanes isa = image_kernel_lanes();
  const bool wide = isa != Lanes::k8;
  const auto [taps, bias_p] = dense_conv1d::packed_taps(weight, bias, wide);
  const at::Tensor audio_c = audio.contiguous(), to_one_c = to_one.contiguous();
  at::Tensor signal = at::empty({clips, length}, audio.options());
  const int64_t tiles = (length + kTile - 1) / kTile;
  const AudioSqueezeArgs args{audio_c.data_ptr<float>(), taps.data_ptr<float>(), bias_p.data_ptr<float>(),
                              to_one_c.data_ptr<float>(), to_one_bias.item<float>(), signal.data_ptr<float>(),
                              channels, length, weight.size(2), to_one.size(2), tiles};
  at::parallel_for(0, clips * tiles, 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (isa == Lanes::k16) return squeeze_tiles_w16(args, begin, end);
#endif
    if (isa == Lanes::k16Portable) return squeeze_tiles_w16_portable(args, begin, end);
    squeeze_tiles_w8(args, begin, end);
  });
  at::Tensor tokens = at::empty({clips, frames, token_dim}, audio.options());
  pool_signal(signal.data_ptr<float>(), tokens.data_ptr<float>(), clips, length, frames * token_dim);
  return tokens;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> audio_squeeze_tokens_backward_cpu(
    const at::Tensor& grad, const at::Tensor& audio, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& to_one, const at::Tensor& to_one_bias, int64_t frames, int64_t token_dim) {
  const char* op = "audio_squeeze_tokens_backward";
  check_cpu_inputs(op, audio, weight, bias, to_one, to_one_bias, frames, token_dim);
  const int64_t clips = audio.size(0), channels = audio.size(1), length = audio.size(2);
  const int64_t k1 = weight.size(2), k2 = to_one.size(2), outputs = frames * token_dim;
  check_image_op_tensor(op, "grad", grad, {clips, frames, token_dim});
  const at::Tensor grad_c = grad.contiguous(), audio_c = audio.contiguous(), weight_c = weight.contiguous();
  const at::Tensor to_one_c = to_one.contiguous();
  const Lanes isa = image_kernel_lanes();
  const bool wide = isa != Lanes::k8;
  const auto [taps, bias_p] = dense_conv1d::packed_taps(weight, bias, wide);
  // the pooling's transpose: each token value spread evenly over its window (windows may overlap)
  const int64_t border = k1 / 2 + k2 / 2, row = round_up(length, kTile) + 2 * border + 32;  // + vectors' overreach
  std::vector<float> grad_signals(clips * row, 0.f);
  at::parallel_for(0, clips, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* g = grad_c.data_ptr<float>() + b * outputs;
      float* target = grad_signals.data() + b * row + border;
      for (int64_t j = 0; j < outputs; ++j) {
        const int64_t first = j * length / outputs, last = ((j + 1) * length + outputs - 1) / outputs;
        const float share = g[j] / static_cast<float>(last - first);
        for (int64_t l = first; l < last; ++l) target[l] += share;
      }
    }
  });
  at::Tensor grad_audio = at::empty_like(audio_c);
  const int64_t tiles = (length + kTile - 1) / kTile;
  const AudioSqueezeArgs args{audio_c.data_ptr<float>(), taps.data_ptr<float>(), bias_p.data_ptr<float>(),
                              to_one_c.data_ptr<float>(), to_one_bias.item<float>(), nullptr,
                              channels, length, k1, k2, tiles};
  const AudioSqueezeBackward backward{weight_c.data_ptr<float>(), grad_signals.data(), grad_audio.data_ptr<float>(),
                                      row, border};
  const SqueezeGradientLayout layout(channels, k1, k2);
  GradientSums sums(layout.size);
  at::parallel_for(0, clips * tiles, 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (isa == Lanes::k16) return squeeze_backward_tiles_w16(args, backward, begin, end, sums, layout);
#endif
    if (isa == Lanes::k16Portable) return squeeze_backward_tiles_w16_portable(args, backward, begin, end, sums, layout);
    squeeze_backward_tiles_w8(args, backward, begin, end, sums, layout);
  });
  const at::TensorOptions options = audio_c.options();
  at::Tensor grad_weight = at::empty({channels, channels, k1}, options), grad_bias = at::empty({channels}, options);
  at::Tensor grad_to_one = at::empty({1, channels, k2}, options), grad_to_one_bias = at::empty({1}, options);
  sums.total(layout.weight, channels * channels * k1, grad_weight.data_ptr<float>());
  sums.total(layout.bias, channels, grad_bias.data_ptr<float>());
  sums.total(layout.to_one, channels * k2, grad_to_one.data_ptr<float>());
  sums.total(layout.to_one_bias, 1, grad_to_one_bias.data_ptr<float>());
  return {grad_audio, grad_weight, grad_bias, grad_to_one, grad_to_one_bias};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("audio_squeeze_tokens(Tensor audio, Tensor weight, Tensor bias, Tensor to_one, Tensor to_one_bias, "
        "int frames, int token_dim) -> Tensor");
  m.def("audio_squeeze_tokens_backward(Tensor grad, Tensor audio, Tensor weight, Tensor bias, Tensor to_one, "
        "Tensor to_one_bias, int frames, int token_dim) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) {
  m.impl("audio_squeeze_tokens", &avfused::audio_squeeze_tokens_cpu);
  m.impl("audio_squeeze_tokens_backward", &avfused::audio_squeeze_tokens_backward_cpu);
}
