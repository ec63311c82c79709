// The CPU parts of the large-kernel attention that its own op (large_kernel_attention_cpu.cpp) and the
// folded VPM's attention branch (../large_kernel_attention_residual/) share: the arguments, the image's
// context planes (dw5x5 -> dw7x7 dilation 3, never in global memory) and the gate (its 1x1 and p g).
#pragma once

#include <algorithm>
#include <vector>

#include "../common/depthwise.h"

namespace avfused::lka_cpu {

using namespace depthwise;

struct LkaArgs {
  const float* p;   // (N, C, H, W)
  const float* w5;  // (C, 25)
  const float* b5;
  const float* w7;  // (C, 49)
  const float* b7;
  const float* w1;  // (C, C)
  const float* b1;
  float* out;       // (N, C, H, W): the forward's output or the backward's dp
  int64_t channels, height, width;
  // backward only
  const float* grad = nullptr;      // (N, C, H, W)
  const float* w5_mirrored = nullptr;  // (C, 25), (C, 49): the transposed convolutions' taps
  const float* w7_mirrored = nullptr;
};

// The image's context planes c7 (C planes of H x cols, cols = width rounded up to whole vectors), through
// the bordered planes `input` (p, border 2) and `middle` (c5, border 9).
template <int W>
AVFUSED_INLINE void context_planes(const LkaArgs& a, const float* p, BorderedPlane& input, BorderedPlane& middle,
                                   float* context) {
  const int64_t height = a.height, width = a.width, cols = round_up(width, W), plane = height * width;
  for (int64_t c = 0; c < a.channels; ++c) {
    for (int64_t y = 0; y < height; ++y) std::copy_n(p + c * plane + y * width, width, input.row(y));
    for (int64_t y = 0; y < height; ++y) {
      float* row = middle.row(y);
      depthwise_row<W, 5, 1, false>(input.window(y), input.stride, a.w5 + c * 25, a.b5[c], row, cols);
      std::fill(row + width, row + cols, 0.f);  // c5 is zero past the image: dw7's padding
    }
    for (int64_t y = 0; y < height; ++y) {
      float* row = context + c * height * cols + y * cols;
      depthwise_row<W, 7, 3, false>(middle.window(y), middle.stride, a.w7 + c * 49, a.b7[c], row, cols);
    }
  }
}

// The gate g[co][x] = b1[co] + sum_ci w1[co][ci] context[ci][x] of output channels co .. co + B - 1 for U W
// pixels of one row, of which `valid` are inside the image. Forward: out = p g. Backward (kGrad): out = grad g
// (dp's first term) and dgate = grad p (zero past the image).
template <int W, int U, int B, bool kGrad>
AVFUSED_INLINE void gate_block(const LkaArgs& a, const float* context, int64_t context_plane, const float* p,
                               const float* grad, float* out, float* dgate, int64_t valid, int64_t co) {
  using V = typename simd::Vec<W>::f;
  const int64_t channels = a.channels, plane = a.height * a.width;
  V acc[B][U];
  for (int b = 0; b < B; ++b) {
    for (int u = 0; u < U; ++u) acc[b][u] = simd::splat<V>(a.b1[co + b]);
  }
  pointwise_accumulate<W, U, B>(context, context_plane, channels, a.w1 + co * channels, acc);
  for (int b = 0; b < B; ++b) {
    for (int u = 0; u < U; ++u) {
      const int64_t offset = (co + b) * plane + u * W, count = std::min<int64_t>(W, valid - u * W);
      const V pv = count == W ? simd::load<V>(p + offset) : load_first<V>(p + offset, count);
      V result = pv * acc[b][u];
      if constexpr (kGrad) {
        const V gv = count == W ? simd::load<V>(grad + offset) : load_first<V>(grad + offset, count);
        result = gv * acc[b][u];
        // load_first zeroes the lanes past the image
        simd::store(dgate + (co + b) * context_plane + u * W, gv * pv);
      }
      if (count == W) {
        simd::store(out + offset, result);
      } else {
        store_first(out + offset, result, count);
      }
    }
  }
}

template <int W, int U, bool kGrad>
AVFUSED_INLINE void gate_chunks(const LkaArgs& a, const float* context, int64_t context_plane, const float* p,
                                const float* grad, float* out, float* dgate, int64_t valid) {
  constexpr int B = W == 16 ? 4 : 2;  // B U accumulators: 16 of AVX-512's 32 registers, 8 of AVX2's 16
  int64_t co = 0;
  for (; co + B <= a.channels; co += B) {
    gate_block<W, U, B, kGrad>(a, context, context_plane, p, grad, out, dgate, valid, co);
  }
  for (; co < a.channels; ++co) gate_block<W, U, 1, kGrad>(a, context, context_plane, p, grad, out, dgate, valid, co);
}

template <int W, bool kGrad>
AVFUSED_INLINE void gate_image(const LkaArgs& a, const float* context, const float* p, const float* grad, float* out,
                               float* dgate) {
  const int64_t height = a.height, width = a.width, cols = round_up(width, W), context_plane = height * cols;
  for (int64_t y = 0; y < height; ++y) {
    const int64_t row = y * width, context_row = y * cols;
    int64_t x = 0;
    for (; x + kRowChunks * W <= cols; x += kRowChunks * W) {
      gate_chunks<W, kRowChunks, kGrad>(a, context + context_row + x, context_plane, p + row + x,
                                        kGrad ? grad + row + x : nullptr, out + row + x,
                                        kGrad ? dgate + context_row + x : nullptr, width - x);
    }
    for (; x < cols; x += W) {
      gate_chunks<W, 1, kGrad>(a, context + context_row + x, context_plane, p + row + x,
                               kGrad ? grad + row + x : nullptr, out + row + x,
                               kGrad ? dgate + context_row + x : nullptr, width - x);
    }
  }
}

// Per-thread buffers of one image, reused across the thread's images.
template <int W>
struct LkaScratch {
  BorderedPlane input, middle;  // p and c5 of one channel
  std::vector<float> context;   // c7, C planes of H x cols
  LkaScratch(const LkaArgs& a)
      : input(a.height, round_up(a.width, W), 2),
        middle(a.height, round_up(a.width, W), 9),
        context(a.channels * a.height * round_up(a.width, W)) {}
};

}  // namespace avfused::lka_cpu
