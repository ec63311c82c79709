// Fused audio front end + stem on the GPU, forward and backward: sinc band-pass conv -> |.| -> log ->
// stem Conv1d(k7, s4). The (B, F, S) band energies never reach global memory.
//
// Forward: one block per (tile of 63 stem outputs, clip). The block stages the waveform window it needs
// in shared memory once, then walks the filters: each of its 256 threads computes one band position
// (4 * 63 + 3 = 255 positions cover the stem's receptive field), takes the log, and the block adds the
// stem taps into per-block accumulators. Per-tile sums of the energies give the band means; their
// (linear) stem is subtracted on the host side (audio_frontend_stem_cuda_host.cpp).
//
// Backward: one block per (run of kTilesPerBlock tiles of 256 band positions, clip, group of 4 filters).
// Every gradient is a sum over positions, so a tile needs only the inputs' halos (K - 1 samples of x,
// one stem output of grad_out). Per tile each thread recomputes y at its position for the group's
// filters, forms dy and a - m, then the block adds dw (a - m against grad_out), dh (dy against the x
// window, one tap per thread) and dx (dy against the taps, one dx position per thread) into shared
// float64 accumulators, flushed to global memory with atomics (dh, dw once per block; dx per tile).
//
// Both directions recompute in float64 the responses with |y| < exact_below * ||h_f|| * rms(inputs)
// (audio_frontend_stem.h); in the backward those positions leave the float32 sums and a short list of
// them is added to the float64 accumulators by the whole block.
#include <cuda_runtime.h>

#include "audio_frontend_stem.h"

namespace avfused::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kOutTile = kCudaFrontendOutTile;
constexpr int kPositions = 4 * kOutTile + 3;
constexpr int kStemTaps = static_cast<int>(kStemKernel);
constexpr int kDefaultSharedLimit = 48 * 1024;
static_assert(kPositions <= kThreads, "one band position per thread");

constexpr int kTile = kCudaBackwardTile;     // backward: one position per thread
constexpr int kGroup = kCudaBackwardFilters;  // backward: filters per block
constexpr int kTileOutputs = kTile / 4 + 2;  // grad_out columns a tile reads
constexpr int kTilesPerBlock = 4;
static_assert(kTile == kThreads, "one backward position per thread");

// ---------------------------------------------------------------------------------------------
// shared helpers
// ---------------------------------------------------------------------------------------------
// threshold[i] = exact_below * rms(window64[i .. i + K)) for i < count: double prefix sums of the squares
// (prefix: L + 1 doubles, L = count + K - 1), so each position costs O(1) whatever K.
__device__ void exact_thresholds(const double* window64, int taps, int count, float exact_below, double* prefix,
                                 double* warp_totals, float* threshold) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int length = count + taps - 1;
  const int per = (length + kThreads - 1) / kThreads;
  const int begin = min(length, tid * per), end = min(length, begin + per);
  double local = 0.0;
  for (int i = begin; i < end; ++i) local += window64[i] * window64[i];
  double inclusive = local;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const double other = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    double total = lane < kWarps ? warp_totals[lane] : 0.0;
    for (int offset = 1; offset < kWarps; offset <<= 1) {
      const double other = __shfl_up_sync(0xffffffffu, total, offset);
      if (lane >= offset) total += other;
    }
    if (lane < kWarps) warp_totals[lane] = total;  // inclusive over warps
  }
  __syncthreads();
  double running = (warp > 0 ? warp_totals[warp - 1] : 0.0) + inclusive - local;
  for (int i = begin; i < end; ++i) {
    prefix[i] = running;
    running += window64[i] * window64[i];
  }
  if (begin < end && end == length) prefix[length] = running;
  __syncthreads();
  for (int i = tid; i < count; i += kThreads) {
    const double sum = fmax(prefix[i + taps] - prefix[i], 0.0);
    threshold[i] = static_cast<float>(exact_below * sqrt(sum / taps));
  }
  __syncthreads();
}

// y at one position from `window` (float) and taps `h`: folded when the filter is linear phase.
__device__ __forceinline__ float band_response(const float* h, const float* window, int taps, bool symmetric) {
  float y = 0.f;
  if (symmetric) {
    const int half = taps / 2;
    for (int k = 0; k < half; ++k) y = fmaf(h[k], window[k] + window[taps - 1 - k], y);
    y = fmaf(h[half], window[half], y);
  } else {
    for (int k = 0; k < taps; ++k) y = fmaf(h[k], window[k], y);
  }
  return y;
}

// The same for kGroup filters (rows of h, stride taps) at once: each window value is read once for all.
template <int kCount>
__device__ __forceinline__ void band_responses(const float* h, const float* window, int taps, bool symmetric,
                                               float (&y)[kCount]) {
#pragma unroll
  for (int i = 0; i < kCount; ++i) y[i] = 0.f;
  if (symmetric) {
    const int half = taps / 2;
    for (int k = 0; k < half; ++k) {
      const float v = window[k] + window[taps - 1 - k];
#pragma unroll
      for (int i = 0; i < kCount; ++i) y[i] = fmaf(h[i * taps + k], v, y[i]);
    }
#pragma unroll
    for (int i = 0; i < kCount; ++i) y[i] = fmaf(h[i * taps + half], window[half], y[i]);
  } else {
    for (int k = 0; k < taps; ++k) {
      const float v = window[k];
#pragma unroll
      for (int i = 0; i < kCount; ++i) y[i] = fmaf(h[i * taps + k], v, y[i]);
    }
  }
}

// The float64 response at band position t of clip xb (zero padded), from global memory.
__device__ double exact_response(const double* h64, const double* xb, int samples, int taps, long long t) {
  const long long first = t - taps / 2;
  double y = 0.0;
  for (int k = 0; k < taps; ++k) {
    const long long src = first + k;
    if (src >= 0 && src < samples) y = fma(h64[k], xb[src], y);
  }
  return y;
}

// ---------------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------------
size_t forward_shared_bytes(int taps, int channels, bool exact) {
  size_t floats = static_cast<size_t>(kPositions + taps - 1)   // waveform window
                  + taps                                        // current filter
                  + channels * kStemTaps                        // its stem taps
                  + kPositions + 1                              // log energies of the current filter
                  + static_cast<size_t>(channels) * kOutTile    // stem accumulators
                  + kWarps                                      // warp partial sums
                  + kPositions + 1;                             // exact-recompute thresholds
  floats = (floats + 1) / 2 * 2;                                // the doubles after it are aligned
  size_t doubles = kWarps;
  if (exact) doubles += 2 * (kPositions + taps);                 // float64 window and its prefix sums
  return floats * sizeof(float) + doubles * sizeof(double);
}

__global__ void __launch_bounds__(kThreads)
    audio_frontend_stem_forward_kernel(FrontendArgs a, float* __restrict__ acc, float* __restrict__ tile_sums,
                                       int tiles) {
  extern __shared__ float smem[];
  const int taps = a.taps, channels = a.channels, samples = a.samples, filter_count = a.filter_count;
  const bool exact = a.exact_below > 0.f;
  const int window_len = kPositions + taps - 1;
  float* window = smem;
  float* h = window + window_len;
  float* wf = h + taps;
  float* energy = wf + channels * kStemTaps;
  float* out_tile = energy + kPositions + 1;
  float* warp_sums = out_tile + channels * kOutTile;
  float* threshold = warp_sums + kWarps;
  const size_t float_count = static_cast<size_t>(threshold + kPositions + 1 - smem);
  double* dsmem = reinterpret_cast<double*>(smem + (float_count + 1) / 2 * 2);
  double* warp_totals = dsmem;
  double* window64 = warp_totals + kWarps;
  double* prefix = window64 + window_len;

  const int tid = threadIdx.x;
  const int tile = blockIdx.x;
  const long long b = blockIdx.y;
  const int o0 = tile * kOutTile;
  const int out_count = min(kOutTile, a.outputs - o0);
  const long long t0 = 4LL * o0 - 3;  // band position of local index 0
  const int half = taps / 2;
  const int positions = 4 * out_count + 3;
  // local indices whose positions this tile owns for the band means: [3, own_end)
  const long long own_end = min(3LL + 4LL * out_count, static_cast<long long>(samples) - t0);
  const float* xb = a.x + b * samples;
  const double* xb64 = a.x64 + b * samples;
  const bool symmetric = a.symmetric;

  for (int i = tid; i < window_len; i += kThreads) {  // zero padding of the sinc conv
    const long long src = t0 - half + i;
    const bool inside = src >= 0 && src < samples;
    window[i] = inside ? xb[src] : 0.f;
    if (exact) window64[i] = inside ? xb64[src] : 0.0;
  }
  for (int i = tid; i < channels * kOutTile; i += kThreads) out_tile[i] = 0.f;
  __syncthreads();
  if (exact) exact_thresholds(window64, taps, kPositions, a.exact_below, prefix, warp_totals, threshold);

  for (int f = 0; f < filter_count; ++f) {
    __syncthreads();  // the previous filter's readers of h, wf and energy are done
    for (int k = tid; k < taps; k += kThreads) h[k] = a.filters[static_cast<long long>(f) * taps + k];
    for (int i = tid; i < channels * kStemTaps; i += kThreads) {
      const int c = i / kStemTaps, j = i - c * kStemTaps;
      wf[i] = a.weight[(static_cast<long long>(c) * filter_count + f) * kStemTaps + j];
    }
    __syncthreads();

    float own = 0.f;
    if (tid < kPositions) {
      const long long t = t0 + tid;
      float value = 0.f;  // the stem pads the energies with zeros
      if (tid < positions && t >= 0 && t < samples) {
        const float y = band_response(h, window + tid, taps, symmetric);
        if (exact && fabsf(y) < threshold[tid] * a.filter_norms[f]) {  // near zero: float64 from float64 inputs
          const double y64 = exact_response(a.filters64 + static_cast<long long>(f) * taps, xb64, samples, taps, t);
          value = static_cast<float>(log(fabs(y64) + static_cast<double>(a.log_eps)));
        } else {
          value = logf(fabsf(y) + a.log_eps);
        }
        if (tid >= 3 && tid < own_end) own = value;
      }
      energy[tid] = value;
    }
    for (int offset = 16; offset > 0; offset >>= 1) own += __shfl_down_sync(0xffffffffu, own, offset);
    if ((tid & 31) == 0) warp_sums[tid >> 5] = own;
    __syncthreads();  // energies and warp sums are complete

    if (tid == 0) {
      float sum = 0.f;
      for (int w = 0; w < kWarps; ++w) sum += warp_sums[w];
      tile_sums[(b * tiles + tile) * filter_count + f] = sum;
    }
    for (int idx = tid; idx < channels * kOutTile; idx += kThreads) {  // each accumulator has one owner
      const int c = idx / kOutTile, o = idx - c * kOutTile;
      if (o < out_count) {
        const float* w = wf + c * kStemTaps;
        const float* e = energy + 4 * o;  // stem tap j of output o reads local index 4 o + j
        float s = 0.f;
#pragma unroll
        for (int j = 0; j < kStemTaps; ++j) s = fmaf(w[j], e[j], s);
        out_tile[idx] += s;
      }
    }
  }
  __syncthreads();
  for (int idx = tid; idx < channels * kOutTile; idx += kThreads) {
    const int c = idx / kOutTile, o = idx - c * kOutTile;
    if (o < out_count) acc[(b * channels + c) * a.outputs + o0 + o] = out_tile[idx];
  }
}

// ---------------------------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------------------------
struct BackwardArgs {
  const float* grad;            // (B, C, O)
  const float* band_mean;       // (B, F)
  const float* grad_band_mean;  // (B, F)
  double* grad_x;               // (B, S) or null
  double* grad_filters;         // (F, K) or null
  double* grad_weight;          // (C, F, 7) or null
  bool fold;                    // dh for symmetric filters: taps k and K-1-k together
};

// The backward's shared memory, carved in one place for the size and the kernel. Doubles first.
struct BackwardLayout {
  int window_len, dh_taps, dh_threads, dh_parts, dx_len, list_capacity;
  size_t dh_acc, dw_acc, h64, window64, prefix, warp_totals, dxl, list_value;  // double offsets
  size_t doubles;
  size_t window, h, wf, norms, gt, dy, am, threshold, partial, list_index, list_count;  // float offsets
  size_t floats;
  size_t bytes() const { return doubles * sizeof(double) + floats * sizeof(float); }
};

__host__ __device__ inline BackwardLayout backward_layout(int taps, int channels, bool fold, bool exact, bool dx) {
  BackwardLayout l{};
  l.window_len = kTile + taps - 1;
  l.dh_taps = fold ? taps / 2 + 1 : taps;
  l.dh_threads = l.dh_taps >= kThreads ? kThreads : ((l.dh_taps + 31) / 32) * 32;
  l.dh_parts = l.dh_taps >= kThreads ? 1 : kThreads / l.dh_threads;
  l.dx_len = dx ? kTile + taps - 1 : 0;
  l.list_capacity = exact ? kTile * kGroup : 0;
  size_t d = 0;
  l.dh_acc = d;
  d += static_cast<size_t>(kGroup) * taps;
  l.dw_acc = d;
  d += static_cast<size_t>(channels) * kGroup * kStemTaps;
  l.h64 = d;
  d += exact ? static_cast<size_t>(kGroup) * taps : 0;
  l.window64 = d;
  d += exact ? l.window_len : 0;
  l.prefix = d;
  d += exact ? l.window_len + 1 : 0;
  l.warp_totals = d;
  d += kWarps;
  l.dxl = d;
  d += l.dx_len;
  l.list_value = d;
  d += l.list_capacity;
  l.doubles = d;
  size_t f = 0;
  l.window = f;
  f += l.window_len + 1;
  l.h = f;
  f += static_cast<size_t>(kGroup) * taps;
  l.wf = f;
  f += static_cast<size_t>(channels) * kGroup * kStemTaps;
  l.norms = f;
  f += kGroup;
  l.gt = f;
  f += static_cast<size_t>(channels) * kTileOutputs;
  l.dy = f;
  f += kGroup * kTile;
  l.am = f;
  f += kGroup * kTile;
  l.threshold = f;
  f += exact ? kTile : 0;
  l.partial = f;
  f += l.dh_parts > 1 ? static_cast<size_t>(l.dh_parts) * kGroup * l.dh_threads : 0;
  l.list_index = f;  // int entries: position * kGroup + filter
  f += l.list_capacity;
  l.list_count = f;
  f += 1;
  l.floats = f;
  return l;
}

__global__ void __launch_bounds__(kThreads)
    audio_frontend_stem_backward_kernel(FrontendArgs a, BackwardArgs g, int tiles) {
  extern __shared__ double backward_smem[];
  const int taps = a.taps, channels = a.channels, samples = a.samples, filter_count = a.filter_count;
  const int half = taps / 2;
  const bool exact = a.exact_below > 0.f, need_dx = g.grad_x != nullptr, need_dh = g.grad_filters != nullptr;
  const bool need_dw = g.grad_weight != nullptr, need_dy = need_dx || need_dh;
  const BackwardLayout l = backward_layout(taps, channels, g.fold, exact, need_dx);
  double* ds = backward_smem;
  float* fs = reinterpret_cast<float*>(backward_smem + l.doubles);
  double* dh_acc = ds + l.dh_acc;          // [group][K]
  double* dw_acc = ds + l.dw_acc;          // [C][group][7]
  double* h64 = ds + l.h64;                // [group][K]
  double* window64 = ds + l.window64;
  double* prefix = ds + l.prefix;
  double* warp_totals = ds + l.warp_totals;
  double* dxl = ds + l.dxl;
  double* list_value = ds + l.list_value;
  float* window = fs + l.window;
  float* h = fs + l.h;                     // [group][K]
  float* wf = fs + l.wf;                   // [C][group][7]
  float* norms = fs + l.norms;
  float* gt = fs + l.gt;                   // [C][kTileOutputs]
  float* dy = fs + l.dy;                   // [group][kTile]
  float* am = fs + l.am;                   // [group][kTile]
  float* threshold = fs + l.threshold;
  float* partial = fs + l.partial;         // [parts][group][dh_threads]
  int* list_index = reinterpret_cast<int*>(fs + l.list_index);
  int* list_count = reinterpret_cast<int*>(fs + l.list_count);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const long long b = blockIdx.y;
  const int f0 = blockIdx.z * kGroup;
  const int group = min(kGroup, filter_count - f0);
  const float* xb = a.x + b * samples;
  const double* xb64 = a.x64 + b * samples;

  for (int i = tid; i < kGroup * taps; i += kThreads) {  // the group's filters; zero rows past F
    const int fl = i / taps, k = i - fl * taps;
    const bool real = fl < group;
    h[i] = real ? a.filters[static_cast<long long>(f0 + fl) * taps + k] : 0.f;
    if (exact) h64[i] = real ? a.filters64[static_cast<long long>(f0 + fl) * taps + k] : 0.0;
    dh_acc[i] = 0.0;
  }
  for (int i = tid; i < channels * kGroup * kStemTaps; i += kThreads) {
    const int c = i / (kGroup * kStemTaps), rest = i - c * kGroup * kStemTaps;
    const int fl = rest / kStemTaps, j = rest - fl * kStemTaps;
    wf[i] = fl < group ? a.weight[(static_cast<long long>(c) * filter_count + f0 + fl) * kStemTaps + j] : 0.f;
    dw_acc[i] = 0.0;
  }
  if (tid < kGroup) norms[tid] = tid < group ? a.filter_norms[f0 + tid] : 0.f;

  for (int tile = blockIdx.x * kTilesPerBlock; tile < min(tiles, (blockIdx.x + 1) * kTilesPerBlock); ++tile) {
    const long long p0 = static_cast<long long>(tile) * kTile;
    const int n = static_cast<int>(min(static_cast<long long>(kTile), samples - p0));  // positions [p0, p0 + n)
    const long long o_first = p0 / 4;  // position 4 q + r reads outputs o_first + q (+ 1)
    __syncthreads();  // the previous tile's readers are done
    for (int i = tid; i < l.window_len; i += kThreads) {  // window[i] = x[p0 - K/2 + i]
      const long long src = p0 - half + i;
      const bool inside = src >= 0 && src < samples;
      window[i] = inside ? xb[src] : 0.f;
      if (exact) window64[i] = inside ? xb64[src] : 0.0;
    }
    for (int i = tid; i < channels * kTileOutputs; i += kThreads) {
      const int c = i / kTileOutputs, col = i - c * kTileOutputs;
      const long long o = o_first + col;
      gt[i] = o < a.outputs ? g.grad[(b * channels + c) * a.outputs + o] : 0.f;
    }
    for (int i = tid; i < l.dx_len; i += kThreads) dxl[i] = 0.0;
    if (tid == 0) *list_count = 0;
    __syncthreads();
    if (exact) exact_thresholds(window64, taps, kTile, a.exact_below, prefix, warp_totals, threshold);

    // each thread: its position, every filter of the group
    const int t = tid;
    const int r = t & 3, q = t >> 2;
    float ys[kGroup];
    band_responses<kGroup>(h, window + t, taps, a.symmetric, ys);
#pragma unroll
    for (int fl = 0; fl < kGroup; ++fl) {
      float d = 0.f, centred = 0.f;
      if (fl < group && t < n) {
        const int f = f0 + fl;
        const float mean = g.band_mean[b * filter_count + f], gmean = g.grad_band_mean[b * filter_count + f];
        float grad_a = 0.f;  // G at t: stem taps j = r + 3 (output q) and j = r - 1 (output q + 1)
        for (int c = 0; c < channels; ++c) {
          const float* w = wf + (c * kGroup + fl) * kStemTaps;
          grad_a = fmaf(w[r + 3], gt[c * kTileOutputs + q], grad_a);
          if (r > 0) grad_a = fmaf(w[r - 1], gt[c * kTileOutputs + q + 1], grad_a);
        }
        const float y = ys[fl];
        if (exact && fabsf(y) < threshold[t] * norms[fl]) {  // float64, and a float64 share of dh and dx
          double y64 = 0.0;
          for (int k = 0; k < taps; ++k) y64 = fma(h64[fl * taps + k], window64[t + k], y64);
          const double magnitude = fabs(y64) + static_cast<double>(a.log_eps);
          centred = static_cast<float>(log(magnitude) - mean);
          if (need_dy && y64 != 0.0) {
            const int slot = atomicAdd(list_count, 1);
            list_index[slot] = t * kGroup + fl;
            list_value[slot] = (static_cast<double>(grad_a) - gmean) / magnitude * (y64 > 0 ? 1.0 : -1.0);
          }
        } else {
          const float magnitude = fabsf(y) + a.log_eps;
          centred = logf(magnitude) - mean;
          const float dv = (grad_a - gmean) / magnitude;
          d = y > 0.f ? dv : (y < 0.f ? -dv : 0.f);
        }
      }
      dy[fl * kTile + t] = d;
      am[fl * kTile + t] = centred;
    }
    __syncthreads();

    if (need_dw) {  // dw[c][fl][j] += sum_o g[c][o] am[fl][4 o + j - 3]: one warp per (c, fl, j)
      for (int item = warp; item < channels * kGroup * kStemTaps; item += kWarps) {
        const int c = item / (kGroup * kStemTaps), rest = item - c * kGroup * kStemTaps;
        const int fl = rest / kStemTaps, j = rest - fl * kStemTaps;
        float s = 0.f;
        for (int col = lane; col < kTileOutputs; col += 32) {
          const int pos = 4 * col + j - 3;
          if (pos >= 0 && pos < kTile) s = fmaf(gt[c * kTileOutputs + col], am[fl * kTile + pos], s);
        }
        for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_down_sync(0xffffffffu, s, offset);
        if (lane == 0) dw_acc[item] += s;
      }
    }
    if (need_dh) {  // dh[fl][k] += sum_t dy[fl][t] (x[t + k] + fold ? x[t + K-1-k] : 0)
      const int part = tid / l.dh_threads, k0 = tid - part * l.dh_threads;
      const int span = kTile / l.dh_parts, t_begin = part * span;
      for (int k = k0; k < l.dh_taps && part < l.dh_parts; k += l.dh_threads) {
        float s[kGroup] = {};
        for (int tt = t_begin; tt < t_begin + span; ++tt) {
          const float xv = g.fold ? window[tt + k] + window[tt + taps - 1 - k] : window[tt + k];
#pragma unroll
          for (int fl = 0; fl < kGroup; ++fl) s[fl] = fmaf(dy[fl * kTile + tt], xv, s[fl]);
        }
#pragma unroll
        for (int fl = 0; fl < kGroup; ++fl) {
          // folded: stored at k, the centre halved (it met itself); the host mirrors
          const float value = (g.fold && k == half) ? 0.5f * s[fl] : s[fl];
          if (l.dh_parts > 1) {
            partial[(part * kGroup + fl) * l.dh_threads + k] = value;
          } else {
            dh_acc[fl * taps + k] += value;
          }
        }
      }
      if (l.dh_parts > 1) {
        __syncthreads();
        for (int i = tid; i < kGroup * l.dh_taps; i += kThreads) {
          const int fl = i / l.dh_taps, k = i - fl * l.dh_taps;
          float s = 0.f;
          for (int p = 0; p < l.dh_parts; ++p) s += partial[(p * kGroup + fl) * l.dh_threads + k];
          dh_acc[fl * taps + k] += s;
        }
      }
    }
    if (need_dx) {  // dx_local[u] = sum_fl sum_k h[fl][k] dy[fl][u - k], u in [0, T + K - 1)
      for (int u = tid; u < l.dx_len; u += kThreads) {
        const int k_begin = max(0, u - kTile + 1), k_end = min(taps - 1, u);
        float s = 0.f;
        for (int fl = 0; fl < kGroup; ++fl) {
          for (int k = k_begin; k <= k_end; ++k) s = fmaf(h[fl * taps + k], dy[fl * kTile + u - k], s);
        }
        dxl[u] += s;
      }
    }
    __syncthreads();  // the list is complete; the float32 shares are in
    const int listed = exact ? *list_count : 0;
    if (listed > 0) {  // the float64 share; every accumulator entry has one thread for the whole list
      if (need_dh) {  // thread k: taps k, k + 256, ...
        for (int e = 0; e < listed; ++e) {
          const int pos = list_index[e] / kGroup, fl = list_index[e] - pos * kGroup;
          for (int k = tid; k < taps; k += kThreads) dh_acc[fl * taps + k] += list_value[e] * window64[pos + k];
        }
      }
      if (need_dx) {  // thread u: dx positions u, u + 256, ...
        for (int u = tid; u < l.dx_len; u += kThreads) {
          double sum = 0.0;
          for (int e = 0; e < listed; ++e) {
            const int pos = list_index[e] / kGroup, fl = list_index[e] - pos * kGroup;
            if (u >= pos && u < pos + taps) sum += list_value[e] * h64[fl * taps + u - pos];
          }
          dxl[u] += sum;
        }
      }
    }
    if (need_dx) {
      __syncthreads();
      double* dxb = g.grad_x + b * samples;
      for (int u = tid; u < l.dx_len; u += kThreads) {
        const long long s = p0 - half + u;
        if (s >= 0 && s < samples) atomicAdd(dxb + s, dxl[u]);
      }
    }
  }
  __syncthreads();
  if (need_dh) {
    for (int i = tid; i < group * taps; i += kThreads) {
      const int fl = i / taps, k = i - fl * taps;
      atomicAdd(g.grad_filters + static_cast<long long>(f0 + fl) * taps + k, dh_acc[i]);
    }
  }
  if (need_dw) {
    for (int i = tid; i < channels * kGroup * kStemTaps; i += kThreads) {
      const int c = i / (kGroup * kStemTaps), rest = i - c * kGroup * kStemTaps;
      const int fl = rest / kStemTaps, j = rest - fl * kStemTaps;
      if (fl < group) {
        atomicAdd(g.grad_weight + (static_cast<long long>(c) * filter_count + f0 + fl) * kStemTaps + j, dw_acc[i]);
      }
    }
  }
}

cudaError_t set_shared_limit(const void* kernel, size_t bytes) {
  if (bytes <= static_cast<size_t>(kDefaultSharedLimit)) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace

cudaError_t launch_audio_frontend_stem_forward(const FrontendArgs& a, float* acc, float* tile_sums, int tiles,
                                               cudaStream_t stream) {
  const size_t shared_bytes = forward_shared_bytes(a.taps, a.channels, a.exact_below > 0.f);
  const cudaError_t err = set_shared_limit(reinterpret_cast<const void*>(audio_frontend_stem_forward_kernel),
                                           shared_bytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(tiles, a.batch);
  audio_frontend_stem_forward_kernel<<<grid, kThreads, shared_bytes, stream>>>(a, acc, tile_sums, tiles);
  return cudaGetLastError();
}

cudaError_t launch_audio_frontend_stem_backward(const FrontendArgs& a, const float* grad, const float* band_mean,
                                                const float* grad_band_mean, double* grad_x, double* grad_filters,
                                                double* grad_weight, bool symmetric_grad, cudaStream_t stream) {
  const BackwardArgs g{grad, band_mean, grad_band_mean, grad_x, grad_filters, grad_weight, symmetric_grad};
  const BackwardLayout layout =
      backward_layout(a.taps, a.channels, symmetric_grad, a.exact_below > 0.f, grad_x != nullptr);
  const size_t shared_bytes = layout.bytes();
  const cudaError_t err = set_shared_limit(reinterpret_cast<const void*>(audio_frontend_stem_backward_kernel),
                                           shared_bytes);
  if (err != cudaSuccess) return err;
  const int tiles = (a.samples + kTile - 1) / kTile;
  const dim3 grid((tiles + kTilesPerBlock - 1) / kTilesPerBlock, a.batch, (a.filter_count + kGroup - 1) / kGroup);
  audio_frontend_stem_backward_kernel<<<grid, kThreads, shared_bytes, stream>>>(a, g, tiles);
  return cudaGetLastError();
}

// The shared memory one backward block needs (host side: refuse sizes the device cannot hold).
size_t audio_frontend_stem_backward_shared_bytes(int taps, int channels, bool fold, bool exact, bool dx) {
  return backward_layout(taps, channels, fold, exact, dx).bytes();
}

}  // namespace avfused::cuda
