// CPU building blocks of the 'same'-padded dense Conv1d(C -> C, K odd) over tiles of positions that the
// SAAVM's audio squeeze ops share (audio_squeeze_tokens, audio_squeeze_stats): the forward over a tile
// (optionally ReLU'd) from a weight packed into blocks of G output channels, and the backward of a tile
// (the input gradient of the tile's own positions and its weight sums) from the output gradient with a
// K / 2 halo. ATen's convolution measured slower at these shapes (few channels, long signals).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "depthwise.h"

namespace avfused::dense_conv1d {

using depthwise::round_up;

template <int W>
struct Geometry {
  static constexpr int G = W == 16 ? 8 : 4;  // output channels per block: G x U accumulators fit the registers
  static constexpr int U = 2;
};

// out[g][j + u W ...] = bias[g] + sum_{c, k} taps[c k][g] input[c][j + k + u W ...], optionally ReLU'd.
template <int W, int U, bool kRelu>
AVFUSED_INLINE void chunk(const float* input, int64_t in_stride, int64_t channels, int64_t kernel, const float* taps,
                          const float* bias, float* out, int64_t stride, int64_t j) {
  using V = typename simd::Vec<W>::f;
  constexpr int G = Geometry<W>::G;
  V acc[G][U];
  for (int g = 0; g < G; ++g) {
    for (int u = 0; u < U; ++u) acc[g][u] = simd::splat<V>(bias[g]);
  }
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t k = 0; k < kernel; ++k) {
      V values[U];
      for (int u = 0; u < U; ++u) values[u] = simd::load<V>(input + c * in_stride + j + k + u * W);
      const float* w = taps + (c * kernel + k) * G;
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) {
        for (int u = 0; u < U; ++u) acc[g][u] += w[g] * values[u];
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int u = 0; u < U; ++u) {
      simd::store(out + g * stride + j + u * W, kRelu ? (acc[g][u] > 0.f ? acc[g][u] : V{}) : acc[g][u]);
    }
  }
}

// The convolution of one clip: audio (C, L), taps and bias packed by packed_taps.
struct Conv {
  const float* audio;  // (C, L) of the clip
  const float* taps;   // (C_padded / G, C K, G): each block's G output channels of a tap side by side
  const float* bias;   // (C_padded,)
  int64_t channels, length, kernel;
};

struct TileBuffers {
  std::vector<float> input, out;
};

// The convolution (ReLU'd if kRelu) at positions start + i, i < lanes (a multiple of W), zero outside [0, L):
// buf.out holds its C (padded to whole blocks) rows of `lanes`; buf.input the audio it came from, input
// index i being position start - K / 2 + i, rows lanes + K - 1 apart.
template <int W, bool kRelu>
AVFUSED_INLINE void forward_tile(const Conv& a, int64_t start, int64_t lanes, TileBuffers& buf) {
  constexpr int G = Geometry<W>::G, U = Geometry<W>::U;
  const int64_t channels = a.channels, length = a.length, kernel = a.kernel;
  const int64_t blocks = round_up(channels, G) / G, in_stride = lanes + kernel - 1;
  buf.input.resize(channels * in_stride);
  buf.out.resize(blocks * G * lanes);
  const int64_t first = start - kernel / 2;
  for (int64_t c = 0; c < channels; ++c) {
    float* row = buf.input.data() + c * in_stride;
    for (int64_t i = 0; i < in_stride; ++i) {
      const int64_t position = first + i;
      row[i] = position >= 0 && position < length ? a.audio[c * length + position] : 0.f;
    }
  }
  for (int64_t block = 0; block < blocks; ++block) {
    const float* taps = a.taps + block * channels * kernel * G;
    float* out = buf.out.data() + block * G * lanes;
    int64_t j = 0;
    for (; j + U * W <= lanes; j += U * W) {
      chunk<W, U, kRelu>(buf.input.data(), in_stride, channels, kernel, taps, a.bias + block * G, out, lanes, j);
    }
    for (; j < lanes; j += W) {
      chunk<W, 1, kRelu>(buf.input.data(), in_stride, channels, kernel, taps, a.bias + block * G, out, lanes, j);
    }
  }
  const int64_t valid_begin = std::clamp<int64_t>(-start, 0, lanes);
  const int64_t valid_end = std::clamp<int64_t>(length - start, 0, lanes);
  for (int64_t c = 0; c < channels; ++c) {
    float* row = buf.out.data() + c * lanes;
    std::fill(row, row + valid_begin, 0.f);
    std::fill(row + valid_end, row + lanes, 0.f);
  }
}

// The backward of the tile [l0, l0 + count) (lanes = count rounded up to whole vectors). grad_out holds the
// output gradient at positions l0 - K / 2 + i (C rows grad_stride apart, zero outside [0, L), at least
// lanes + K - 1 wide); it is zeroed past the tile's own positions on return. input: the clip's audio at
// positions l0 - K / 2 + i (C rows in_stride apart, at least lanes + K - 1 wide). Writes the input gradient
// of the tile's own positions to grad_audio (C rows `length` apart, from l0) and adds the tile's weight and
// bias sums (C, C, K) and (C,).
template <int W>
AVFUSED_INLINE void backward_tile(const float* weight, int64_t channels, int64_t kernel, int64_t length,
                                  float* grad_out, int64_t grad_stride, const float* input, int64_t in_stride,
                                  int64_t count, float* grad_audio, double* weight_sums, double* bias_sums) {
  using V = typename simd::Vec<W>::f;
  const int64_t lanes = round_up(count, W), half = kernel / 2;
  // grad_audio[ci][l0 + i] = sum_{co, j} weight[co][ci][K - 1 - j] grad_out[co][i + j]
  for (int64_t ci = 0; ci < channels; ++ci) {
    for (int64_t i = 0; i < lanes; i += W) {
      V acc = V{};
      for (int64_t co = 0; co < channels; ++co) {
        const float* w = weight + (co * channels + ci) * kernel;
        const float* grad = grad_out + co * grad_stride + i;
        for (int64_t j = 0; j < kernel; ++j) acc += w[kernel - 1 - j] * simd::load<V>(grad + j);
      }
      const int64_t valid = std::min<int64_t>(W, count - i);
      if (valid == W) {
        simd::store(grad_audio + ci * length + i, acc);
      } else {
        depthwise::store_first(grad_audio + ci * length + i, acc, valid);
      }
    }
  }
  // the weight sums over the tile's own positions: grad_out's own part, zero past the tile
  for (int64_t co = 0; co < channels; ++co) {
    float* own = grad_out + co * grad_stride + half;
    std::fill(own + count, own + lanes, 0.f);
    bias_sums[co] += depthwise::plane_sum<W>(own, lanes, 1, lanes);
    for (int64_t ci = 0; ci < channels; ++ci) {
      // audio at position l0 + i + k - half is input index i + k
      const float* in = input + ci * in_stride;
      double* sums = weight_sums + (co * channels + ci) * kernel;
      for (int64_t k = 0; k < kernel; ++k) sums[k] += depthwise::dot<W>(own, in + k, lanes);
    }
  }
}

// The weight as forward_tile reads it, (C_out, C_in K) zero-padded to whole blocks of G output channels, then
// (blocks, C_in K, G); and the bias padded alike.
inline std::pair<at::Tensor, at::Tensor> packed_taps(const at::Tensor& weight, const at::Tensor& bias, bool wide) {
  const int64_t channels = weight.size(0), kernel = weight.size(2);
  const int64_t group = wide ? Geometry<16>::G : Geometry<8>::G;
  const int64_t padded = round_up(channels, group);
  at::Tensor taps = at::zeros({padded, channels * kernel}, weight.options());
  taps.narrow(0, 0, channels).copy_(weight.reshape({channels, channels * kernel}));
  taps = taps.reshape({padded / group, group, channels * kernel}).permute({0, 2, 1}).contiguous();
  at::Tensor bias_p = at::zeros({padded}, bias.options());
  bias_p.narrow(0, 0, channels).copy_(bias);
  return {taps, bias_p};
}

}  // namespace avfused::dense_conv1d
