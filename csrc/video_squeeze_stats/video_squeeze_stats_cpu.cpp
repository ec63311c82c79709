// video_squeeze_stats on the CPU, one work item per channel plane of one image.
// Forward: z of the plane is computed into one plane buffer; its mean and its sum of squared deviations
// from that mean come from two sweeps of the buffer (float lanes, then double), and the planes' statistics
// combine in double after the parallel loop (Chan's formula: the plane means' spread around the channel
// mean is added, never E[z^2] - E[z]^2, which cancels when |mean| >> std). The result does not depend on
// the thread count. Backward: z is recomputed row by row into the bordered dz plane, whose correlation
// with the video plane is the dw3x3 weight gradient and whose transposed convolution is the video
// gradient. Weight gradients sum per thread in double.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../common/depthwise.h"
#include "video_squeeze_stats.h"

namespace avfused {
namespace {

using namespace depthwise;

struct StatsArgs {
  const float* video;    // (N, C, H, W)
  const float* dw;       // (C, 9)
  const float* dw_bias;  // (C,)
  int64_t channels, height, width;
  // forward: each plane's (mean, sum of squared deviations from it), plane n C + c at 2 (n C + c)
  double* plane_stats = nullptr;
  // backward
  const float* grad_scale = nullptr;  // (C,): grad_mean / M
  const float* dev_scale = nullptr;   // (C,): 2 grad_var / M
  const float* mean = nullptr;        // (C,)
  const float* dw_mirrored = nullptr; // (C, 9): the transposed convolution's taps
  float* grad_video = nullptr;        // (N, C, H, W)
};

// Offsets of each weight gradient in a thread's block of GradientSums.
struct StatsGradientLayout {
  int64_t dw, dw_bias, size;
  explicit StatsGradientLayout(int64_t c) : dw(0), dw_bias(9 * c), size(10 * c) {}
};

// Per-thread buffers, reused across the thread's planes.
template <int W>
struct StatsScratch {
  BorderedPlane input, d_hidden;  // video and dz of one plane (border 1: the dw3x3's padding)
  std::vector<float> hidden;      // z of one plane, H x lanes (forward), or one row of it (backward)
  explicit StatsScratch(const StatsArgs& a)
      : input(a.height, round_up(a.width, W), 1),
        d_hidden(a.height, round_up(a.width, W), 1),
        hidden(a.height * round_up(a.width, W)) {}
};

AVFUSED_INLINE void load_plane(const StatsArgs& a, int64_t item, BorderedPlane& input) {
  const float* video = a.video + item * a.height * a.width;
  for (int64_t y = 0; y < a.height; ++y) std::copy_n(video + y * a.width, a.width, input.row(y));
}

template <int W>
AVFUSED_INLINE void stats_plane(const StatsArgs& a, int64_t item, StatsScratch<W>& s) {
  using V = typename simd::Vec<W>::f;
  const int64_t c = item % a.channels, height = a.height, width = a.width, lanes = round_up(width, W);
  load_plane(a, item, s.input);
  float* z = s.hidden.data();
  for (int64_t y = 0; y < height; ++y) {
    float* row = z + y * lanes;
    depthwise_row<W, 3, 1, false>(s.input.window(y), s.input.stride, a.dw + c * 9, a.dw_bias[c], row, lanes);
    std::fill(row + width, row + lanes, 0.f);  // past the width: not in the sums
  }
  const double count = static_cast<double>(height * width);
  const float shift = static_cast<float>(plane_sum<W>(z, lanes, height, lanes) / count);
  for (int64_t y = 0; y < height; ++y) std::fill(z + y * lanes + width, z + (y + 1) * lanes, shift);  // deviation 0
  const V centre = simd::splat<V>(shift);
  V sum = V{}, squares = V{};
  for (int64_t i = 0; i < height * lanes; i += W) {
    const V d = simd::load<V>(z + i) - centre;
    sum += d;
    squares += d * d;
  }
  // the shift is the plane mean rounded to float: the deviations' own sum corrects it
  const double offset = horizontal_sum(sum);
  a.plane_stats[2 * item] = shift + offset / count;
  a.plane_stats[2 * item + 1] = horizontal_sum(squares) - offset * offset / count;
}

template <int W>
AVFUSED_INLINE void stats_backward_plane(const StatsArgs& a, int64_t item, StatsScratch<W>& s, double* sums,
                                         const StatsGradientLayout& at) {
  using V = typename simd::Vec<W>::f;
  const int64_t c = item % a.channels, height = a.height, width = a.width, lanes = round_up(width, W);
  load_plane(a, item, s.input);
  const V grad_scale = simd::splat<V>(a.grad_scale[c]), dev_scale = simd::splat<V>(a.dev_scale[c]);
  const V mean = simd::splat<V>(a.mean[c]);
  float* row = s.hidden.data();
  for (int64_t y = 0; y < height; ++y) {
    depthwise_row<W, 3, 1, false>(s.input.window(y), s.input.stride, a.dw + c * 9, a.dw_bias[c], row, lanes);
    float* dz = s.d_hidden.row(y);
    for (int64_t x = 0; x < lanes; x += W) simd::store(dz + x, grad_scale + dev_scale * (simd::load<V>(row + x) - mean));
    std::fill(dz + width, dz + lanes, 0.f);  // dz exists only inside the image
  }
  sums[at.dw_bias + c] += plane_sum<W>(s.d_hidden.row(0), s.d_hidden.stride, height, lanes);
  depthwise_weight_grad<W, 3, 1>(s.d_hidden.row(0), s.d_hidden.stride, s.input.window(0), s.input.stride, height,
                                 lanes, sums + at.dw + c * 9);
  float* grad_video = a.grad_video + item * height * width;
  for (int64_t y = 0; y < height; ++y) {
    depthwise_row<W, 3, 1, false>(s.d_hidden.window(y), s.d_hidden.stride, a.dw_mirrored + c * 9, 0.f, row, lanes);
    std::copy_n(row, width, grad_video + y * width);
  }
}

template <int W>
AVFUSED_INLINE void stats_planes(const StatsArgs& a, int64_t begin, int64_t end) {
  StatsScratch<W> scratch(a);
  for (int64_t item = begin; item < end; ++item) stats_plane<W>(a, item, scratch);
}

template <int W>
AVFUSED_INLINE void stats_backward_planes(const StatsArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  StatsScratch<W> scratch(a);
  const StatsGradientLayout layout(a.channels);
  double* mine = sums.mine();
  for (int64_t item = begin; item < end; ++item) stats_backward_plane<W>(a, item, scratch, mine, layout);
}

AVFUSED_TARGET_CLONES
void stats_planes_w8(const StatsArgs& a, int64_t begin, int64_t end) { stats_planes<8>(a, begin, end); }
AVFUSED_TARGET_CLONES
void stats_backward_planes_w8(const StatsArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  stats_backward_planes<8>(a, begin, end, sums);
}
void stats_planes_w16_portable(const StatsArgs& a, int64_t begin, int64_t end) { stats_planes<16>(a, begin, end); }
void stats_backward_planes_w16_portable(const StatsArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  stats_backward_planes<16>(a, begin, end, sums);
}

#if AVFUSED_X86_DISPATCH
AVFUSED_TARGET_AVX512
void stats_planes_w16(const StatsArgs& a, int64_t begin, int64_t end) { stats_planes<16>(a, begin, end); }
AVFUSED_TARGET_AVX512
void stats_backward_planes_w16(const StatsArgs& a, int64_t begin, int64_t end, GradientSums& sums) {
  stats_backward_planes<16>(a, begin, end, sums);
}
#endif

// The validated contiguous float32 CPU inputs.
struct StatsInputs {
  at::Tensor video, dw, dw_bias;
  int64_t images, channels, height, width;
};

StatsInputs check_cpu_inputs(const char* op, const at::Tensor& video, const at::Tensor& dw_weight,
                             const at::Tensor& dw_bias) {
  const std::vector<int64_t> sizes = check_images(op, "video", video);
  check_image_op_tensor(op, "dw_weight", dw_weight, {sizes[1], 1, 3, 3});
  check_image_op_tensor(op, "dw_bias", dw_bias, {sizes[1]});
  return {video.contiguous(), dw_weight.contiguous(), dw_bias.contiguous(), sizes[0], sizes[1], sizes[2], sizes[3]};
}

StatsArgs make_args(const StatsInputs& in) {
  return StatsArgs{in.video.data_ptr<float>(), in.dw.data_ptr<float>(), in.dw_bias.data_ptr<float>(), in.channels,
                   in.height, in.width};
}

// Planes per parallel_for grain: a few thousand pixels each, so that small maps are not one task a plane.
int64_t plane_grain(const StatsInputs& in) { return std::max<int64_t>(1, 4096 / (in.height * in.width)); }

std::tuple<at::Tensor, at::Tensor> video_squeeze_stats_cpu(const at::Tensor& video, const at::Tensor& dw_weight,
                                                           const at::Tensor& dw_bias) {
  const StatsInputs in = check_cpu_inputs("video_squeeze_stats", video, dw_weight, dw_bias);
  const int64_t c = in.channels, planes = in.images * c;
  std::vector<double> plane_stats(2 * planes);
  StatsArgs args = make_args(in);
  args.plane_stats = plane_stats.data();
  const Lanes lanes = image_kernel_lanes();
  at::parallel_for(0, planes, plane_grain(in), [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (lanes == Lanes::k16) return stats_planes_w16(args, begin, end);
#endif
    if (lanes == Lanes::k16Portable) return stats_planes_w16_portable(args, begin, end);
    stats_planes_w8(args, begin, end);
  });
  at::Tensor mean = at::empty({c}, in.video.options()), var = at::empty({c}, in.video.options());
  const double per_plane = static_cast<double>(in.height * in.width);
  for (int64_t ch = 0; ch < c; ++ch) {  // all planes hold H W values: the channel mean is their means' mean
    double total = 0.0;
    for (int64_t n = 0; n < in.images; ++n) total += plane_stats[2 * (n * c + ch)];
    const double channel_mean = total / in.images;
    double squares = 0.0;
    for (int64_t n = 0; n < in.images; ++n) {
      const double spread = plane_stats[2 * (n * c + ch)] - channel_mean;
      squares += plane_stats[2 * (n * c + ch) + 1] + per_plane * spread * spread;
    }
    mean.data_ptr<float>()[ch] = static_cast<float>(channel_mean);
    var.data_ptr<float>()[ch] = static_cast<float>(std::max(squares, 0.0) / (per_plane * in.images));
  }
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> video_squeeze_stats_backward_cpu(
    const at::Tensor& grad_mean, const at::Tensor& grad_var, const at::Tensor& video, const at::Tensor& dw_weight,
    const at::Tensor& dw_bias, const at::Tensor& mean) {
  const char* op = "video_squeeze_stats_backward";
  const StatsInputs in = check_cpu_inputs(op, video, dw_weight, dw_bias);
  const int64_t c = in.channels, planes = in.images * c;
  check_image_op_tensor(op, "grad_mean", grad_mean, {c});
  check_image_op_tensor(op, "grad_var", grad_var, {c});
  check_image_op_tensor(op, "mean", mean, {c});
  const double count = static_cast<double>(in.images * in.height * in.width);  // M
  std::vector<float> grad_scale(c), dev_scale(c);
  const at::Tensor grad_mean_c = grad_mean.contiguous(), grad_var_c = grad_var.contiguous(), mean_c = mean.contiguous();
  for (int64_t ch = 0; ch < c; ++ch) {
    grad_scale[ch] = static_cast<float>(grad_mean_c.data_ptr<float>()[ch] / count);
    dev_scale[ch] = static_cast<float>(2.0 * grad_var_c.data_ptr<float>()[ch] / count);
  }
  at::Tensor grad_video = at::empty_like(in.video);
  StatsArgs args = make_args(in);
  const std::vector<float> dw_mirrored = mirrored_taps(args.dw, c, 3);
  args.grad_scale = grad_scale.data();
  args.dev_scale = dev_scale.data();
  args.mean = mean_c.data_ptr<float>();
  args.dw_mirrored = dw_mirrored.data();
  args.grad_video = grad_video.data_ptr<float>();
  const StatsGradientLayout layout(c);
  GradientSums sums(layout.size);
  const Lanes lanes = image_kernel_lanes();
  at::parallel_for(0, planes, plane_grain(in), [&](int64_t begin, int64_t end) {
#if AVFUSED_X86_DISPATCH
    if (lanes == Lanes::k16) return stats_backward_planes_w16(args, begin, end, sums);
#endif
    if (lanes == Lanes::k16Portable) return stats_backward_planes_w16_portable(args, begin, end, sums);
    stats_backward_planes_w8(args, begin, end, sums);
  });
  at::Tensor d_dw = at::empty({c, 1, 3, 3}, in.video.options()), d_dw_bias = at::empty({c}, in.video.options());
  sums.total(layout.dw, 9 * c, d_dw.data_ptr<float>());
  sums.total(layout.dw_bias, c, d_dw_bias.data_ptr<float>());
  return {grad_video, d_dw, d_dw_bias};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_FRAGMENT(avfused_ext, m) {
  m.def("video_squeeze_stats(Tensor video, Tensor dw_weight, Tensor dw_bias) -> (Tensor, Tensor)");
  m.def("video_squeeze_stats_backward(Tensor grad_mean, Tensor grad_var, Tensor video, Tensor dw_weight, "
        "Tensor dw_bias, Tensor mean) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(avfused_ext, CPU, m) {
  m.impl("video_squeeze_stats", &avfused::video_squeeze_stats_cpu);
  m.impl("video_squeeze_stats_backward", &avfused::video_squeeze_stats_backward_cpu);
}
