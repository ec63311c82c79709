// Fused audio front end + stem on the CPU, forward and backward: sinc band-pass conv -> |.| -> log ->
// stem Conv1d(k7, s4), tile by tile, so the (B, F, S) band energies never reach memory. This file holds the
// direct forward (a sum over taps) and the backward; the FFT forward, what "auto" runs for filters of up to
// 765 taps, is in audio_frontend_stem_fft_cpu.cpp.
//
// Forward work unit: one clip and one tile of T stem outputs (ForwardGeometry::kOutTile). It needs the
// band energies at positions [4 o0 - 3, 4 o1 - 1]; the tile computes them for a block of filters at a
// time (4 with 8-lane vectors, 8 with AVX-512's 16 lanes and 32 registers) into an L1-sized buffer,
// takes the log, adds the stem taps, and keeps a per-tile sum of the log energies so the band means
// can be removed afterwards (the stem is linear: stem(a - m) = stem(a) - stem(m), see
// audio_frontend_stem.h). Linear-phase (symmetric) filters take half the multiplies.
//
// Backward work unit: one clip and one tile of 384 band positions; every gradient is a sum over
// positions, so tiles partition time and need only the inputs' halos (K - 1 samples of x, one stem
// output of grad_out). Per filter block the tile recomputes y in polyphase order (position 4 q + r at
// row r, column q: each stem tap then reads contiguous rows), forms dy and a - m there, and adds
//   dw from (a - m) x grad_out, dh from dy x the x window, dx from dy x the taps
// into per-thread float64 accumulators (dh, dw) or a tile buffer added to dx (tiles whose dx ranges
// overlap run in different passes). Samples whose |y| is small enough for float32 rounding to matter
// are recomputed in float64 and take a float64 path (audio_frontend_stem.h).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include <torch/library.h>

#include "../common/simd.h"
#include "audio_frontend_stem.h"
#include "exact_recompute.h"

namespace avfused {
namespace {

using exact::any_below;
using exact::dot64;
using exact::fill_window;
using exact::local_rms;
using simd::round_up;

constexpr int64_t kMaxFilterBlock = 8;  // the filter bank is zero-padded to a multiple of this

// ---------------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------------
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
  const double* x64;     // (B, S), for the exact recompute
  const float* taps;     // (F_padded, K), zero rows past F
  const double* taps64;  // (F, K)
  const float* norms;    // (F,) ||h_f||_2
  const float* weight;   // (C, F, 7)
  float* acc;            // (B, C, O) stem of the log energies
  float* tile_sums;      // (B, tiles, F) sums of the log energies over each tile's own positions
  int64_t samples, filters, taps_count, channels, outputs, tiles;
  float log_eps, exact_below;
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
  const bool exact = a.exact_below > 0;
  std::vector<float> window(G::kPaddedPositions + k_count + 2 * W);
  std::vector<double> window64(exact ? G::kPaddedPositions + k_count : 0);
  std::vector<float> threshold(G::kPaddedPositions + W, 0.f);  // exact_below * rms of each position's inputs
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
    fill_window(a.x + b * a.samples, a.samples, t0 - half, padded + k_count - 1, window.data());  // the conv's zeros
    std::fill(out_tile.begin(), out_tile.end(), 0.f);
    std::fill(phases.begin(), phases.end(), 0.f);
    // local indices whose position belongs to this tile (each position summed once across tiles)
    const int64_t own_begin = 3, own_end = std::min<int64_t>(3 + kStemStride * out_count, a.samples - t0);
    const int64_t valid_begin = std::max<int64_t>(0, -t0), valid_end = std::min(positions, a.samples - t0);
    if (exact) {
      fill_window(a.x64 + b * a.samples, a.samples, t0 - half, positions + k_count - 1, window64.data());
      local_rms(window64.data(), k_count, positions, a.exact_below, threshold.data());
    }
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
        for (int64_t i = 0; i < positions; i += W) {  // y and le hold whole vectors past `positions`
          simd::store(le + i, simd::fast_log(simd::abs(simd::load<typename simd::Vec<W>::f>(yf + i)) + a.log_eps));
        }
        if (exact) {  // near-zero responses: float64 from the float64 inputs
          const float norm = a.norms[f];
          const double* h64 = a.taps64 + f * k_count;
          for (int64_t i = valid_begin / 8 * 8; i < valid_end; i += 8) {
            if (!any_below<8>(yf + i, threshold.data() + i, norm)) continue;
            for (int64_t lane = std::max(i, valid_begin); lane < std::min(i + 8, valid_end); ++lane) {
              if (std::fabs(yf[lane]) < threshold[lane] * norm) {
                const double y64 = dot64(h64, window64.data() + lane, k_count);
                le[lane] = static_cast<float>(std::log(std::fabs(y64) + a.log_eps));
              }
            }
          }
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

// The float32 filter bank zero-padded to a multiple of kMaxFilterBlock rows.
at::Tensor padded_taps(const AudioFrontendStemInputs& in) {
  const int64_t padded_filters = round_up(in.filters_count, kMaxFilterBlock);
  at::Tensor taps = at::zeros({padded_filters, in.taps}, in.filters.options());
  taps.narrow(0, 0, in.filters_count).copy_(in.filters);
  return taps;
}

// The direct forward: (acc (B, C, O), tile_sums (B, tiles, F)) before mean removal.
std::tuple<at::Tensor, at::Tensor> direct_forward(const AudioFrontendStemInputs& in, double log_eps,
                                                  double exact_below) {
  at::Tensor taps = padded_taps(in);
  const bool wide = simd::use_wide_vectors();
  const int64_t out_tile = wide ? Geometry<16>::kOutTile : Geometry<8>::kOutTile;
  const int64_t tiles = (in.outputs + out_tile - 1) / out_tile;
  at::Tensor acc = at::empty({in.batch, in.channels, in.outputs}, in.x.options());
  at::Tensor tile_sums = at::empty({in.batch, tiles, in.filters_count}, in.x.options());
  TileArgs args{in.x.data_ptr<float>(),       in.x64.data_ptr<double>(),   taps.data_ptr<float>(),
                in.filters64.data_ptr<double>(), in.filter_norms.data_ptr<float>(), in.stem_weight.data_ptr<float>(),
                acc.data_ptr<float>(),        tile_sums.data_ptr<float>(), in.samples,
                in.filters_count,             in.taps,                     in.channels,
                in.outputs,                   tiles,                       static_cast<float>(log_eps),
                static_cast<float>(exact_below), in.symmetric};
  at::parallel_for(0, in.batch * tiles, 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (wide) return run_tiles_w16(args, begin, end);
#endif
    run_tiles_w8(args, begin, end);
  });
  return {acc, tile_sums};
}

// "auto" takes the FFT forward while its 1024-sample window holds tiles of at least this many stem outputs
// (filters of up to 765 taps). Measured (256 filters, 3 s clips, 2-core AVX-512 AMD EPYC, ms per clip at
// batch 1, direct / FFT): 15 taps 21.2 / 13.9, 63 taps 27.2 / 14.7, 251 taps 37.7 / 15.0, 761 taps 70.5 /
// 26.3: the log, the exact recompute and the stem, the same in both, cost more than the transforms.
constexpr int64_t kFftMinOutTile = 64;

bool forward_by_fft(c10::string_view formulation, int64_t taps) {
  if (formulation == "direct") return false;
  if (formulation == "fft") {
    TORCH_CHECK(fft_forward_out_tile(taps) >= 1, "avfused_ext.audio_frontend_stem: formulation 'fft' takes filters ",
                "that leave a tile in its 1024-sample window; ", taps, " taps do not: use 'direct' or 'auto'");
    return true;
  }
  TORCH_CHECK(formulation == "auto", "avfused_ext.audio_frontend_stem: formulation must be 'auto', 'direct' or ",
              "'fft', got '", formulation, "'");
  return fft_forward_out_tile(taps) >= kFftMinOutTile;
}

std::tuple<at::Tensor, at::Tensor> audio_frontend_stem_cpu(const at::Tensor& x_in, const at::Tensor& filters_in,
                                                           const at::Tensor& weight_in, double log_eps,
                                                           double exact_below, bool linear_phase,
                                                           c10::string_view formulation) {
  const AudioFrontendStemInputs in = check_audio_frontend_stem_inputs(x_in, filters_in, weight_in, linear_phase,
                                                                      exact_below, c10::DeviceType::CPU);
  const auto [acc, tile_sums] = forward_by_fft(formulation, in.taps)
                                    ? audio_frontend_stem_fft_forward(in, log_eps, exact_below)
                                    : direct_forward(in, log_eps, exact_below);
  at::Tensor band_mean = tile_sums.sum(1, /*keepdim=*/false, at::kDouble).div_(in.samples).to(at::kFloat);
  at::Tensor out = acc.sub_(stem_of_band_means(band_mean, in.stem_weight, in.samples, in.outputs));
  return {out, band_mean};
}

// ---------------------------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------------------------
template <int W>
struct BackwardGeometry {
  static constexpr int64_t kTile = 384;                     // band positions per tile
  static constexpr int64_t kPhase = kTile / kStemStride;    // columns of one polyphase row: 96
  static constexpr int64_t kFilterBlock = W == 16 ? 8 : 4;  // as the forward: 3 x FB accumulators
  static constexpr int64_t kVecs = 3;                       // vectors of one register block
  static constexpr int64_t kBlock = kVecs * W;
  static_assert(kPhase % kBlock == 0, "a polyphase row is whole register blocks");
};

struct BackwardArgs {
  const float* x;          // (B, S)
  const double* x64;       // (B, S)
  const float* conv_taps;  // (F_padded, conv_stride): y's taps, folded (k <= K/2, centre halved) or all K
  int64_t conv_stride;     // a multiple of 4
  const float* flipped;    // (F_padded, K): h[f][K-1-k], for dx
  const double* taps64;    // (F, K)
  const float* norms;      // (F,)
  const float* weight;     // (C, F, 7)
  const float* grad;       // (B, C, O)
  const float* band_mean;  // (B, F)
  const float* grad_mean;  // (B, F): mean_t G
  double* dx;              // (B, S) or null
  double* dh;              // (threads, F, K) or null
  double* dw;              // (threads, C, F, 7) or null
  int64_t samples, filters, taps_count, channels, outputs, tiles;
  int64_t color, colors;   // this pass runs the tiles with tile % colors == color
  float log_eps, exact_below;
  bool symmetric, fold_grad;
};

// y for one filter block, phase r and 3 W columns from q0: y[f][r][q] = sum_k taps[f][k] x[4 q + r + k]
// (window coordinates), with x read from its polyphase rows xp[rho][n] = x[4 n + rho] (row stride P,
// one leading zero column). Symmetric: taps k and K-1-k share a multiply.
template <int W, bool kSymmetric>
AVFUSED_INLINE void convolve_phase(const float* xp, int64_t P, const float* taps, int64_t tap_stride,
                                   int64_t tap_count, int64_t k_count, int r, int64_t q0, float* y) {
  using V = typename simd::Vec<W>::f;
  using G = BackwardGeometry<W>;
  constexpr int64_t FB = G::kFilterBlock;
  V acc[FB][3];
  for (int f = 0; f < FB; ++f) acc[f][0] = acc[f][1] = acc[f][2] = V{};
  const float* base[4];
  const float* mirror[4];
  for (int i = 0; i < 4; ++i) {  // tap 4 m + i reads row (r + i) % 4 from column (r + i) / 4 + m
    const int64_t index = r + i, mindex = r + k_count - 1 - i;
    base[i] = xp + (index & 3) * P + (index >> 2) + 1 + q0;
    mirror[i] = xp + (mindex & 3) * P + (mindex >> 2) + 1 + q0;  // tap K-1-(4m+i): column ... - m
  }
  for (int64_t m = 0; m < tap_count / 4; ++m) {
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      const float* p = base[i] + m;
      V s0 = simd::load<V>(p), s1 = simd::load<V>(p + W), s2 = simd::load<V>(p + 2 * W);
      if (kSymmetric) {
        const float* q = mirror[i] - m;
        s0 += simd::load<V>(q);
        s1 += simd::load<V>(q + W);
        s2 += simd::load<V>(q + 2 * W);
      }
#pragma GCC unroll 8
      for (int f = 0; f < FB; ++f) {
        const float h = taps[f * tap_stride + 4 * m + i];
        acc[f][0] += h * s0;
        acc[f][1] += h * s1;
        acc[f][2] += h * s2;
      }
    }
  }
  for (int f = 0; f < FB; ++f) {
    float* out = y + f * 4 * G::kPhase + r * G::kPhase + q0;
    simd::store(out, acc[f][0]);
    simd::store(out + W, acc[f][1]);
    simd::store(out + 2 * W, acc[f][2]);
  }
}

// dh for one filter block: out[f][k] = sum_t dy[f][t] (x[t + k] + folded ? x[t + K-1-k] : 0) over the
// tile's positions t = 4 q + r, for k in [0, k_out) (a multiple of kTapBlock). rw: the window reversed, so
// the mirrored inputs of consecutive k are consecutive too (rw_base[k - t] = x[t + K-1-k]). Two vectors
// per filter: with the mirrored loads, three would spill on AVX2.
template <int W>
constexpr int64_t kTapBlock = 2 * W;

template <int W, bool kFolded>
AVFUSED_INLINE void tap_gradient(const float* xw, const float* rw_base, const float* dy, int64_t k_out, float* out,
                                 int64_t out_stride) {
  using V = typename simd::Vec<W>::f;
  using G = BackwardGeometry<W>;
  constexpr int64_t FB = G::kFilterBlock;
  for (int64_t k0 = 0; k0 < k_out; k0 += kTapBlock<W>) {
    V acc[FB][2];
    for (int f = 0; f < FB; ++f) acc[f][0] = acc[f][1] = V{};
    for (int r = 0; r < 4; ++r) {
      for (int64_t q = 0; q < G::kPhase; ++q) {
        const int64_t t = 4 * q + r;
        const float* p = xw + t + k0;
        V s0 = simd::load<V>(p), s1 = simd::load<V>(p + W);
        if (kFolded) {
          const float* m = rw_base - t + k0;
          s0 += simd::load<V>(m);
          s1 += simd::load<V>(m + W);
        }
        const float* d = dy + r * G::kPhase + q;
#pragma GCC unroll 8
        for (int f = 0; f < FB; ++f) {
          const float g = d[f * 4 * G::kPhase];
          acc[f][0] += g * s0;
          acc[f][1] += g * s1;
        }
      }
    }
    for (int f = 0; f < FB; ++f) {
      simd::store(out + f * out_stride + k0, acc[f][0]);
      simd::store(out + f * out_stride + k0 + W, acc[f][1]);
    }
  }
}

// dx of one filter block: out[u] += sum_f sum_k flipped[f][k] dyz[f][u + k] for u in [0, u_count)
// (a multiple of 3 W), dyz = dy in time order with K - 1 leading zeros.
template <int W>
AVFUSED_INLINE void input_gradient(const float* dyz, int64_t dyz_stride, const float* flipped, int64_t k_count,
                                   int64_t block, int64_t u_count, double* out) {
  using V = typename simd::Vec<W>::f;
  for (int64_t u0 = 0; u0 < u_count; u0 += 3 * W) {
    V acc0{}, acc1{}, acc2{};
    for (int64_t f = 0; f < block; ++f) {
      const float* d = dyz + f * dyz_stride + u0;
      const float* h = flipped + f * k_count;
      for (int64_t k = 0; k < k_count; ++k) {
        const float hk = h[k];
        acc0 += hk * simd::load<V>(d + k);
        acc1 += hk * simd::load<V>(d + k + W);
        acc2 += hk * simd::load<V>(d + k + 2 * W);
      }
    }
    for (int lane = 0; lane < W; ++lane) {
      out[u0 + lane] += acc0[lane];
      out[u0 + W + lane] += acc1[lane];
      out[u0 + 2 * W + lane] += acc2[lane];
    }
  }
}

template <int W>
AVFUSED_INLINE void backward_tiles_impl(const BackwardArgs& a, int64_t unit_begin, int64_t unit_end) {
  using V = typename simd::Vec<W>::f;
  using G = BackwardGeometry<W>;
  constexpr int64_t T = G::kTile, Q = G::kPhase, FB = G::kFilterBlock;
  const int64_t K = a.taps_count, half = K / 2, C = a.channels, F = a.filters;
  const bool exact = a.exact_below > 0, need_dx = a.dx != nullptr, need_dh = a.dh != nullptr;
  const bool need_dy = need_dx || need_dh, need_dw = a.dw != nullptr;
  const int64_t thread = at::get_thread_num();
  double* dh_acc = need_dh ? a.dh + thread * F * K : nullptr;
  double* dw_acc = need_dw ? a.dw + thread * C * F * kStemKernel : nullptr;
  const int64_t dh_count = a.fold_grad ? half + 1 : K;          // tap gradients computed per filter
  const int64_t dh_padded = round_up(dh_count, kTapBlock<W>);
  const int64_t window_len = T + std::max(K, dh_padded) + 4 * W;  // x around the tile, zero padded
  const int64_t P = Q + (K + a.conv_stride) / 4 + 8;             // columns of one polyphase row of x
  const int64_t u_count = round_up(T + K - 1, 3 * W);           // dx positions a tile touches, padded
  const int64_t dyz_stride = u_count + K + W;
  const int64_t g_stride = Q + 2 + W;

  std::vector<float> xw(window_len, 0.f), rw(window_len, 0.f), xp(4 * P, 0.f);
  std::vector<double> xw64(T + K);
  std::vector<float> rms(exact ? T : 0), threshold(4 * Q, 0.f);  // exact_below * rms of the inputs, polyphase
  std::vector<float> gt(C * g_stride, 0.f);  // grad_out of the tile's outputs (and one more)
  std::vector<float> y(FB * 4 * Q), dy(FB * 4 * Q, 0.f), am(4 * Q);
  std::vector<float> dh_tile(need_dh ? FB * dh_padded : 0);
  std::vector<float> dyz(need_dx ? FB * dyz_stride : 0, 0.f);
  std::vector<double> dxl(need_dx ? u_count : 0);

  for (int64_t unit = unit_begin; unit < unit_end; ++unit) {
    const int64_t per_clip = (a.tiles - a.color + a.colors - 1) / a.colors;
    const int64_t b = unit / per_clip, tile = a.color + (unit % per_clip) * a.colors;
    const int64_t p0 = tile * T, n = std::min(T, a.samples - p0);  // positions [p0, p0 + n)
    fill_window(a.x + b * a.samples, a.samples, p0 - half, window_len, xw.data());  // xw[i] = x[p0 - K/2 + i]
    for (int64_t rho = 0; rho < 4; ++rho) {
      for (int64_t col = 0; col + 1 < P; ++col) {
        const int64_t i = 4 * col + rho;
        xp[rho * P + col + 1] = i < window_len ? xw[i] : 0.f;
      }
    }
    if (need_dh && a.fold_grad) {  // rw[j] = x[T + K - 2 - j] (window coordinates)
      for (int64_t j = 0; j < window_len; ++j) {
        const int64_t i = T + K - 2 - j;
        rw[j] = i >= 0 ? xw[i] : 0.f;
      }
    }
    if (exact) {
      fill_window(a.x64 + b * a.samples, a.samples, p0 - half, T + K - 1, xw64.data());
      local_rms(xw64.data(), K, n, a.exact_below, rms.data());
      std::fill(threshold.begin(), threshold.end(), 0.f);  // positions past S: never exact
      for (int64_t t = 0; t < n; ++t) threshold[(t & 3) * Q + (t >> 2)] = rms[t];
    }
    const int64_t o_first = p0 / kStemStride;  // position 4 q + r reads outputs o_first + q (+ 1)
    for (int64_t c = 0; c < C; ++c) {
      const float* gc = a.grad + (b * C + c) * a.outputs;
      for (int64_t col = 0; col < Q + 2; ++col) {
        const int64_t o = o_first + col;
        gt[c * g_stride + col] = o < a.outputs ? gc[o] : 0.f;
      }
    }
    if (need_dx) std::fill(dxl.begin(), dxl.end(), 0.0);

    for (int64_t f0 = 0; f0 < F; f0 += FB) {
      const int64_t block = std::min(FB, F - f0);
      const float* taps = a.conv_taps + f0 * a.conv_stride;
      for (int r = 0; r < 4; ++r) {
        for (int64_t q0 = 0; q0 < Q; q0 += G::kBlock) {
          if (a.symmetric) {
            convolve_phase<W, true>(xp.data(), P, taps, a.conv_stride, a.conv_stride, K, r, q0, y.data());
          } else {
            convolve_phase<W, false>(xp.data(), P, taps, a.conv_stride, a.conv_stride, K, r, q0, y.data());
          }
        }
      }
      for (int64_t fi = 0; fi < block; ++fi) {
        const int64_t f = f0 + fi;
        const float* yf = y.data() + fi * 4 * Q;
        float* dyf = dy.data() + fi * 4 * Q;
        const float mean = a.band_mean[b * F + f], gmean = a.grad_mean[b * F + f];
        const float* wf[kStemKernel];  // w[c][f][j] = wf[j][c * F * 7]
        for (int64_t j = 0; j < kStemKernel; ++j) wf[j] = a.weight + f * kStemKernel + j;
        // G (the gradient reaching a - m), dy and a - m, W columns at a time
        for (int64_t q = 0; q < Q; q += W) {
          V g0{}, g1{}, g2{}, g3{};  // G at positions 4 q + r, r = 0..3
          for (int64_t c = 0; c < C; ++c) {
            const V lo = simd::load<V>(gt.data() + c * g_stride + q);
            const V hi = simd::load<V>(gt.data() + c * g_stride + q + 1);
            const int64_t wc = c * F * kStemKernel;
            g0 += wf[3][wc] * lo;
            g1 += wf[4][wc] * lo + wf[0][wc] * hi;
            g2 += wf[5][wc] * lo + wf[1][wc] * hi;
            g3 += wf[6][wc] * lo + wf[2][wc] * hi;
          }
          const V gr[4] = {g0, g1, g2, g3};
          for (int r = 0; r < 4; ++r) {
            const V yv = simd::load<V>(yf + r * Q + q);
            const V magnitude = simd::abs(yv) + a.log_eps;
            if (need_dw) simd::store(am.data() + r * Q + q, simd::fast_log(magnitude) - mean);
            if (need_dy) {
              const V d = (gr[r] - gmean) / magnitude;
              simd::store(dyf + r * Q + q, yv > 0.f ? d : (yv < 0.f ? -d : V{}));
            }
          }
        }
        for (int64_t t = n; t < T; ++t) {  // positions past S: nothing flows
          am[(t & 3) * Q + (t >> 2)] = 0.f;
          dyf[(t & 3) * Q + (t >> 2)] = 0.f;
        }
        if (exact) {  // near-zero responses: y, a and dy in float64, their share of dh and dx in float64
          const float norm = a.norms[f];
          const double* h64 = a.taps64 + f * K;
          const auto recompute = [&](int64_t i) {
            const int r = static_cast<int>(i / Q);
            const int64_t q = i % Q, t = 4 * q + r;
            const double y64 = dot64(h64, xw64.data() + t, K);
            const double magnitude = std::fabs(y64) + a.log_eps;
            am[i] = static_cast<float>(std::log(magnitude) - mean);
            dyf[i] = 0.f;  // taken out of the float32 sums
            if (!need_dy || y64 == 0.0) return;
            double g = 0;  // G at t, in float64
            for (int64_t c = 0; c < C; ++c) {
              const int64_t wc = c * F * kStemKernel;
              g += static_cast<double>(wf[r + 3][wc]) * gt[c * g_stride + q];
              if (r > 0) g += static_cast<double>(wf[r - 1][wc]) * gt[c * g_stride + q + 1];
            }
            const double d = (g - gmean) / magnitude * (y64 > 0 ? 1.0 : -1.0);
            if (need_dh) {
              double* row = dh_acc + f * K;
              const double* xs = xw64.data() + t;
              for (int64_t k = 0; k < K; ++k) row[k] += d * xs[k];
            }
            if (need_dx) {
              double* out = dxl.data() + t;
              for (int64_t k = 0; k < K; ++k) out[k] += d * h64[k];
            }
          };
          for (int64_t i = 0; i < 4 * Q; i += W) {
            if (!any_below<W>(yf + i, threshold.data() + i, norm)) continue;
            for (int64_t lane = i; lane < i + W; ++lane) {
              if (std::fabs(yf[lane]) < threshold[lane] * norm) recompute(lane);
            }
          }
        }
        if (need_dw) {  // dw[c][f][j] += sum_q am[r][q] g[c][q + delta], (r, delta) <-> j = r + 3 - 4 delta
          for (int64_t c = 0; c < C; ++c) {
            const float* gc = gt.data() + c * g_stride;
            V s[8] = {};  // the stem's 7 taps and a zero: lane_totals8 reduces 8 vectors
            for (int64_t q = 0; q < Q; q += W) {
              const V lo = simd::load<V>(gc + q), hi = simd::load<V>(gc + q + 1);
              const V a0 = simd::load<V>(am.data() + q), a1 = simd::load<V>(am.data() + Q + q);
              const V a2 = simd::load<V>(am.data() + 2 * Q + q), a3 = simd::load<V>(am.data() + 3 * Q + q);
              s[3] += a0 * lo;
              s[4] += a1 * lo;
              s[0] += a1 * hi;
              s[5] += a2 * lo;
              s[1] += a2 * hi;
              s[6] += a3 * lo;
              s[2] += a3 * hi;
            }
            float totals[8];
            simd::lane_totals8(s, totals);
            double* out = dw_acc + (c * F + f) * kStemKernel;
            for (int64_t j = 0; j < kStemKernel; ++j) out[j] += totals[j];
          }
        }
      }
      if (!need_dy) continue;
      for (int64_t fi = block; fi < FB; ++fi) std::fill(dy.begin() + fi * 4 * Q, dy.begin() + (fi + 1) * 4 * Q, 0.f);
      if (need_dh) {
        const float* rw_base = rw.data() + T - 1;
        if (a.fold_grad) {
          tap_gradient<W, true>(xw.data(), rw_base, dy.data(), dh_padded, dh_tile.data(), dh_padded);
        } else {
          tap_gradient<W, false>(xw.data(), rw_base, dy.data(), dh_padded, dh_tile.data(), dh_padded);
        }
        for (int64_t fi = 0; fi < block; ++fi) {
          double* row = dh_acc + (f0 + fi) * K;
          const float* tile_row = dh_tile.data() + fi * dh_padded;
          if (a.fold_grad) {  // taps k and K-1-k together: stored at k, the centre halved (finish mirrors)
            for (int64_t k = 0; k < half; ++k) row[k] += tile_row[k];
            row[half] += 0.5 * tile_row[half];
          } else {
            for (int64_t k = 0; k < K; ++k) row[k] += tile_row[k];
          }
        }
      }
      if (need_dx) {
        for (int64_t fi = 0; fi < block; ++fi) {
          float* row = dyz.data() + fi * dyz_stride + (K - 1);
          const float* dyf = dy.data() + fi * 4 * Q;
          for (int64_t t = 0; t < T; ++t) row[t] = dyf[(t & 3) * Q + (t >> 2)];
        }
        input_gradient<W>(dyz.data(), dyz_stride, a.flipped + f0 * K, K, block, u_count, dxl.data());
      }
    }
    if (need_dx) {  // this pass's tiles touch disjoint ranges of dx
      double* dxb = a.dx + b * a.samples;
      const int64_t first = p0 - half;
      for (int64_t u = std::max<int64_t>(0, -first); u < T + K - 1 && first + u < a.samples; ++u) {
        dxb[first + u] += dxl[u];
      }
    }
  }
}

AVFUSED_TARGET_CLONES
void backward_tiles_w8(const BackwardArgs& a, int64_t unit_begin, int64_t unit_end) {
  backward_tiles_impl<8>(a, unit_begin, unit_end);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void backward_tiles_w16(const BackwardArgs& a, int64_t unit_begin, int64_t unit_end) {
  backward_tiles_impl<16>(a, unit_begin, unit_end);
}
#endif

// y's taps for the backward's polyphase conv, (F_padded, stride): folded (k < K/2 as they are, the centre
// halved, as it meets itself) or all K, zero-padded to a multiple of 4.
at::Tensor backward_conv_taps(const AudioFrontendStemInputs& in, int64_t& stride) {
  const int64_t half = in.taps / 2, used = in.symmetric ? half + 1 : in.taps;
  stride = round_up(used, 4);
  at::Tensor taps = at::zeros({round_up(in.filters_count, kMaxFilterBlock), stride}, in.filters.options());
  taps.narrow(0, 0, in.filters_count).narrow(1, 0, used).copy_(in.filters.narrow(1, 0, used));
  if (in.symmetric) taps.select(1, half).mul_(0.5);
  return taps;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> audio_frontend_stem_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& filters_in, const at::Tensor& weight_in,
    const at::Tensor& band_mean_in, double log_eps, double exact_below, bool linear_phase,
    std::array<bool, 3> output_mask) {
  const AudioFrontendStemInputs in = check_audio_frontend_stem_inputs(x_in, filters_in, weight_in, linear_phase,
                                                                      exact_below, c10::DeviceType::CPU);
  const at::Tensor grad = check_audio_frontend_stem_backward(in, grad_out, band_mean_in);
  const at::Tensor band_mean = band_mean_in.to(at::kFloat).contiguous();
  const at::Tensor grad_mean = mean_band_gradient(grad, in.stem_weight, in.samples).contiguous();
  int64_t conv_stride = 0;
  const at::Tensor conv_taps = backward_conv_taps(in, conv_stride);
  const at::Tensor flipped = padded_taps(in).flip(1).contiguous();
  const int64_t threads = at::get_num_threads();
  const at::TensorOptions f64 = in.x.options().dtype(at::kDouble);
  at::Tensor dx, dh, dw;
  if (output_mask[0]) dx = at::zeros({in.batch, in.samples}, f64);
  if (output_mask[1]) dh = at::zeros({threads, in.filters_count, in.taps}, f64);
  if (output_mask[2]) dw = at::zeros({threads, in.channels, in.filters_count, kStemKernel}, f64);
  if (!output_mask[0] && !output_mask[1] && !output_mask[2]) {
    return finish_audio_frontend_stem_backward(in, dx, dh, dw, linear_phase);
  }
  const bool wide = simd::use_wide_vectors();
  const int64_t tile = BackwardGeometry<8>::kTile;  // the same for both widths
  const int64_t tiles = (in.samples + tile - 1) / tile;
  // dx: a tile adds to [p0 - K/2, p0 + T + K/2); tiles `colors` apart never overlap
  const int64_t colors = output_mask[0] ? (tile + in.taps - 1 + tile - 1) / tile : 1;
  BackwardArgs args{in.x.data_ptr<float>(),
                    in.x64.data_ptr<double>(),
                    conv_taps.data_ptr<float>(),
                    conv_stride,
                    flipped.data_ptr<float>(),
                    in.filters64.data_ptr<double>(),
                    in.filter_norms.data_ptr<float>(),
                    in.stem_weight.data_ptr<float>(),
                    grad.data_ptr<float>(),
                    band_mean.data_ptr<float>(),
                    grad_mean.data_ptr<float>(),
                    dx.defined() ? dx.data_ptr<double>() : nullptr,
                    dh.defined() ? dh.data_ptr<double>() : nullptr,
                    dw.defined() ? dw.data_ptr<double>() : nullptr,
                    in.samples,
                    in.filters_count,
                    in.taps,
                    in.channels,
                    in.outputs,
                    tiles,
                    0,
                    colors,
                    static_cast<float>(log_eps),
                    static_cast<float>(exact_below),
                    in.symmetric,
                    linear_phase};
  for (int64_t color = 0; color < std::min(colors, tiles); ++color) {
    args.color = color;
    const int64_t per_clip = (tiles - color + colors - 1) / colors;
    at::parallel_for(0, in.batch * per_clip, 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
      if (wide) return backward_tiles_w16(args, begin, end);
#endif
      backward_tiles_w8(args, begin, end);
    });
  }
  return finish_audio_frontend_stem_backward(in, dx, dh.defined() ? dh.sum(0) : dh, dw.defined() ? dw.sum(0) : dw,
                                             linear_phase);
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def(
      "audio_frontend_stem(Tensor x, Tensor filters, Tensor stem_weight, float log_eps, float exact_below=0.001, "
      "bool linear_phase=False, str formulation=\"auto\") -> (Tensor, Tensor)");
  m.def(
      "audio_frontend_stem_backward(Tensor grad_out, Tensor x, Tensor filters, Tensor stem_weight, Tensor band_mean, "
      "float log_eps, float exact_below=0.001, bool linear_phase=False, bool[3] output_mask=[True, True, True]) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) {
  m.impl("audio_frontend_stem", &avfused::audio_frontend_stem_cpu);
  m.impl("audio_frontend_stem_backward", &avfused::audio_frontend_stem_backward_cpu);
}
