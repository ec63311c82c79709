// The float64 side of the CPU front end's exact recompute (audio_frontend_stem.h, "Accuracy") and the
// zero-padded input windows every tile reads, shared by the direct kernels (audio_frontend_stem_cpu.cpp)
// and the FFT forward (audio_frontend_stem_fft_cpu.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../common/simd.h"

namespace avfused {
namespace exact {

typedef double double4 __attribute__((vector_size(32)));

AVFUSED_INLINE double dot64(const double* a, const double* b, int64_t n) {
  double4 acc[4] = {};  // four chains: the loop is bound by the FMA latency, not its throughput
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    for (int i = 0; i < 4; ++i) {
      double4 av, bv;
      std::memcpy(&av, a + k + 4 * i, sizeof(av));
      std::memcpy(&bv, b + k + 4 * i, sizeof(bv));
      acc[i] += av * bv;
    }
  }
  const double4 total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  double sum = (total[0] + total[1]) + (total[2] + total[3]);
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

// out[i] = factor * rms(window[i .. i + K)) for i in [0, count): the scale of y's float32 rounding error.
inline void local_rms(const double* window, int64_t taps, int64_t count, double factor, float* out) {
  double sum = 0;
  for (int64_t k = 0; k < taps; ++k) sum += window[k] * window[k];
  for (int64_t i = 0; i < count; ++i) {
    if (i > 0) sum += window[i + taps - 1] * window[i + taps - 1] - window[i - 1] * window[i - 1];
    out[i] = static_cast<float>(factor * std::sqrt(std::max(sum, 0.0) / taps));
  }
}

// Whether any of W responses is below its exact-recompute threshold (threshold * norm).
template <int W>
AVFUSED_INLINE bool any_below(const float* y, const float* threshold, float norm) {
  using V = typename simd::Vec<W>::f;
  return simd::any<W>(simd::abs(simd::load<V>(y)) < simd::load<V>(threshold) * norm);
}

// A window of one clip (float32 or float64): out[i] = x[first + i] for i in [0, count), zero outside [0, S).
template <class T>
inline void fill_window(const T* xb, int64_t samples, int64_t first, int64_t count, T* out) {
  for (int64_t i = 0; i < count; ++i) {
    const int64_t src = first + i;
    out[i] = (src >= 0 && src < samples) ? xb[src] : T(0);
  }
}

}  // namespace exact
}  // namespace avfused
