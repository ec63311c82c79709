// Portable fixed-width SIMD helpers for the CPU kernels (GCC/Clang vector extensions).
//
// Vec<W>::f is W floats (Vec<W>::i the matching int32 lanes). Kernels are written once as
// always-inline templates and instantiated in functions compiled for several instruction sets:
// AVX-512 (W = 16) picked at run time where the CPU has it, else target clones for AVX2+FMA and
// the x86-64 baseline (W = 8; GCC lowers it to one ymm or two xmm registers). Other architectures
// get the plain build of the same source.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace avfused::simd {

// The smallest multiple of `multiple` that is >= value (value >= 0): padded lengths of vector loops.
inline int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

template <int W>
struct Vec {
  typedef float f __attribute__((vector_size(W * 4)));
  typedef int32_t i __attribute__((vector_size(W * 4)));
};
using vec8 = Vec<8>::f;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define AVFUSED_X86_DISPATCH 1
// Runtime dispatch between instruction sets; one binary stays valid on older CPUs.
#define AVFUSED_TARGET_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define AVFUSED_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi2")))
inline bool cpu_has_avx512() { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"); }
#else
#define AVFUSED_X86_DISPATCH 0
#define AVFUSED_TARGET_CLONES
#define AVFUSED_TARGET_AVX512
inline bool cpu_has_avx512() { return false; }
#endif

#define AVFUSED_INLINE inline __attribute__((always_inline))

// The 16-lane (AVX-512) kernels where the CPU has them; AVFUSED_CPU_NO_AVX512=1 takes the 8-lane path
// even there, so the tests cover both.
inline bool use_wide_vectors() {
  const char* no_avx512 = std::getenv("AVFUSED_CPU_NO_AVX512");
  return cpu_has_avx512() && !(no_avx512 != nullptr && no_avx512[0] == '1');
}

template <class V>
AVFUSED_INLINE V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));  // unaligned load
  return v;
}

template <class V>
AVFUSED_INLINE void store(float* p, V v) {
  std::memcpy(p, &v, sizeof(v));
}

// Reinterpret the bits of one vector type as another of the same size (no aliasing UB).
template <class To, class From>
AVFUSED_INLINE To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between different sizes");
  To to;
  std::memcpy(&to, &from, sizeof(to));
  return to;
}

// Whether any lane of a comparison's result (-1 where true) is set: halves OR-ed together down to 64 bits
// (log2 W vector ORs, where OR-ing the W / 2 64-bit parts one by one moves each into a general register).
template <int W>
AVFUSED_INLINE bool any(const typename Vec<W>::i& mask) {
  if constexpr (W <= 2) {
    uint64_t bits = 0;
    std::memcpy(&bits, &mask, sizeof(mask));
    return bits != 0;
  } else {
    typename Vec<W / 2>::i low, high;
    std::memcpy(&low, &mask, sizeof(low));
    std::memcpy(&high, reinterpret_cast<const char*>(&mask) + sizeof(low), sizeof(high));
    return any<W / 2>(low | high);
  }
}

// The sum of a vector's lanes by halving (log2 W dependent adds, where a lane loop is W - 1).
template <int W>
AVFUSED_INLINE float lane_total(const typename Vec<W>::f& v) {
  if constexpr (W <= 2) {
    return W == 2 ? v[0] + v[1] : v[0];
  } else {
    typename Vec<W / 2>::f low, high;
    std::memcpy(&low, &v, sizeof(low));
    std::memcpy(&high, reinterpret_cast<const char*>(&v) + sizeof(low), sizeof(high));
    return lane_total<W / 2>(low + high);
  }
}

template <class V>
AVFUSED_INLINE V splat(float s) {
  return V{} + s;
}

AVFUSED_INLINE vec8 load8(const float* p) { return load<vec8>(p); }
AVFUSED_INLINE void store8(float* p, vec8 v) { store(p, v); }
AVFUSED_INLINE vec8 splat8(float s) { return splat<vec8>(s); }

template <class V>
AVFUSED_INLINE V abs(V v) {
  using I = typename Vec<sizeof(V) / 4>::i;
  const I bits = bit_cast<I>(v) & 0x7fffffff;  // clear the sign bit
  return bit_cast<V>(bits);
}

// The lane totals of eight vectors at once, out[i] = the sum of v[i]'s lanes: a transpose tree of shuffles
// and adds (log2 W levels, each halving the lanes per vector), where eight separate lane loops would be eight
// chains of W - 1 dependent scalar adds.
AVFUSED_INLINE void lane_totals8(const Vec<16>::f (&v)[8], float* out) {
  using V = Vec<16>::f;
  V half[4], quarter[2];
  for (int i = 0; i < 4; ++i) {  // lanes 0-7: v[2i] (pairs summed), lanes 8-15: v[2i+1]
    const V& a = v[2 * i];
    const V& b = v[2 * i + 1];
    half[i] = __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
              __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  }
  for (int i = 0; i < 2; ++i) {  // four lanes per vector of v
    const V& a = half[2 * i];
    const V& b = half[2 * i + 1];
    quarter[i] = __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
                 __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  }
  const V pairs =  // two lanes per vector of v
      __builtin_shufflevector(quarter[0], quarter[1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
      __builtin_shufflevector(quarter[0], quarter[1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  const V totals = __builtin_shufflevector(pairs, pairs, 0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14) +
                   __builtin_shufflevector(pairs, pairs, 1, 3, 5, 7, 9, 11, 13, 15, 1, 3, 5, 7, 9, 11, 13, 15);
  std::memcpy(out, &totals, 8 * sizeof(float));
}

AVFUSED_INLINE void lane_totals8(const Vec<8>::f (&v)[8], float* out) {
  using V = Vec<8>::f;
  V half[4], quarter[2];
  for (int i = 0; i < 4; ++i) {  // lanes 0-3: v[2i], lanes 4-7: v[2i+1]
    half[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
              __builtin_shufflevector(v[2 * i], v[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15);
  }
  for (int i = 0; i < 2; ++i) {  // two lanes per vector of v
    quarter[i] = __builtin_shufflevector(half[2 * i], half[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
                 __builtin_shufflevector(half[2 * i], half[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15);
  }
  const V totals = __builtin_shufflevector(quarter[0], quarter[1], 0, 2, 4, 6, 8, 10, 12, 14) +
                   __builtin_shufflevector(quarter[0], quarter[1], 1, 3, 5, 7, 9, 11, 13, 15);
  std::memcpy(out, &totals, 8 * sizeof(float));
}

// Natural log of W floats x > 0 (Cephes logf polynomial, relative error about 1e-7). NaN and +inf
// pass through; the front end only calls it on |y| + eps >= eps.
template <class V>
AVFUSED_INLINE V fast_log(V x) {
  using I = typename Vec<sizeof(V) / 4>::i;
  const I bits = bit_cast<I>(x);
  I exponent = ((bits >> 23) & 0xff) - 127;
  const I mantissa_bits = (bits & 0x7fffff) | 0x3f800000;
  V m = bit_cast<V>(mantissa_bits);  // m in [1, 2)
  const I upper = m > 1.41421356f;                 // recentre on 1: m in [sqrt(1/2), sqrt(2))
  m = upper ? m * 0.5f : m;
  exponent -= upper;                                // the mask is -1 where true
  const V z = m - 1.0f;
  const V z2 = z * z;
  V p = splat<V>(7.0376836292e-2f);
  p = p * z - 1.1514610310e-1f;
  p = p * z + 1.1676998740e-1f;
  p = p * z - 1.2420140846e-1f;
  p = p * z + 1.4249322787e-1f;
  p = p * z - 1.6668057665e-1f;
  p = p * z + 2.0000714765e-1f;
  p = p * z - 2.4999993993e-1f;
  p = p * z + 3.3333331174e-1f;
  const V e = __builtin_convertvector(exponent, V);
  V r = p * z * z2;
  r += -2.12194440e-4f * e;  // ln 2 split in two for accuracy
  r += -0.5f * z2;
  r = z + r;
  r += 0.693359375f * e;
  // NaN and inf have all exponent bits set. An integer test: GCC 12 turns the float test x == x on
  // 16 lanes in a target("avx512f") function into 16 scalar compares, which made this log 5x slower.
  const I finite = (bits & 0x7fffffff) < 0x7f800000;
  return finite ? r : x;
}

// e^x of W floats x <= 0 (Cephes expf polynomial, relative error about 2e-7); 0 below -87.
template <class V>
AVFUSED_INLINE V fast_exp_nonpositive(V x) {
  using I = typename Vec<sizeof(V) / 4>::i;
  const I tiny = x < -87.0f;
  x = tiny ? splat<V>(-87.0f) : x;
  const V scaled = x * 1.44269504088896341f + 0.5f;
  I n_int = __builtin_convertvector(scaled, I);  // truncation toward zero ...
  V n = __builtin_convertvector(n_int, V);
  const I above = n > scaled;                    // ... made a floor
  n_int += above;
  n = above ? n - 1.0f : n;
  V r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  const V r2 = r * r;
  V p = splat<V>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const I scale_bits = (n_int + 127) << 23;
  const V result = p * bit_cast<V>(scale_bits);
  return tiny ? splat<V>(0.0f) : result;
}

AVFUSED_INLINE vec8 fast_exp8_nonpositive(vec8 x) { return fast_exp_nonpositive(x); }

}  // namespace avfused::simd
