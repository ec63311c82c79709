// audio_expand_residual on the CPU, one clip and one channel per work unit: the clip's tokens are
// interpolated into one zero-bordered signal row, then the channel's K-tap convolution of it, its bias
// and the scaled residual are written in one pass (the interpolated signal and the (C, L) expansion
// never reach memory; recomputing the signal per channel costs 1/K of the convolution).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/depthwise.h"
#include "audio_expand_residual.h"

namespace avfused {
namespace {

using namespace depthwise;

struct AudioExpandArgs {
  const float* audio;   // (B, C, L)
  const float* tokens;  // (B, M = T D)
  const float* weight;  // (C, K)
  const float* bias;    // (C,)
  const float* scale;   // (C,)
  float* out;           // (B, C, L)
  int64_t channels, length, values, kernel;
};

// row[half + i] = the tokens linearly interpolated at output i as torch's upsample_linear1d with
// align_corners=False does, the source position in double: in float its rounding (1e-7 of up to T D)
// would shift the weights by ~1e-5 at long lengths. The K / 2 values either side stay zero.
void interpolate(const float* tokens, int64_t values, int64_t length, float* row, int64_t half) {
  const double ratio = static_cast<double>(values) / static_cast<double>(length);
  for (int64_t i = 0; i < length; ++i) {
    const double source = std::max(ratio * (static_cast<double>(i) + 0.5) - 0.5, 0.0);
    const int64_t left = static_cast<int64_t>(source);
    const int64_t right = left + (left < values - 1 ? 1 : 0);
    const float lambda = static_cast<float>(source - static_cast<double>(left));
    row[half + i] = (1.f - lambda) * tokens[left] + lambda * tokens[right];
  }
}

template <int W>
AVFUSED_INLINE void expand_channel(const AudioExpandArgs& a, int64_t unit, std::vector<float>& row, int64_t& clip) {
  using V = typename simd::Vec<W>::f;
  const int64_t b = unit / a.channels, c = unit % a.channels, length = a.length, kernel = a.kernel;
  const int64_t half = kernel / 2, lanes = round_up(length, W);
  if (clip != b) {  // consecutive units of one clip share the signal row
    row.assign(lanes + kernel - 1, 0.f);
    interpolate(a.tokens + b * a.values, a.values, length, row.data(), half);
    clip = b;
  }
  const float* w = a.weight + c * kernel;
  const V scale = simd::splat<V>(a.scale[c]), bias = simd::splat<V>(a.bias[c]);
  const float* audio = a.audio + (b * a.channels + c) * length;
  float* out = a.out + (b * a.channels + c) * length;
  for (int64_t l = 0; l < length; l += W) {
    const int64_t count = std::min<int64_t>(W, length - l);
    V acc = bias + scale * (count == W ? simd::load<V>(audio + l) : load_first<V>(audio + l, count));
    for (int64_t k = 0; k < kernel; ++k) acc += w[k] * simd::load<V>(row.data() + l + k);
    if (count == W) {
      simd::store(out + l, acc);
    } else {
      store_first(out + l, acc, count);
    }
  }
}

AVFUSED_TARGET_CLONES
void expand_channels_w8(const AudioExpandArgs& a, int64_t begin, int64_t end) {
  std::vector<float> row;
  int64_t clip = -1;
  for (int64_t unit = begin; unit < end; ++unit) expand_channel<8>(a, unit, row, clip);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void expand_channels_w16(const AudioExpandArgs& a, int64_t begin, int64_t end) {
  std::vector<float> row;
  int64_t clip = -1;
  for (int64_t unit = begin; unit < end; ++unit) expand_channel<16>(a, unit, row, clip);
}
#endif

at::Tensor audio_expand_residual_cpu(const at::Tensor& audio, const at::Tensor& tokens, const at::Tensor& weight,
                                     const at::Tensor& bias, const at::Tensor& scale) {
  const char* op = "audio_expand_residual";
  TORCH_CHECK(audio.dim() == 3 && audio.numel() > 0, "avfused_ext.audio_expand_residual: audio must be a non-empty "
              "(B, C, L), got shape ", audio.sizes());
  TORCH_CHECK(tokens.dim() == 3 && tokens.numel() > 0 && weight.dim() == 3, "avfused_ext.audio_expand_residual: "
              "tokens must be a non-empty (B, T, D) and weight (C, 1, K), got ", tokens.sizes(), " and ",
              weight.sizes());
  const int64_t clips = audio.size(0), channels = audio.size(1), length = audio.size(2), kernel = weight.size(2);
  check_image_op_tensor(op, "audio", audio, audio.sizes());
  check_image_op_tensor(op, "tokens", tokens, {clips, tokens.size(1), tokens.size(2)});
  check_image_op_tensor(op, "weight", weight, {channels, 1, kernel});
  check_image_op_tensor(op, "bias", bias, {channels});
  check_image_op_tensor(op, "scale", scale, {channels});
  TORCH_CHECK(kernel % 2 == 1, "avfused_ext.audio_expand_residual: the kernel size must be odd, got ", kernel);
  const at::Tensor audio_c = audio.contiguous(), tokens_c = tokens.contiguous(), weight_c = weight.contiguous();
  const at::Tensor bias_c = bias.contiguous(), scale_c = scale.contiguous();
  at::Tensor out = at::empty_like(audio_c);
  const AudioExpandArgs args{audio_c.data_ptr<float>(), tokens_c.data_ptr<float>(), weight_c.data_ptr<float>(),
                             bias_c.data_ptr<float>(),  scale_c.data_ptr<float>(),  out.data_ptr<float>(),
                             channels,                  length,                     tokens.size(1) * tokens.size(2),
                             kernel};
  const bool wide = simd::use_wide_vectors();
  at::parallel_for(0, clips * channels, 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (wide) return expand_channels_w16(args, begin, end);
#endif
    expand_channels_w8(args, begin, end);
  });
  return out;
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("audio_expand_residual(Tensor audio, Tensor tokens, Tensor weight, Tensor bias, Tensor scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) { m.impl("audio_expand_residual", &avfused::audio_expand_residual_cpu); }
