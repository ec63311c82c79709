// Forward of the fused audio front end + stem on the CPU by FFT (overlap-save): the same function as the
// direct forward in audio_frontend_stem_cpu.cpp, with about a tenth of its arithmetic at K = 251 taps.
//
// Work unit: one clip and one tile of T stem outputs, whose 4 T + 3 band positions and their K - 1 inputs of
// halo fit one window of N = 1024 samples. The window's spectrum comes from ATen (float64, rounded to
// float32; half of it, the rest being its conjugate). Per group of 2 W filters it is multiplied by the
// filters' spectra and sent through one inverse FFT whose W lanes are W filter pairs: lane l carries filter
// a in the real part and filter b in the imaginary part (both responses are real, so one complex transform
// serves two filters, and the lanes never need a shuffle). Correlating with h is convolving with h
// reversed: outputs K-1 .. N-1 of the circular result are the band responses of the tile, none of them
// wrapped around. The log, the recompute of responses near zero, the tile sums and the stem run in the same
// layout (filters across lanes); the stem accumulates per lane and is summed across lanes once per tile.
//
// Accuracy: the transform's float32 rounding of a response is not local as the direct sum's is: it is about
// u sqrt(log2 N) times the rms of its lane's two responses over the whole window (a loud burst leaves that
// much on the quiet samples beside it). So a response with
//   |y| < exact_below * max(||h_f|| rms_local(x),  kWindowFactor sqrt(log2 N / K) rms_window(lane))
// is taken from the direct float32 sum instead (per flagged filter, or all W lanes of that position at
// once where many are flagged: rounding local to its K inputs), and where that is below the first term,
// recomputed in float64 exactly as the direct forward does. The output is then as close to float64 as the
// direct forward's. Measured (the model's filters, log_eps 1e-6, op output against float64): without the
// window term 1 s of bursts beside near-silence kept 7.4e-4 of error; recomputing every flagged response in
// float64 instead of by the direct sum made silent or near-silent pauses (zero padding, speech) 1.3-3x slower
// than the direct forward, where now they are as fast or faster (docs/design.md, section 4).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "../common/simd.h"
#include "audio_frontend_stem.h"
#include "exact_recompute.h"

namespace avfused {
namespace {

constexpr int64_t kFftSize = 1024;  // 4^5: five radix-4 passes
constexpr int64_t kFftLog2 = 10;
constexpr int64_t kHalfBins = kFftSize / 2 + 1;  // of a real signal's spectrum
constexpr double kWindowFactor = 20.0;  // the exact recompute's window term (header)

// Twiddles of the inverse transform, w^m = exp(+2 pi i m / N) for m in [0, 3N/4), rounded from float64;
// and where the in-place radix-4 decimation in frequency leaves output n (base-4 digit reversal).
struct FftTables {
  std::vector<float> cos, sin;
  std::vector<int32_t> position;
  FftTables() : cos(3 * kFftSize / 4), sin(3 * kFftSize / 4), position(kFftSize) {
    for (int64_t m = 0; m < 3 * kFftSize / 4; ++m) {
      const double angle = 2.0 * M_PI * static_cast<double>(m) / kFftSize;
      cos[m] = static_cast<float>(std::cos(angle));
      sin[m] = static_cast<float>(std::sin(angle));
    }
    for (int64_t n = 0; n < kFftSize; ++n) {
      int64_t rest = n, place = 0;
      for (int64_t size = kFftSize; size > 1; size /= 4) {  // the first pass files n % 4 into quarter n % 4
        place += (rest % 4) * (size / 4);
        rest /= 4;
      }
      position[n] = static_cast<int32_t>(place);
    }
  }
};

const FftTables& fft_tables() {
  static const FftTables tables;
  return tables;
}

struct FftArgs {
  const float* spectra;    // (B, tiles, N/2 + 1, 2): each tile's input window transformed (half spectrum)
  const float* filters;    // (groups, 2, N, W): (H_a + i H_b) / N per lane, real then imaginary part
  const float* weight;     // (groups, 2, C, 7, W): stem weight of lane l's filter in half 0 (a) or 1 (b)
  const float* norms;      // (groups, 2, W): ||h_f||_2, zero for padding filters
  const float* x;          // (B, S), float32: the direct sums of the recompute
  const float* lane_taps;  // (groups, 2, K, W): the float32 taps per lane
  const float* row_taps;   // (F, padded_taps): each filter's float32 taps, zero past K
  const double* x64;       // (B, S)
  const double* taps64;    // (F, K)
  float* acc;              // (B, C, O): stem of the log energies
  float* tile_sums;        // (B, tiles, F): sums of the log energies over each tile's own positions
  int64_t samples, filters_count, taps, padded_taps, channels, outputs, tiles, out_tile, groups;
  float log_eps, exact_below;
  float window_scale;      // exact_below * kWindowFactor sqrt(log2 N / K): the threshold's window term
  bool symmetric;          // linear-phase taps: fold k and K-1-k in the direct sums
};

template <class V>
AVFUSED_INLINE void twiddle(V& re, V& im, float c, float s) {  // (re + i im) (c + i s)
  const V r = re * c - im * s;
  im = re * s + im * c;
  re = r;
}

// One radix-4 butterfly of the inverse transform on a[0..3] (entries p, p + q, p + 2q, p + 3q); output r
// is multiplied by w^(r t) (t = 0: no twiddles, the last pass).
template <int W, bool kTwiddle>
AVFUSED_INLINE void butterfly(float* re, float* im, int64_t p, int64_t q, const typename simd::Vec<W>::f (&ar)[4],
                              const typename simd::Vec<W>::f (&ai)[4], const FftTables& tw, int64_t t) {
  using V = typename simd::Vec<W>::f;
  const V t0r = ar[0] + ar[2], t0i = ai[0] + ai[2], t1r = ar[0] - ar[2], t1i = ai[0] - ai[2];
  const V t2r = ar[1] + ar[3], t2i = ai[1] + ai[3], t3r = ar[1] - ar[3], t3i = ai[1] - ai[3];
  V u1r = t1r - t3i, u1i = t1i + t3r;  // t1 + i t3
  V u2r = t0r - t2r, u2i = t0i - t2i;
  V u3r = t1r + t3i, u3i = t1i - t3r;  // t1 - i t3
  if (kTwiddle) {
    twiddle(u1r, u1i, tw.cos[t], tw.sin[t]);
    twiddle(u2r, u2i, tw.cos[2 * t], tw.sin[2 * t]);
    twiddle(u3r, u3i, tw.cos[3 * t], tw.sin[3 * t]);
  }
  simd::store(re + p * W, t0r + t2r);
  simd::store(im + p * W, t0i + t2i);
  simd::store(re + (p + q) * W, u1r);
  simd::store(im + (p + q) * W, u1i);
  simd::store(re + (p + 2 * q) * W, u2r);
  simd::store(im + (p + 2 * q) * W, u2i);
  simd::store(re + (p + 3 * q) * W, u3r);
  simd::store(im + (p + 3 * q) * W, u3i);
}

// The first pass with the spectral product folded in: entry k = X[k] G[k] (X one complex number per bin,
// G a vector of W lanes). Returns sum_k |X[k] G[k]|^2 per lane, the mean square of the lane's outputs.
template <int W>
AVFUSED_INLINE typename simd::Vec<W>::f product_pass(const float* x, const float* g_re, const float* g_im, float* re,
                                                     float* im, const FftTables& tw) {
  using V = typename simd::Vec<W>::f;
  constexpr int64_t q = kFftSize / 4;
  V energy{};
  for (int64_t j = 0; j < q; ++j) {
    V ar[4], ai[4];
    for (int m = 0; m < 4; ++m) {
      const int64_t k = j + m * q;
      const float xr = x[2 * k], xi = x[2 * k + 1];
      const V gr = simd::load<V>(g_re + k * W), gi = simd::load<V>(g_im + k * W);
      ar[m] = gr * xr - gi * xi;
      ai[m] = gr * xi + gi * xr;
      energy += ar[m] * ar[m] + ai[m] * ai[m];
    }
    butterfly<W, true>(re, im, j, q, ar, ai, tw, j);
  }
  return energy;
}

// One pass of butterflies of span len over entries [begin, begin + span) (a multiple of len).
template <int W, bool kTwiddle>
AVFUSED_INLINE void radix4_pass(float* re, float* im, int64_t begin, int64_t span, int64_t len, const FftTables& tw) {
  using V = typename simd::Vec<W>::f;
  const int64_t q = len / 4, step = kFftSize / len;
  for (int64_t base = begin; base < begin + span; base += len) {
    for (int64_t j = 0; j < q; ++j) {
      const int64_t p = base + j;
      V ar[4], ai[4];
      for (int m = 0; m < 4; ++m) {
        ar[m] = simd::load<V>(re + (p + m * q) * W);
        ai[m] = simd::load<V>(im + (p + m * q) * W);
      }
      butterfly<W, kTwiddle>(re, im, p, q, ar, ai, tw, j * step);
    }
  }
}

// The passes after the first, quarter by quarter: a quarter's N/4 entries (32 KB at W = 16) stay in L1
// through its four passes, where pass by pass over the whole transform each would stream it from L2.
template <int W>
AVFUSED_INLINE void remaining_passes(float* re, float* im, const FftTables& tw) {
  constexpr int64_t quarter = kFftSize / 4;
  for (int64_t begin = 0; begin < kFftSize; begin += quarter) {
    for (int64_t len = quarter; len > 4; len /= 4) radix4_pass<W, true>(re, im, begin, quarter, len, tw);
    radix4_pass<W, false>(re, im, begin, quarter, 4, tw);
  }
}

// A float buffer whose start is 64-byte aligned: W-lane loads and stores then never split a cache line.
class AlignedBuffer {
 public:
  explicit AlignedBuffer(int64_t count) : storage_(count + 16) {}
  float* data() {
    const auto address = reinterpret_cast<uintptr_t>(storage_.data());
    return storage_.data() + ((64 - address % 64) % 64) / sizeof(float);
  }

 private:
  std::vector<float> storage_;
};

// nO outputs x nC channels of the stem in registers: out_lanes[c][o] += sum_j w[c][j] e[4 o + j], per lane.
// (A template, not a lambda: a lambda would not inherit the caller's target("avx512f").)
template <int W, int nO, int nC>
AVFUSED_INLINE void stem_block(const float* e, const float* w, int64_t o, int64_t c, int64_t stride, float* out_lanes) {
  using V = typename simd::Vec<W>::f;
  V acc[nC][nO];
  for (int ci = 0; ci < nC; ++ci)
    for (int oi = 0; oi < nO; ++oi) acc[ci][oi] = V{};
  for (int64_t j = 0; j < kStemKernel; ++j) {
    V energy[nO];
    for (int oi = 0; oi < nO; ++oi) energy[oi] = simd::load<V>(e + (kStemStride * (o + oi) + j) * W);
    for (int ci = 0; ci < nC; ++ci) {
      const V weight = simd::load<V>(w + ((c + ci) * kStemKernel + j) * W);
      for (int oi = 0; oi < nO; ++oi) acc[ci][oi] += weight * energy[oi];
    }
  }
  for (int ci = 0; ci < nC; ++ci) {
    for (int oi = 0; oi < nO; ++oi) {
      float* dst = out_lanes + ((c + ci) * stride + o + oi) * W;
      simd::store(dst, simd::load<V>(dst) + acc[ci][oi]);
    }
  }
}

// One half-group's share of the stem (w: (C, 7, W), e: the log energies (positions, W)), in blocks of 4
// outputs x kC channels: each weight and energy load feeds several multiplies (with one each, the loop was
// bound by its loads).
template <int W>
AVFUSED_INLINE void stem_lanes(const float* e, const float* w, int64_t channels, int64_t out_count, int64_t stride,
                               float* out_lanes) {
  constexpr int kO = 4, kC = W == 16 ? 4 : 2;  // 16 or 8 accumulators: of 32 or 16 vector registers
  int64_t o = 0;
  for (; o + kO <= out_count; o += kO) {
    int64_t c = 0;
    for (; c + kC <= channels; c += kC) stem_block<W, kO, kC>(e, w, o, c, stride, out_lanes);
    for (; c < channels; ++c) stem_block<W, kO, 1>(e, w, o, c, stride, out_lanes);
  }
  for (; o < out_count; ++o) {
    for (int64_t c = 0; c < channels; ++c) stem_block<W, 1, 1>(e, w, o, c, stride, out_lanes);
  }
}

// y at one position for the W filters of a half-group by the direct float32 sum over taps (window: the
// position's K inputs; taps: (K, W), lanes = filters; linear-phase taps folded as in the direct forward):
// rounding local to those K inputs, not the FFT's window-wide one.
template <int W>
AVFUSED_INLINE typename simd::Vec<W>::f direct_lanes(const float* window, const float* taps, int64_t K, bool symmetric) {
  using V = typename simd::Vec<W>::f;
  V even{}, odd{};  // two chains: the sum is bound by the FMA latency
  if (symmetric) {
    const int64_t half = K / 2;
    int64_t k = 0;
    for (; k + 1 < half; k += 2) {
      even += simd::load<V>(taps + k * W) * (window[k] + window[K - 1 - k]);
      odd += simd::load<V>(taps + (k + 1) * W) * (window[k + 1] + window[K - 2 - k]);
    }
    for (; k < half; ++k) even += simd::load<V>(taps + k * W) * (window[k] + window[K - 1 - k]);
    even += simd::load<V>(taps + half * W) * window[half];
  } else {
    int64_t k = 0;
    for (; k + 1 < K; k += 2) {
      even += simd::load<V>(taps + k * W) * window[k];
      odd += simd::load<V>(taps + (k + 1) * W) * window[k + 1];
    }
    if (k < K) even += simd::load<V>(taps + k * W) * window[k];
  }
  return even + odd;
}

// The same direct float32 sum for one filter, vectorised over its taps (row: its padded_taps taps, zero past
// K; window: padded_taps readable inputs): a few flagged lanes cost this each, where direct_lanes costs K
// vector multiplies whatever the number of lanes that need it.
template <int W>
AVFUSED_INLINE float direct_one(const float* window, const float* row, int64_t padded_taps) {
  using V = typename simd::Vec<W>::f;
  V acc[4] = {};  // four chains: the dot is bound by the multiply-add latency, not its throughput
  int64_t k = 0;
  for (; k + 4 * W <= padded_taps; k += 4 * W) {
    for (int i = 0; i < 4; ++i) acc[i] += simd::load<V>(row + k + i * W) * simd::load<V>(window + k + i * W);
  }
  for (; k < padded_taps; k += W) acc[0] += simd::load<V>(row + k) * simd::load<V>(window + k);
  return simd::lane_total<W>((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

// Up to this many flagged lanes of W take direct_one per lane, more take direct_lanes: one lane's dot costs
// about K / W vector multiply-adds and a lane sum, the all-lanes sum K / 2 (folded taps) to K. On noise, 98 %
// of the positions with a flagged lane have one or two.
template <int W>
constexpr int kMaxLaneDots = W / 4;

template <int W>
AVFUSED_INLINE void fft_units_impl(const FftArgs& a, int64_t unit_begin, int64_t unit_end) {
  using V = typename simd::Vec<W>::f;
  const FftTables& tw = fft_tables();
  const int64_t K = a.taps, half = K / 2, T = a.out_tile, C = a.channels;
  const int64_t max_positions = kStemStride * T + kStemPad;
  const bool exact = a.exact_below > 0;
  AlignedBuffer re_buffer(kFftSize * W), im_buffer(kFftSize * W), energy_buffer(max_positions * W),
      out_buffer(C * T * W);
  float* re = re_buffer.data();
  float* im = im_buffer.data();
  float* energy = energy_buffer.data();  // log energies of one half-group, lanes innermost
  float* out_lanes = out_buffer.data();  // stem partial sums per lane
  std::vector<double> window64(exact ? max_positions + K - 1 : 0);
  std::vector<float> window(exact ? max_positions + a.padded_taps - 1 : 0);  // past K: read times zero taps
  std::vector<float> local(max_positions, 0.f);      // exact_below * rms of each position's inputs
  std::vector<float> spectrum(2 * kFftSize);
  alignas(64) float ys[W];  // one position's responses, where some lanes are recomputed
  int32_t flags[W];         // and which
  for (int64_t unit = unit_begin; unit < unit_end; ++unit) {
    const int64_t b = unit / a.tiles, tile = unit % a.tiles;
    const int64_t o0 = tile * T, out_count = std::min(T, a.outputs - o0);
    const int64_t t0 = kStemStride * o0 - kStemPad;  // band position of local index 0
    const int64_t positions = kStemStride * out_count + kStemPad;
    const int64_t own_begin = kStemPad, own_end = std::min<int64_t>(kStemPad + kStemStride * out_count, a.samples - t0);
    const int64_t valid_begin = std::max<int64_t>(0, -t0), valid_end = std::min(positions, a.samples - t0);
    if (exact) {
      exact::fill_window(a.x64 + b * a.samples, a.samples, t0 - half, positions + K - 1, window64.data());
      exact::local_rms(window64.data(), K, positions, a.exact_below, local.data());
      exact::fill_window(a.x + b * a.samples, a.samples, t0 - half, positions + K - 1, window.data());
    }
    const float* half_spectrum = a.spectra + (b * a.tiles + tile) * kHalfBins * 2;
    for (int64_t k = 0; k < kFftSize; ++k) {  // the window's whole spectrum: X[N - k] = conj(X[k])
      const int64_t bin = k < kHalfBins ? k : kFftSize - k;
      spectrum[2 * k] = half_spectrum[2 * bin];
      spectrum[2 * k + 1] = k < kHalfBins ? half_spectrum[2 * bin + 1] : -half_spectrum[2 * bin + 1];
    }
    const float* x = spectrum.data();
    float* sums = a.tile_sums + (b * a.tiles + tile) * a.filters_count;
    std::fill(out_lanes, out_lanes + C * T * W, 0.f);
    for (int64_t g = 0; g < a.groups; ++g) {
      const float* g_re = a.filters + g * 2 * kFftSize * W;
      const V mean_square = product_pass<W>(x, g_re, g_re + kFftSize * W, re, im, tw);
      remaining_passes<W>(re, im, tw);
      V window_threshold{};
      for (int l = 0; l < W; ++l) window_threshold[l] = a.window_scale * std::sqrt(mean_square[l]);
      for (int part = 0; part < 2; ++part) {  // 0: the lanes' filters a (real parts), 1: filters b
        const float* z = part == 0 ? re : im;
        const int64_t f_base = (2 * g + part) * W;
        const V norm = simd::load<V>(a.norms + (2 * g + part) * W);
        const float* taps = a.lane_taps + (2 * g + part) * K * W;
        V sum{};
        for (int64_t i = 0; i < positions; ++i) {
          float* le = energy + i * W;
          if (i < valid_begin || i >= valid_end) {  // the stem pads the energies with zeros
            simd::store(le, V{});
            continue;
          }
          V y = simd::load<V>(z + tw.position[i + K - 1] * W);
          // The rare lanes below go through the arrays ys / flags: a vector indexed by a lane number can make
          // GCC keep it in memory on every position, not only on the few that need it.
          typename simd::Vec<W>::i below{};  // the lanes to recompute in float64
          if (exact) {
            const V local_threshold = simd::splat<V>(local[i]) * norm;
            below = simd::abs(y) < (local_threshold > window_threshold ? local_threshold : window_threshold);
            if (__builtin_expect(simd::any<W>(below), 0)) {  // the FFT's window-wide rounding may dominate:
              simd::store(ys, y);                               // the direct float32 sum
              std::memcpy(flags, &below, sizeof(flags));
              int flagged = 0;
              for (int l = 0; l < W; ++l) flagged += flags[l] != 0;
              if (flagged > kMaxLaneDots<W>) {
                y = below ? direct_lanes<W>(window.data() + i, taps, K, a.symmetric) : y;
              } else {
                for (int l = 0; l < W; ++l) {
                  if (flags[l] && f_base + l < a.filters_count)
                    ys[l] = direct_one<W>(window.data() + i, a.row_taps + (f_base + l) * a.padded_taps, a.padded_taps);
                }
                y = simd::load<V>(ys);
              }
              below = simd::abs(y) < local_threshold;  // what the direct forward recomputes in float64
            }
          }
          V value = simd::fast_log(simd::abs(y) + a.log_eps);
          simd::store(le, value);
          if (__builtin_expect(simd::any<W>(below), 0)) {
            std::memcpy(flags, &below, sizeof(flags));
            for (int l = 0; l < W; ++l) {
              const int64_t f = f_base + l;
              if (!flags[l] || f >= a.filters_count) continue;
              const double y64 = exact::dot64(a.taps64 + f * K, window64.data() + i, K);
              le[l] = static_cast<float>(std::log(std::fabs(y64) + a.log_eps));
            }
            value = simd::load<V>(le);
          }
          if (i >= own_begin && i < own_end) sum += value;
        }
        for (int l = 0; l < W && f_base + l < a.filters_count; ++l) sums[f_base + l] = sum[l];
        stem_lanes<W>(energy, a.weight + (2 * g + part) * C * kStemKernel * W, C, out_count, T, out_lanes);
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      float* dst = a.acc + (b * C + c) * a.outputs + o0;
      for (int64_t o = 0; o < out_count; ++o) {
        const V lanes = simd::load<V>(out_lanes + (c * T + o) * W);
        float total = 0.f;
        for (int l = 0; l < W; ++l) total += lanes[l];
        dst[o] = total;
      }
    }
  }
}

AVFUSED_TARGET_CLONES
void fft_units_w8(const FftArgs& a, int64_t unit_begin, int64_t unit_end) { fft_units_impl<8>(a, unit_begin, unit_end); }

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void fft_units_w16(const FftArgs& a, int64_t unit_begin, int64_t unit_end) {
  fft_units_impl<16>(a, unit_begin, unit_end);
}
#endif

// (groups, 2, ...) per-lane layout of a per-filter tensor (F, ...) zero-padded to groups * 2 W filters:
// lane l of half h of group g is filter (2 g + h) W + l; the lanes end up innermost.
at::Tensor per_lane(const at::Tensor& per_filter, int64_t groups, int64_t lanes) {
  std::vector<int64_t> padded_shape = per_filter.sizes().vec();
  padded_shape[0] = groups * 2 * lanes;
  at::Tensor padded = at::zeros(padded_shape, per_filter.options());
  padded.narrow(0, 0, per_filter.size(0)).copy_(per_filter);
  std::vector<int64_t> split{groups, 2, lanes};
  split.insert(split.end(), padded_shape.begin() + 1, padded_shape.end());
  return padded.reshape(split).movedim(2, -1).contiguous();
}

// (groups, 2, N, W): lane l of group g holds (H_a + i H_b) / N, real parts then imaginary parts, where H is
// the transform of a reversed filter zero padded to N and a, b are the lane's two filters (zero past F):
// from the half spectra, H[N - k] = conj(H[k]), in float64, rounded once.
at::Tensor lane_pair_spectra(const at::Tensor& filters64, int64_t groups, int64_t lanes) {
  const at::Tensor half = at::view_as_real(at::fft_rfft(filters64.flip(1), kFftSize)).contiguous();
  const int64_t count = filters64.size(0), bins = kFftSize / 2 + 1;
  at::Tensor out = at::empty({groups, 2, kFftSize, lanes}, filters64.options().dtype(at::kFloat));
  const double* h = half.data_ptr<double>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, groups * lanes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t g = pair / lanes, l = pair % lanes, a = 2 * g * lanes + l, b = a + lanes;
      for (int64_t k = 0; k < kFftSize; ++k) {
        const int64_t bin = k < bins ? k : kFftSize - k;
        const double conj = k < bins ? 1.0 : -1.0;
        const double ar = a < count ? h[(a * bins + bin) * 2] : 0.0;
        const double ai = a < count ? conj * h[(a * bins + bin) * 2 + 1] : 0.0;
        const double br = b < count ? h[(b * bins + bin) * 2] : 0.0;
        const double bi = b < count ? conj * h[(b * bins + bin) * 2 + 1] : 0.0;
        o[((2 * g) * kFftSize + k) * lanes + l] = static_cast<float>((ar - bi) / kFftSize);
        o[((2 * g + 1) * kFftSize + k) * lanes + l] = static_cast<float>((ai + br) / kFftSize);
      }
    }
  });
  return out;
}

// What the FFT forward derives from the filters alone. Inference calls the op with the same filters every
// time (rebuilding this set was about 2 ms a call at F = 256, K = 251, N = 1024), so the last set is kept;
// it is reused only for bit-identical float64 filters at the same lane width, so a changed filter (training)
// never reads a stale one. The tensors are never written after they are built.
struct FilterLayout {
  std::vector<double> key;  // the float64 filters (F x K) the set was built from
  int64_t taps = 0;         // K: with key's length, F (two banks may hold the same numbers in other shapes)
  int64_t lanes = 0;
  bool with_norms = false;  // norms are ||h_f|| (the exact recompute on), not zeros
  at::Tensor spectra, norms, lane_taps, row_taps;
};

FilterLayout filter_layout(const AudioFrontendStemInputs& in, int64_t groups, int64_t lanes, bool with_norms) {
  static std::mutex mutex;
  static FilterLayout last;
  const int64_t count = in.filters_count * in.taps;
  const double* h = in.filters64.data_ptr<double>();
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (last.taps == in.taps && last.lanes == lanes && last.with_norms == with_norms && static_cast<int64_t>(last.key.size()) == count &&
        std::memcmp(last.key.data(), h, count * sizeof(double)) == 0) {
      return last;
    }
  }
  FilterLayout layout;
  layout.key.assign(h, h + count);
  layout.taps = in.taps;
  layout.lanes = lanes;
  layout.with_norms = with_norms;
  layout.spectra = lane_pair_spectra(in.filters64, groups, lanes);
  layout.norms = per_lane(in.filter_norms, groups, lanes);
  layout.lane_taps = per_lane(in.filters, groups, lanes);  // (groups, 2, K, W)
  const int64_t padded_taps = simd::round_up(in.taps, lanes);
  layout.row_taps = at::constant_pad_nd(in.filters, {0, padded_taps - in.taps}).contiguous();
  std::lock_guard<std::mutex> lock(mutex);
  last = layout;
  return layout;
}

}  // namespace

int64_t fft_forward_out_tile(int64_t taps) { return (kFftSize - taps + 1 - kStemPad) / kStemStride; }

std::tuple<at::Tensor, at::Tensor> audio_frontend_stem_fft_forward(const AudioFrontendStemInputs& in, double log_eps,
                                                                   double exact_below) {
  const bool wide = simd::use_wide_vectors();
  const int64_t lanes = wide ? 16 : 8;
  const int64_t K = in.taps, out_tile = fft_forward_out_tile(K);
  TORCH_CHECK(out_tile >= 1, "avfused_ext.audio_frontend_stem: the FFT forward takes filters of at most ",
              kFftSize - kStemPad - kStemStride + 1, " taps, got ", K);
  const int64_t tiles = (in.outputs + out_tile - 1) / out_tile, hop = kStemStride * out_tile;
  const int64_t groups = (in.filters_count + 2 * lanes - 1) / (2 * lanes);
  const at::TensorOptions f64 = in.x64.options();

  // Tile t's window starts at sample hop t - 3 - K/2: windows of a copy of x shifted by 3 + K/2, zero padded.
  const int64_t lead = kStemPad + K / 2, padded_length = hop * (tiles - 1) + kFftSize;
  at::Tensor shifted = at::zeros({in.batch, padded_length}, f64);
  const int64_t copied = std::min(in.samples, padded_length - lead);
  shifted.narrow(1, lead, copied).copy_(in.x64.narrow(1, 0, copied));
  const at::Tensor spectra =  // (B, tiles, N/2 + 1, 2): x is real, the other half is conjugate
      at::view_as_real(at::fft_rfft(shifted.unfold(1, kFftSize, hop))).to(at::kFloat).contiguous();

  const FilterLayout layout = filter_layout(in, groups, lanes, exact_below > 0);
  const at::Tensor weight = per_lane(in.stem_weight.transpose(0, 1), groups, lanes)  // (groups, 2, C, 7, W)
                                .contiguous();

  at::Tensor acc = at::empty({in.batch, in.channels, in.outputs}, in.x.options());
  at::Tensor tile_sums = at::empty({in.batch, tiles, in.filters_count}, in.x.options());
  const FftArgs args{spectra.data_ptr<float>(),
                     layout.spectra.data_ptr<float>(),
                     weight.data_ptr<float>(),
                     layout.norms.data_ptr<float>(),
                     in.x.data_ptr<float>(),
                     layout.lane_taps.data_ptr<float>(),
                     layout.row_taps.data_ptr<float>(),
                     in.x64.data_ptr<double>(),
                     in.filters64.data_ptr<double>(),
                     acc.data_ptr<float>(),
                     tile_sums.data_ptr<float>(),
                     in.samples,
                     in.filters_count,
                     K,
                     layout.row_taps.size(1),
                     in.channels,
                     in.outputs,
                     tiles,
                     out_tile,
                     groups,
                     static_cast<float>(log_eps),
                     static_cast<float>(exact_below),
                     static_cast<float>(exact_below * kWindowFactor * std::sqrt(static_cast<double>(kFftLog2) / K)),
                     in.symmetric};
  at::parallel_for(0, in.batch * tiles, 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (wide) return fft_units_w16(args, begin, end);
#endif
    fft_units_w8(args, begin, end);
  });
  return {acc, tile_sums};
}

}  // namespace avfused
