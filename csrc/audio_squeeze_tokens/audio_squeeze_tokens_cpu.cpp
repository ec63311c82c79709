// audio_squeeze_tokens on the CPU, tile by tile of positions: the C -> C convolution + ReLU of a tile
// (and the halo the C -> 1 convolution needs) into an L1/L2-sized buffer, then the C -> 1 convolution
// into the one-channel signal; the signal is pooled into tokens at the end. The (B, C, L) hidden layer
// never reaches memory, and the C -> 1 convolution is a plain multiply-add per tap (ATen's convolution
// is slow with one output channel).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

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

template <int W>
struct HiddenGeometry {
  static constexpr int G = W == 16 ? 8 : 4;  // output channels per block: G x U accumulators fit the registers
  static constexpr int U = 2;
};

// hidden[g][j + u W ...] = ReLU(bias[g] + sum_{c, k} taps[c k][g] input[c][j + k + u W ...]).
template <int W, int U>
AVFUSED_INLINE void hidden_chunk(const float* input, int64_t in_stride, int64_t channels, int64_t k1,
                                 const float* taps, const float* bias, float* hidden, int64_t stride, int64_t j) {
  using V = typename simd::Vec<W>::f;
  constexpr int G = HiddenGeometry<W>::G;
  V acc[G][U];
  for (int g = 0; g < G; ++g) {
    for (int u = 0; u < U; ++u) acc[g][u] = simd::splat<V>(bias[g]);
  }
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t k = 0; k < k1; ++k) {
      V values[U];
      for (int u = 0; u < U; ++u) values[u] = simd::load<V>(input + c * in_stride + j + k + u * W);
      const float* w = taps + (c * k1 + k) * G;
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) {
        for (int u = 0; u < U; ++u) acc[g][u] += w[g] * values[u];
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int u = 0; u < U; ++u) simd::store(hidden + g * stride + j + u * W, acc[g][u] > 0.f ? acc[g][u] : V{});
  }
}

struct TileBuffers {
  std::vector<float> input, hidden;
};

template <int W>
AVFUSED_INLINE void squeeze_tile(const AudioSqueezeArgs& a, int64_t unit, TileBuffers& buf) {
  using V = typename simd::Vec<W>::f;
  constexpr int G = HiddenGeometry<W>::G, U = HiddenGeometry<W>::U;
  const int64_t channels = a.channels, length = a.length, k1 = a.k1, k2 = a.k2;
  const int64_t half1 = k1 / 2, half2 = k2 / 2, blocks = round_up(channels, G) / G;
  const int64_t b = unit / a.tiles, l0 = (unit % a.tiles) * kTile, count = std::min(kTile, length - l0);
  const int64_t out_lanes = round_up(count, W);
  // hidden index i is position l0 - half2 + i; the signal's vectors read up to out_lanes + k2 - 1
  const int64_t hidden_lanes = round_up(out_lanes + k2 - 1, W);
  const int64_t in_stride = hidden_lanes + k1 - 1;  // input index i is position l0 - half2 - half1 + i
  buf.input.resize(channels * in_stride);
  buf.hidden.resize(blocks * G * hidden_lanes);
  const float* audio = a.audio + b * channels * length;
  const int64_t start = l0 - half2 - half1;
  for (int64_t c = 0; c < channels; ++c) {
    float* row = buf.input.data() + c * in_stride;
    for (int64_t i = 0; i < in_stride; ++i) {
      const int64_t position = start + i;
      row[i] = position >= 0 && position < length ? audio[c * length + position] : 0.f;
    }
  }
  for (int64_t block = 0; block < blocks; ++block) {
    const float* taps = a.taps + block * channels * k1 * G;
    float* hidden = buf.hidden.data() + block * G * hidden_lanes;
    int64_t j = 0;
    for (; j + U * W <= hidden_lanes; j += U * W) {
      hidden_chunk<W, U>(buf.input.data(), in_stride, channels, k1, taps, a.bias + block * G, hidden, hidden_lanes, j);
    }
    for (; j < hidden_lanes; j += W) {
      hidden_chunk<W, 1>(buf.input.data(), in_stride, channels, k1, taps, a.bias + block * G, hidden, hidden_lanes, j);
    }
  }
  // the C -> 1 convolution's zero padding: hidden positions outside [0, L)
  const int64_t valid_begin = std::clamp<int64_t>(half2 - l0, 0, hidden_lanes);
  const int64_t valid_end = std::clamp<int64_t>(length - l0 + half2, 0, hidden_lanes);
  for (int64_t c = 0; c < channels; ++c) {
    float* row = buf.hidden.data() + c * hidden_lanes;
    std::fill(row, row + valid_begin, 0.f);
    std::fill(row + valid_end, row + hidden_lanes, 0.f);
  }
  float* signal = a.signal + b * length + l0;
  for (int64_t j = 0; j < out_lanes; j += W) {
    V acc = simd::splat<V>(a.to_one_bias);
    for (int64_t c = 0; c < channels; ++c) {
      const float* row = buf.hidden.data() + c * hidden_lanes + j;
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

at::Tensor audio_squeeze_tokens_cpu(const at::Tensor& audio, const at::Tensor& weight, const at::Tensor& bias,
                                    const at::Tensor& to_one, const at::Tensor& to_one_bias, int64_t frames,
                                    int64_t token_dim) {
  const char* op = "audio_squeeze_tokens";
  TORCH_CHECK(audio.dim() == 3 && audio.numel() > 0, "avfused_ext.audio_squeeze_tokens: audio must be a non-empty "
              "(B, C, L), got shape ", audio.sizes());
  TORCH_CHECK(weight.dim() == 3 && to_one.dim() == 3, "avfused_ext.audio_squeeze_tokens: weight must be (C, C, K1) "
              "and to_one (1, C, K2), got ", weight.sizes(), " and ", to_one.sizes());
  const int64_t clips = audio.size(0), channels = audio.size(1), length = audio.size(2);
  const int64_t k1 = weight.size(2), k2 = to_one.size(2);
  check_image_op_tensor(op, "audio", audio, audio.sizes());
  check_image_op_tensor(op, "weight", weight, {channels, channels, k1});
  check_image_op_tensor(op, "bias", bias, {channels});
  check_image_op_tensor(op, "to_one", to_one, {1, channels, k2});
  check_image_op_tensor(op, "to_one_bias", to_one_bias, {1});
  TORCH_CHECK(k1 % 2 == 1 && k2 % 2 == 1, "avfused_ext.audio_squeeze_tokens: kernel sizes must be odd, got ", k1,
              " and ", k2);
  TORCH_CHECK(frames > 0 && token_dim > 0, "avfused_ext.audio_squeeze_tokens: frames and token_dim must be "
              "positive, got ", frames, " and ", token_dim);
  const bool wide = simd::use_wide_vectors();
  const int64_t group = wide ? HiddenGeometry<16>::G : HiddenGeometry<8>::G;
  const int64_t padded = round_up(channels, group);
  // (C_out, C_in K1) zero-padded to whole blocks, then (blocks, C_in K1, G)
  at::Tensor taps = at::zeros({padded, channels * k1}, weight.options());
  taps.narrow(0, 0, channels).copy_(weight.reshape({channels, channels * k1}));
  taps = taps.reshape({padded / group, group, channels * k1}).permute({0, 2, 1}).contiguous();
  at::Tensor bias_p = at::zeros({padded}, bias.options());
  bias_p.narrow(0, 0, channels).copy_(bias);
  const at::Tensor audio_c = audio.contiguous(), to_one_c = to_one.contiguous();
  at::Tensor signal = at::empty({clips, length}, audio.options());
  const int64_t tiles = (length + kTile - 1) / kTile;
  const AudioSqueezeArgs args{audio_c.data_ptr<float>(), taps.data_ptr<float>(), bias_p.data_ptr<float>(),
                              to_one_c.data_ptr<float>(), to_one_bias.item<float>(), signal.data_ptr<float>(),
                              channels, length, k1, k2, tiles};
  at::parallel_for(0, clips * tiles, 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (wide) return squeeze_tiles_w16(args, begin, end);
#endif
    squeeze_tiles_w8(args, begin, end);
  });
  at::Tensor tokens = at::empty({clips, frames, token_dim}, audio.options());
  pool_signal(signal.data_ptr<float>(), tokens.data_ptr<float>(), clips, length, frames * token_dim);
  return tokens;
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("audio_squeeze_tokens(Tensor audio, Tensor weight, Tensor bias, Tensor to_one, Tensor to_one_bias, "
        "int frames, int token_dim) -> Tensor");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) { m.impl("audio_squeeze_tokens", &avfused::audio_squeeze_tokens_cpu); }
