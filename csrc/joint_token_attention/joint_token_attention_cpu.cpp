// Joint token attention forward on the CPU, fused: LayerNorm -> softmax(u u^T / sqrt(D)) u -> Linear
// -> residual, one block of four queries at a time, so the (L x L) scores stay in a per-thread buffer.
//
// Layouts: u (L, Dp) row-major with rows padded to Dp = 8 * ceil(D / 8) zeros (the mixing loop reads
// whole vec8 rows) and uT (D, Lp) (the score loop reads 3 vectors of keys at once). AVX-512 CPUs take a
// 16-lane score loop and mix four queries per pass (32 registers); others 8 lanes and two queries.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include <torch/library.h>

#include "../common/simd.h"
#include "joint_token_attention.h"

namespace avfused {
namespace {

using simd::vec8;

constexpr int64_t kQueryBlock = 4;
constexpr int64_t kMaxVecs = 16;  // D up to 128 per vec8 accumulator set

// vec8s per padded token row. Only a few widths are compiled (build time); zero padding makes any
// dim <= 128 fit the next one.
inline int64_t padded_vecs(int64_t dim) {
  const int64_t vecs = (dim + 7) / 8;
  for (int64_t width : {1, 2, 4, 7, 8, 16}) {
    if (vecs <= width) return width;
  }
  return 0;
}

// Row length of uT and of the score buffers: room for the score loop's 3 x 16-key steps.
inline int64_t key_stride_for(int64_t length) { return (length + 47) / 48 * 48; }

struct AttentionArgs {
  const float* tokens;  // (B, L, D)
  const float* pos;     // (L, D)
  const float* ln_w;
  const float* ln_b;
  const float* lin_w;   // (D, D)
  const float* lin_b;
  float* out;           // (B, L, D)
  int64_t length, dim;
  float eps;
};

// u and uT of one clip.
void normalise_clip(const AttentionArgs& a, int64_t b, std::vector<float>& u, std::vector<float>& ut) {
  const int64_t length = a.length, dim = a.dim;
  const int64_t dim_padded = 8 * padded_vecs(dim), key_stride = key_stride_for(length);
  const float* tokens = a.tokens + b * length * dim;
  u.assign(length * dim_padded, 0.f);
  ut.assign(dim * key_stride, 0.f);
  for (int64_t l = 0; l < length; ++l) {  // LayerNorm of z = tokens + pos (two-pass, in double)
    double mean = 0.0, var = 0.0;
    for (int64_t d = 0; d < dim; ++d) mean += tokens[l * dim + d] + a.pos[l * dim + d];
    mean /= dim;
    for (int64_t d = 0; d < dim; ++d) {
      const double centred = tokens[l * dim + d] + a.pos[l * dim + d] - mean;
      var += centred * centred;
    }
    const float rstd = static_cast<float>(1.0 / std::sqrt(var / dim + a.eps));
    for (int64_t d = 0; d < dim; ++d) {
      const float z = tokens[l * dim + d] + a.pos[l * dim + d];
      const float value = (z - static_cast<float>(mean)) * rstd * a.ln_w[d] + a.ln_b[d];
      u[l * dim_padded + d] = value;
      ut[d * key_stride + l] = value;
    }
  }
}

// Outputs of query blocks [block_begin, block_end) of clip b; VECS = padded dim / 8 is a compile-time
// constant so the per-query accumulators stay in registers.
template <int W, int VECS>
AVFUSED_INLINE void attend_impl(const AttentionArgs& a, int64_t b, const float* u, const float* ut,
                                const float* wt, int64_t block_begin, int64_t block_end) {
  using V = typename simd::Vec<W>::f;
  constexpr int64_t dim_padded = 8 * VECS;
  constexpr int kMix = W == 16 ? 4 : 2;  // queries mixed together: 4 x VECS accumulators need 32 registers
  const int64_t length = a.length, dim = a.dim;
  const int64_t length_padded = (length + 7) / 8 * 8;
  const int64_t key_stride = key_stride_for(length);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const float* tokens = a.tokens + b * length * dim;
  float* out = a.out + b * length * dim;
  std::vector<float> scores(kQueryBlock * key_stride);
  for (int64_t q0 = block_begin * kQueryBlock; q0 < std::min(length, block_end * kQueryBlock); q0 += kQueryBlock) {
    const int64_t q_count = std::min(kQueryBlock, length - q0);
    const float* rows[kQueryBlock];
    for (int64_t q = 0; q < kQueryBlock; ++q) rows[q] = u + std::min(q0 + q, length - 1) * dim_padded;
    for (int64_t j = 0; j < length_padded; j += 3 * W) {  // scores of four queries against 3 W keys
      V acc[kQueryBlock][3];
      for (int64_t q = 0; q < kQueryBlock; ++q) acc[q][0] = acc[q][1] = acc[q][2] = V{};
      for (int64_t d = 0; d < dim; ++d) {
        const float* key_row = ut + d * key_stride + j;
        const V k0 = simd::load<V>(key_row), k1 = simd::load<V>(key_row + W), k2 = simd::load<V>(key_row + 2 * W);
#pragma GCC unroll 4
        for (int64_t q = 0; q < kQueryBlock; ++q) {
          const float query = rows[q][d];
          acc[q][0] += query * k0;
          acc[q][1] += query * k1;
          acc[q][2] += query * k2;
        }
      }
      for (int64_t q = 0; q < kQueryBlock; ++q) {
        for (int r = 0; r < 3; ++r) simd::store(scores.data() + q * key_stride + j + r * W, acc[q][r] * scale);
      }
    }
    float inv_totals[kQueryBlock];
    for (int64_t q = 0; q < q_count; ++q) {
      float* s = scores.data() + q * key_stride;
      for (int64_t j = length; j < length_padded; ++j) s[j] = s[0];  // padded keys: harmless for the max
      vec8 peaks = simd::load8(s);
      for (int64_t j = 8; j < length_padded; j += 8) {
        const vec8 v = simd::load8(s + j);
        peaks = v > peaks ? v : peaks;
      }
      float peak = peaks[0];
      for (int lane = 1; lane < 8; ++lane) peak = std::max(peak, peaks[lane]);
      vec8 totals = simd::splat8(0.f);
      for (int64_t j = 0; j < length_padded; j += 8) {
        const vec8 p = simd::fast_exp8_nonpositive(simd::load8(s + j) - peak);
        simd::store8(s + j, p);
        if (j + 8 <= length) totals += p;
      }
      float total = 0.f;
      for (int64_t j = length / 8 * 8; j < length; ++j) total += s[j];
      for (int lane = 0; lane < 8; ++lane) total += totals[lane];
      inv_totals[q] = 1.0f / total;
    }
    // softmax(s) u for kMix queries at a time: each key row is loaded once for all of them
    for (int64_t qq = 0; qq < q_count; qq += kMix) {
      vec8 mixed[kMix][VECS];
      for (int m = 0; m < kMix; ++m) {
        for (int v = 0; v < VECS; ++v) mixed[m][v] = simd::splat8(0.f);
      }
      for (int64_t j = 0; j < length; ++j) {
        const float* row = u + j * dim_padded;
        vec8 keys[VECS];
#pragma GCC unroll 16
        for (int v = 0; v < VECS; ++v) keys[v] = simd::load8(row + 8 * v);
#pragma GCC unroll 4
        for (int m = 0; m < kMix; ++m) {
          const float p = scores[(qq + m) * key_stride + j];
#pragma GCC unroll 16
          for (int v = 0; v < VECS; ++v) mixed[m][v] += p * keys[v];
        }
      }
      for (int m = 0; m < kMix && qq + m < q_count; ++m) {
        const int64_t q = qq + m;
        float mixed_flat[dim_padded];
        for (int v = 0; v < VECS; ++v) simd::store8(mixed_flat + 8 * v, mixed[m][v] * inv_totals[q]);
        vec8 projected[VECS];  // Linear: sum_d W^T[d] * mixed[d], eight outputs per vector
        for (int v = 0; v < VECS; ++v) projected[v] = simd::splat8(0.f);
        for (int64_t d = 0; d < dim; ++d) {
          const float mixed_d = mixed_flat[d];
#pragma GCC unroll 16
          for (int v = 0; v < VECS; ++v) projected[v] += mixed_d * simd::load8(wt + d * dim_padded + 8 * v);
        }
        float projected_flat[dim_padded];
        for (int v = 0; v < VECS; ++v) simd::store8(projected_flat + 8 * v, projected[v]);
        const int64_t l = q0 + q;
        for (int64_t e = 0; e < dim; ++e) {  // + bias + residual z = tokens + pos
          out[l * dim + e] = tokens[l * dim + e] + a.pos[l * dim + e] + a.lin_b[e] + projected_flat[e];
        }
      }
    }
  }
}

template <int W>
AVFUSED_INLINE void attend_dispatch(const AttentionArgs& a, int64_t b, const float* u, const float* ut,
                                    const float* wt, int64_t block_begin, int64_t block_end) {
  switch (padded_vecs(a.dim)) {
#define AVFUSED_ATTEND_CASE(n) \
  case n:                      \
    return attend_impl<W, n>(a, b, u, ut, wt, block_begin, block_end);
    AVFUSED_ATTEND_CASE(1) AVFUSED_ATTEND_CASE(2) AVFUSED_ATTEND_CASE(4) AVFUSED_ATTEND_CASE(7)
    AVFUSED_ATTEND_CASE(8) AVFUSED_ATTEND_CASE(16)
#undef AVFUSED_ATTEND_CASE
    default:
      TORCH_CHECK(false, "avfused_ext.joint_token_attention: token dim at most ", kMaxVecs * 8, ", got ", a.dim);
  }
}

AVFUSED_TARGET_CLONES
void attend_queries_w8(const AttentionArgs& a, int64_t b, const float* u, const float* ut, const float* wt,
                       int64_t block_begin, int64_t block_end) {
  attend_dispatch<8>(a, b, u, ut, wt, block_begin, block_end);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void attend_queries_w16(const AttentionArgs& a, int64_t b, const float* u, const float* ut, const float* wt,
                        int64_t block_begin, int64_t block_end) {
  attend_dispatch<16>(a, b, u, ut, wt, block_begin, block_end);
}
#endif

at::Tensor joint_token_attention_cpu(const at::Tensor& tokens, const at::Tensor& pos, const at::Tensor& ln_weight,
                               const at::Tensor& ln_bias, const at::Tensor& lin_weight, const at::Tensor& lin_bias,
                               double eps) {
  const JointTokenAttentionInputs in =
      check_joint_token_attention_inputs(tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, c10::DeviceType::CPU);
  TORCH_CHECK(in.dim <= kMaxVecs * 8, "avfused_ext.joint_token_attention: token dim at most ", kMaxVecs * 8, ", got ",
              in.dim);
  at::Tensor out = at::empty_like(in.tokens);
  AttentionArgs args{in.tokens.data_ptr<float>(),   in.pos.data_ptr<float>(),     in.ln_weight.data_ptr<float>(),
                     in.ln_bias.data_ptr<float>(),  in.lin_weight.data_ptr<float>(), in.lin_bias.data_ptr<float>(),
                     out.data_ptr<float>(),         in.length,                    in.dim,
                     static_cast<float>(eps)};
  const int64_t blocks = (in.length + kQueryBlock - 1) / kQueryBlock;
  const int64_t dim_padded = 8 * padded_vecs(in.dim);
  std::vector<float> wt(in.dim * dim_padded, 0.f);  // W^T, rows padded: wt[d][e] = W[e][d]
  const float* w = args.lin_w;
  for (int64_t e = 0; e < in.dim; ++e) {
    for (int64_t d = 0; d < in.dim; ++d) wt[d * dim_padded + e] = w[e * in.dim + d];
  }
  const bool wide = simd::use_wide_vectors();
  std::vector<float> u, ut;
  for (int64_t b = 0; b < in.batch; ++b) {
    normalise_clip(args, b, u, ut);
    at::parallel_for(0, blocks, 8, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
      if (wide) return attend_queries_w16(args, b, u.data(), ut.data(), wt.data(), begin, end);
#endif
      attend_queries_w8(args, b, u.data(), ut.data(), wt.data(), begin, end);
    });
  }
  return out;
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def(
      "joint_token_attention(Tensor tokens, Tensor pos, Tensor ln_weight, Tensor ln_bias, Tensor lin_weight, "
      "Tensor lin_bias, float eps) -> Tensor");
  m.def(
      "joint_token_attention_backward(Tensor grad_out, Tensor tokens, Tensor pos, Tensor ln_weight, "
      "Tensor ln_bias, Tensor lin_weight, Tensor lin_bias, float eps) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // CUDA only (joint_token_attention_cuda_host.cpp): the training forward and its flash-style backward
  m.def(
      "joint_token_attention_train(Tensor tokens, Tensor pos, Tensor ln_weight, Tensor ln_bias, Tensor lin_weight, "
      "Tensor lin_bias, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("joint_token_attention_attend_backward(Tensor u, Tensor d_mixed, Tensor lse, Tensor delta) -> Tensor");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) { m.impl("joint_token_attention", &avfused::joint_token_attention_cpu); }

// Pure ATen: runs on whatever device its inputs live on.
TORCH_LIBRARY_IMPL(avfused_ext, CompositeExplicitAutograd, m) {
  m.impl("joint_token_attention_backward", &avfused::joint_token_attention_backward_composite);
}
