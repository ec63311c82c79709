// Fused audio front end + stem on the CPU: sinc band-pass conv -> |.| -> log -> stem Conv1d(k7, s4),
// tile by tile, so the (B, F, S) band energies never reach memory.
//
// Work unit: one clip and one tile of T stem outputs (Geometry::kOutTile). It needs the band energies at
// positions [4 o0 - 3, 4 o1 - 1]; the tile computes them for a block of filters at a time (4 with
// 8-lane vectors, 8 with AVX-512's 16 lanes and 32 registers) into an L1-sized buffer,
// takes the log, adds the stem taps, and keeps a per-tile sum of the log energies so the band means
// can be removed afterwards (the stem is linear: stem(a - m) = stem(a) - stem(m), see
// audio_frontend_stem.h). Linear-phase (symmetric) filters take half the multiplies.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include <torch/library.h>

#include "../common/simd.h"
#include "audio_frontend_stem.h"

namespace avfused {
namespace {

constexpr int64_t kMaxFilterBlock = 8;  // the filter bank is zero-padded to a multiple of this

// Tile geometry for W-float vectors: a micro-kernel covers 3 W positions; the tile's 4 T + 3 band
// positions are padded to a multiple of that (T = 64 for W = 8: 259 -> 264; T = 71 for W = 16: 287 -> 288).
template <int W>
struct Geometry {
  static constexpr int64_t kOutTile = W == 16 ? 71 : 64;
  static constexpr int64_t kFilterBlock = W == 16 ? 8 : 4;  // filters convolved together (32 vs 16 registers)
  static constexpr int64_t kPosBlock = 3 * W;
  static constexpr int64_t kMaxPositions = kStemStride * kOutTile + 3;
  static constexpr int64_t kPaddedPositions = (kMaxPositions + kPosBlock - 1) / kPosBlock * kPosBlock;
  static constexpr int64_t kStemLanes = (kOutTile + 15) / 16 * 16;  // stem loop length: whole vectors, no tail
  static constexpr int64_t kPhaseLen = kStemLanes + 8;                // one polyphase row of the log energies
};

struct TileArgs {
  const float* x;        // (B, S)
  const float* taps;     // (F_padded, K), zero rows past F
  const float* weight;   // (C, F, 7)
  float* acc;            // (B, C, O) stem of the log energies
  float* tile_sums;      // (B, tiles, F) sums of the log energies over each tile's own positions
  int64_t samples, filters, taps_count, channels, outputs, tiles;
  float log_eps;
  bool symmetric;
};

// y[f][i] = sum_k taps[f][k] * window[i + k] for one filter block and `positions` (a multiple of 3 W).
template <int W, bool kSymmetric>
AVFUSED_INLINE void convolve_block(const float* window, const float* taps, int64_t k_count, int64_t positions,
                                   float* y) {
  using V = typename simd::Vec<W>::f;
  constexpr int64_t kFilterBlock = Geometry<W>::kFilterBlock;
  constexpr int64_t stride = Geometry<W>::kPaddedPositions;
  const int64_t half = k_count / 2;
  for (int64_t i = 0; i < positions; i += 3 * W) {
    V acc[kFilterBlock][3];
    for (int f = 0; f < kFilterBlock; ++f) acc[f][0] = acc[f][1] = acc[f][2] = V{};
    const float* w = window + i;
    const int64_t pairs = kSymmetric ? half : k_count;
    for (int64_t k = 0; k < pairs; ++k) {
      V s0 = simd::load<V>(w + k), s1 = simd::load<V>(w + k + W), s2 = simd::load<V>(w + k + 2 * W);
      if (kSymmetric) {  // linear phase: taps k and K-1-k are equal, add their inputs first
        const int64_t mirror = k_count - 1 - k;
        s0 += simd::load<V>(w + mirror);
        s1 += simd::load<V>(w + mirror + W);
        s2 += simd::load<V>(w + mirror + 2 * W);
      }
#pragma GCC unroll 8
      for (int f = 0; f < kFilterBlock; ++f) {
        const float h = taps[f * k_count + k];
        acc[f][0] += h * s0;
        acc[f][1] += h * s1;
        acc[f][2] += h * s2;
      }
    }
    if (kSymmetric) {  // the centre tap
      const V s0 = simd::load<V>(w + half), s1 = simd::load<V>(w + half + W), s2 = simd::load<V>(w + half + 2 * W);
#pragma GCC unroll 8
      for (int f = 0; f < kFilterBlock; ++f) {
        const float h = taps[f * k_count + half];
        acc[f][0] += h * s0;
        acc[f][1] += h * s1;
        acc[f][2] += h * s2;
      }
    }
    for (int f = 0; f < kFilterBlock; ++f) {
      simd::store(y + f * stride + i, acc[f][0]);
      simd::store(y + f * stride + i + W, acc[f][1]);
      simd::store(y + f * stride + i + 2 * W, acc[f][2]);
    }
  }
}

template <int W>
AVFUSED_INLINE void run_tiles_impl(const TileArgs& a, int64_t unit_begin, int64_t unit_end) {
  using G = Geometry<W>;
  constexpr int64_t kFilterBlock = G::kFilterBlock;
  const int64_t k_count = a.taps_count, half = k_count / 2;
  std::vector<float> window(G::kPaddedPositions + k_count + 2 * W);
  std::vector<float> y(kFilterBlock * G::kPaddedPositions);
  std::vector<float> log_energy(G::kPaddedPositions + W);
  std::vector<float> phases(4 * G::kPhaseLen);
  std::vector<float> out_tile(a.channels * G::kStemLanes);
  for (int64_t unit = unit_begin; unit < unit_end; ++unit) {
    const int64_t b = unit / a.tiles, tile = unit % a.tiles;
    const int64_t o0 = tile * G::kOutTile, out_count = std::min(G::kOutTile, a.outputs - o0);
    const int64_t t0 = kStemStride * o0 - kStemPad;           // band position of local index 0
    const int64_t positions = kStemStride * out_count + 3;     // local indices [0, positions)
    const int64_t padded = (positions + G::kPosBlock - 1) / G::kPosBlock * G::kPosBlock;
    const float* xb = a.x + b * a.samples;
    for (int64_t i = 0; i < padded + k_count - 1; ++i) {       // zero padding of the sinc conv
      const int64_t src = t0 - half + i;
      window[i] = (src >= 0 && src < a.samples) ? xb[src] : 0.f;
    }
    std::fill(out_tile.begin(), out_tile.end(), 0.f);
    std::fill(phases.begin(), phases.end(), 0.f);
    // local indices whose position belongs to this tile (each position summed once across tiles)
    const int64_t own_begin = 3, own_end = std::min<int64_t>(3 + kStemStride * out_count, a.samples - t0);
    const int64_t valid_begin = std::max<int64_t>(0, -t0), valid_end = std::min(positions, a.samples - t0);
    float* sums = a.tile_sums + (b * a.tiles + tile) * a.filters;

    for (int64_t f0 = 0; f0 < a.filters; f0 += kFilterBlock) {
      const float* taps = a.taps + f0 * k_count;
      if (a.symmetric) {
        convolve_block<W, true>(window.data(), taps, k_count, padded, y.data());
      } else {
        convolve_block<W, false>(window.data(), taps, k_count, padded, y.data());
      }
      const int64_t block = std::min(kFilterBlock, a.filters - f0);
      for (int64_t fi = 0; fi < block; ++fi) {
        const int64_t f = f0 + fi;
        const float* yf = y.data() + fi * G::kPaddedPositions;
        float* le = log_energy.data();
        for (int64_t i = 0; i < positions; i += 8) {  // 8 lanes measured faster than 16 here
          simd::store(le + i, simd::fast_log(simd::abs(simd::load<simd::vec8>(yf + i)) + a.log_eps));
        }
        std::fill(le, le + valid_begin, 0.f);  // the stem pads the energies with zeros
        std::fill(le + valid_end, le + positions, 0.f);
        simd::vec8 partial{};
        int64_t i = own_begin;
        for (; i + 8 <= own_end; i += 8) partial += simd::load8(le + i);
        float sum = 0.f;
        for (; i < own_end; ++i) sum += le[i];
        for (int lane = 0; lane < 8; ++lane) sum += partial[lane];
        sums[f] = sum;
        // polyphase split: phases[r][q] = energy at local index 4 q + r - 1, so every stem tap reads
        // a contiguous row
        for (int64_t j = 0; j < positions; ++j) {
          const int64_t shifted = j + 1;
          phases[(shifted & 3) * G::kPhaseLen + (shifted >> 2)] = le[j];
        }
        for (int64_t c = 0; c < a.channels; ++c) {
          const float* wcf = a.weight + (c * a.filters + f) * kStemKernel;
          float* oc = out_tile.data() + c * G::kStemLanes;
          for (int64_t j = 0; j < kStemKernel; ++j) {
            const float wj = wcf[j];
            const int64_t shifted = j + 1;  // local index 4 (o - o0) + j -> phase (j+1) % 4, row o - o0 + (j+1) / 4
            const float* row = phases.data() + (shifted & 3) * G::kPhaseLen + (shifted >> 2);
            for (int64_t o = 0; o < G::kStemLanes; ++o) oc[o] += wj * row[o];
          }
        }
      }
    }
    for (int64_t c = 0; c < a.channels; ++c) {
      float* dst = a.acc + (b * a.channels + c) * a.outputs + o0;
      std::copy(out_tile.data() + c * G::kStemLanes, out_tile.data() + c * G::kStemLanes + out_count, dst);
    }
  }
}

AVFUSED_TARGET_CLONES
void run_tiles_w8(const TileArgs& a, int64_t unit_begin, int64_t unit_end) {
  run_tiles_impl<8>(a, unit_begin, unit_end);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void run_tiles_w16(const TileArgs& a, int64_t unit_begin, int64_t unit_end) {
  run_tiles_impl<16>(a, unit_begin, unit_end);
}
#endif

std::tuple<at::Tensor, at::Tensor> audio_frontend_stem_cpu(const at::Tensor& x_in, const at::Tensor& filters_in,
                                                     const at::Tensor& weight_in, double log_eps) {
  const AudioFrontendStemInputs in =
      check_audio_frontend_stem_inputs(x_in, filters_in, weight_in, c10::DeviceType::CPU);
  const int64_t padded_filters = (in.filters_count + kMaxFilterBlock - 1) / kMaxFilterBlock * kMaxFilterBlock;
  at::Tensor taps = at::zeros({padded_filters, in.taps}, in.filters.options());
  taps.narrow(0, 0, in.filters_count).copy_(in.filters);
  // Linear-phase filters: average each tap with its mirror (exact up to rounding) to halve the work.
  const at::Tensor mirrored = in.filters.flip(1);
  const double asymmetry = (in.filters - mirrored).abs().max().item<double>();
  const double scale = in.filters.abs().max().item<double>();
  const bool symmetric = asymmetry <= 1e-6 * std::max(scale, 1e-30);
  if (symmetric) taps.narrow(0, 0, in.filters_count).copy_((in.filters + mirrored) * 0.5);

  const bool wide = simd::use_wide_vectors();
  const int64_t out_tile = wide ? Geometry<16>::kOutTile : Geometry<8>::kOutTile;
  const int64_t tiles = (in.outputs + out_tile - 1) / out_tile;
  at::Tensor acc = at::empty({in.batch, in.channels, in.outputs}, in.x.options());
  at::Tensor tile_sums = at::empty({in.batch, tiles, in.filters_count}, in.x.options());
  TileArgs args{in.x.data_ptr<float>(), taps.data_ptr<float>(), in.stem_weight.data_ptr<float>(),
                acc.data_ptr<float>(), tile_sums.data_ptr<float>(), in.samples, in.filters_count, in.taps,
                in.channels, in.outputs, tiles, static_cast<float>(log_eps), symmetric};
  at::parallel_for(0, in.batch * tiles, 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (wide) return run_tiles_w16(args, begin, end);
#endif
    run_tiles_w8(args, begin, end);
  });
  at::Tensor band_mean = tile_sums.sum(1, /*keepdim=*/false, at::kDouble).div_(in.samples).to(at::kFloat);
  at::Tensor out = acc.sub_(stem_of_band_means(band_mean, in.stem_weight, in.samples, in.outputs));
  return {out, band_mean};
}

void elementwise_backward_cpu(at::Tensor& y, at::Tensor& grad_bands, const at::Tensor& grad_band_mean,
                                       const at::Tensor& band_mean, double log_eps) {
  TORCH_CHECK(y.is_contiguous() && grad_bands.is_contiguous(), "avfused_ext: internal buffers must be contiguous");
  const int64_t rows = y.size(0) * y.size(1), samples = y.size(2);
  float* yp = y.data_ptr<float>();
  float* gp = grad_bands.data_ptr<float>();
  const at::Tensor gm = grad_band_mean.contiguous(), bm = band_mean.contiguous();
  const float* gmp = gm.data_ptr<float>();
  const float* bmp = bm.data_ptr<float>();
  const float eps = static_cast<float>(log_eps);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* yr = yp + r * samples;
      float* gr = gp + r * samples;
      const float g_mean = gmp[r], mean = bmp[r];
      for (int64_t t = 0; t < samples; ++t) {
        const float v = yr[t];
        const float magnitude = std::fabs(v) + eps;
        const float sign = v > 0.f ? 1.f : (v < 0.f ? -1.f : 0.f);
        gr[t] = (gr[t] - g_mean) * sign / magnitude;
        yr[t] = std::log(magnitude) - mean;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> audio_frontend_stem_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& filters, const at::Tensor& stem_weight,
    const at::Tensor& band_mean, double log_eps) {
  return audio_frontend_stem_backward_composite(grad_out, x, filters, stem_weight, band_mean, log_eps,
                                                c10::DeviceType::CPU, elementwise_backward_cpu);
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("audio_frontend_stem(Tensor x, Tensor filters, Tensor stem_weight, float log_eps) -> (Tensor, Tensor)");
  m.def(
      "audio_frontend_stem_backward(Tensor grad_out, Tensor x, Tensor filters, Tensor stem_weight, Tensor band_mean, "
      "float log_eps) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) {
  m.impl("audio_frontend_stem", &avfused::audio_frontend_stem_cpu);
  m.impl("audio_frontend_stem_backward", &avfused::audio_frontend_stem_backward_cpu);
}
