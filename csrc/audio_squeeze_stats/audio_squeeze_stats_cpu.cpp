// audio_squeeze_stats on the CPU, tile by tile of positions: each tile's z (C rows of kTile) comes from the
// dense Conv1d tile kernel (csrc/common/dense_conv1d.h, the one audio_squeeze_tokens uses; ATen's
// convolution measured slower here), its per-channel moments in double (two passes over the tile in cache),
// merged over the tiles in a fixed order (Chan's update), so the result does not depend on the threads.
// Backward: per tile z is recomputed with a K / 2 halo and turned in place into
// grad_z = grad_mean / M + 2 grad_var (z - mean) / M, from which the dense tile backward writes the tile's
// audio gradient and adds its weight and bias sums (per thread, in double). z never exists beyond a tile.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../common/dense_conv1d.h"
#include "../common/depthwise.h"
#include "audio_squeeze_stats.h"

namespace avfused {
namespace {

using audio_squeeze_stats::kTile;
using audio_squeeze_stats::Moments;
using depthwise::check_image_op_tensor;
using depthwise::GradientSums;
using depthwise::image_kernel_lanes;
using depthwise::Lanes;
using depthwise::round_up;

struct StatsArgs {
  const float* audio;  // (B, C, L)
  const float* taps;   // packed by dense_conv1d::packed_taps
  const float* bias;
  int64_t channels, length, kernel, tiles;
  // forward
  Moments* moments = nullptr;  // (units, C)
  // backward
  const float* weight = nullptr;  // (C, C, K)
  const float* mean = nullptr;    // (C,)
  const float* base = nullptr;    // (C,): grad_mean / M
  const float* slope = nullptr;   // (C,): 2 grad_var / M
  float* grad_audio = nullptr;    // (B, C, L)

  dense_conv1d::Conv conv(int64_t b) const {
    return {audio + b * channels * length, taps, bias, channels, length, kernel};
  }
};

template <int W>
AVFUSED_INLINE void stats_tile(const StatsArgs& a, int64_t unit, dense_conv1d::TileBuffers& buf) {
  const int64_t b = unit / a.tiles, l0 = (unit % a.tiles) * kTile, count = std::min(kTile, a.length - l0);
  const int64_t lanes = round_up(count, W);
  dense_conv1d::forward_tile<W, false>(a.conv(b), l0, lanes, buf);
  for (int64_t c = 0; c < a.channels; ++c) {
    a.moments[unit * a.channels + c] = audio_squeeze_stats::row_moments(buf.out.data() + c * lanes, count);
  }
}

// Offsets of each gradient in a thread's block of GradientSums.
struct StatsGradientLayout {
  int64_t weight, bias, size;
  StatsGradientLayout(int64_t c, int64_t k) : weight(0), bias(c * c * k), size(c * c * k + c) {}
};

template <int W>
AVFUSED_INLINE void stats_backward_tile(const StatsArgs& a, int64_t unit, double* sums,
                                        const StatsGradientLayout& layout, dense_conv1d::TileBuffers& buf) {
  const int64_t channels = a.channels, length = a.length, kernel = a.kernel, half = kernel / 2;
  const int64_t b = unit / a.tiles, l0 = (unit % a.tiles) * kTile, count = std::min(kTile, length - l0);
  const int64_t lanes = round_up(count, W), z_lanes = round_up(lanes + 2 * half, W);
  const int64_t start = l0 - half;  // z index i is position l0 - half + i
  dense_conv1d::forward_tile<W, false>(a.conv(b), start, z_lanes, buf);
  const int64_t valid_begin = std::clamp<int64_t>(-start, 0, z_lanes);
  const int64_t valid_end = std::clamp<int64_t>(length - start, 0, z_lanes);
  for (int64_t c = 0; c < channels; ++c) {
    float* row = buf.out.data() + c * z_lanes;
    const float base = a.base[c], slope = a.slope[c], mean = a.mean[c];
    for (int64_t i = valid_begin; i < valid_end; ++i) row[i] = base + slope * (row[i] - mean);  // z -> grad_z
  }
  // audio at position l0 - half + i is input index half + i (the input starts at start - half)
  dense_conv1d::backward_tile<W>(a.weight, channels, kernel, length, buf.out.data(), z_lanes, buf.input.data() + half,
                                 z_lanes + kernel - 1, count, a.grad_audio + b * channels * length + l0,
                                 sums + layout.weight, sums + layout.bias);
}

AVFUSED_TARGET_CLONES
void stats_tiles_w8(const StatsArgs& a, int64_t begin, int64_t end) {
  dense_conv1d::TileBuffers buffers;
  for (int64_t unit = begin; unit < end; ++unit) stats_tile<8>(a, unit, buffers);
}

AVFUSED_TARGET_CLONES
void stats_backward_tiles_w8(const StatsArgs& a, int64_t begin, int64_t end, GradientSums& sums,
                             const StatsGradientLayout& layout) {
  dense_conv1d::TileBuffers buffers;
  double* mine = sums.mine();
  for (int64_t unit = begin; unit < end; ++unit) stats_backward_tile<8>(a, unit, mine, layout, buffers);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void stats_tiles_w16(const StatsArgs& a, int64_t begin, int64_t end) {
  dense_conv1d::TileBuffers buffers;
  for (int64_t unit = begin; unit < end; ++unit) stats_tile<16>(a, unit, buffers);
}

AVFUSED_TARGET_AVX512
void stats_backward_tiles_w16(const StatsArgs& a, int64_t begin, int64_t end, GradientSums& sums,
                              const StatsGradientLayout& layout) {
  dense_conv1d::TileBuffers buffers;
  double* mine = sums.mine();
  for (int64_t unit = begin; unit < end; ++unit) stats_backward_tile<16>(a, unit, mine, layout, buffers);
}
#endif

// The 16-lane code for the baseline ISA: AVFUSED_CPU_PORTABLE_WIDE=1 (tests on CPUs without AVX-512).
void stats_tiles_w16_portable(const StatsArgs& a, int64_t begin, int64_t end) {
  dense_conv1d::TileBuffers buffers;
  for (int64_t unit = begin; unit < end; ++unit) stats_tile<16>(a, unit, buffers);
}

void stats_backward_tiles_w16_portable(const StatsArgs& a, int64_t begin, int64_t end, GradientSums& sums,
                                       const StatsGradientLayout& layout) {
  dense_conv1d::TileBuffers buffers;
  double* mine = sums.mine();
  for (int64_t unit = begin; unit < end; ++unit) stats_backward_tile<16>(a, unit, mine, layout, buffers);
}

void check_cpu_inputs(const char* op, const at::Tensor& audio, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(audio.dim() == 3 && audio.numel() > 0, "avfused_ext.", op, ": audio must be a non-empty (B, C, L), "
              "got shape ", audio.sizes());
  TORCH_CHECK(weight.dim() == 3, "avfused_ext.", op, ": weight must be (C, C, K), got ", weight.sizes());
  const int64_t channels = audio.size(1), kernel = weight.size(2);
  check_image_op_tensor(op, "audio", audio, audio.sizes());
  check_image_op_tensor(op, "weight", weight, {channels, channels, kernel});
  check_image_op_tensor(op, "bias", bias, {channels});
  TORCH_CHECK(kernel % 2 == 1, "avfused_ext.", op, ": the kernel size must be odd, got ", kernel);
}

std::tuple<at::Tensor, at::Tensor> audio_squeeze_stats_cpu(const at::Tensor& audio, const at::Tensor& weight,
                                                           const at::Tensor& bias) {
  check_cpu_inputs("audio_squeeze_stats", audio, weight, bias);
  const int64_t clips = audio.size(0), channels = audio.size(1), length = audio.size(2);
  const Lanes isa = image_kernel_lanes();
  const bool wide = isa != Lanes::k8;
  const auto [taps, bias_p] = dense_conv1d::packed_taps(weight, bias, wide);
  const at::Tensor audio_c = audio.contiguous();
  const int64_t tiles = (length + kTile - 1) / kTile, units = clips * tiles;
  std::vector<Moments> moments(units * channels);
  StatsArgs args{audio_c.data_ptr<float>(), taps.data_ptr<float>(), bias_p.data_ptr<float>(), channels, length,
                 weight.size(2), tiles};
  args.moments = moments.data();
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (isa == Lanes::k16) return stats_tiles_w16(args, begin, end);
#endif
    if (isa == Lanes::k16Portable) return stats_tiles_w16_portable(args, begin, end);
    stats_tiles_w8(args, begin, end);
  });
  at::Tensor mean = at::empty({channels}, audio.options()), var = at::empty({channels}, audio.options());
  for (int64_t c = 0; c < channels; ++c) {
    Moments total = moments[c];
    for (int64_t unit = 1; unit < units; ++unit) total.merge(moments[unit * channels + c]);
    mean.data_ptr<float>()[c] = static_cast<float>(total.mean);
    var.data_ptr<float>()[c] = static_cast<float>(total.m2 / total.count);
  }
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> audio_squeeze_stats_backward_cpu(
    const at::Tensor& grad_mean, const at::Tensor& grad_var, const at::Tensor& audio, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean) {
  const char* op = "audio_squeeze_stats_backward";
  check_cpu_inputs(op, audio, weight, bias);
  const int64_t clips = audio.size(0), channels = audio.size(1), length = audio.size(2), kernel = weight.size(2);
  check_image_op_tensor(op, "grad_mean", grad_mean, {channels});
  check_image_op_tensor(op, "grad_var", grad_var, {channels});
  check_image_op_tensor(op, "mean", mean, {channels});
  const at::Tensor audio_c = audio.contiguous(), weight_c = weight.contiguous(), mean_c = mean.contiguous();
  const at::Tensor grad_mean_c = grad_mean.contiguous(), grad_var_c = grad_var.contiguous();
  const double positions = static_cast<double>(clips * length);
  std::vector<float> base(channels), slope(channels);
  for (int64_t c = 0; c < channels; ++c) {
    base[c] = static_cast<float>(grad_mean_c.data_ptr<float>()[c] / positions);
    slope[c] = static_cast<float>(2.0 * grad_var_c.data_ptr<float>()[c] / positions);
  }
  const Lanes isa = image_kernel_lanes();
  const bool wide = isa != Lanes::k8;
  const auto [taps, bias_p] = dense_conv1d::packed_taps(weight_c, bias, wide);
  at::Tensor grad_audio = at::empty_like(audio_c);
  const int64_t tiles = (length + kTile - 1) / kTile;
  StatsArgs args{audio_c.data_ptr<float>(), taps.data_ptr<float>(), bias_p.data_ptr<float>(), channels, length,
                 kernel, tiles};
  args.weight = weight_c.data_ptr<float>();
  args.mean = mean_c.data_ptr<float>();
  args.base = base.data();
  args.slope = slope.data();
  args.grad_audio = grad_audio.data_ptr<float>();
  const StatsGradientLayout layout(channels, kernel);
  GradientSums sums(layout.size);
  at::parallel_for(0, clips * tiles, 1, [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (isa == Lanes::k16) return stats_backward_tiles_w16(args, begin, end, sums, layout);
#endif
    if (isa == Lanes::k16Portable) return stats_backward_tiles_w16_portable(args, begin, end, sums, layout);
    stats_backward_tiles_w8(args, begin, end, sums, layout);
  });
  at::Tensor grad_weight = at::empty({channels, channels, kernel}, audio_c.options());
  at::Tensor grad_bias = at::empty({channels}, audio_c.options());
  sums.total(layout.weight, channels * channels * kernel, grad_weight.data_ptr<float>());
  sums.total(layout.bias, channels, grad_bias.data_ptr<float>());
  return {grad_audio, grad_weight, grad_bias};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("audio_squeeze_stats(Tensor audio, Tensor weight, Tensor bias) -> (Tensor, Tensor)");
  m.def("audio_squeeze_stats_backward(Tensor grad_mean, Tensor grad_var, Tensor audio, Tensor weight, Tensor bias, "
        "Tensor mean) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) {
  m.impl("audio_squeeze_stats", &avfused::audio_squeeze_stats_cpu);
  m.impl("audio_squeeze_stats_backward", &avfused::audio_squeeze_stats_backward_cpu);
}
