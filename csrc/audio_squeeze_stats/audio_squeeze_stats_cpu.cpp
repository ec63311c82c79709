// audio_squeeze_stats on the CPU, one clip at a time: ATen's convolution gives the clip's z (C, L), whose
// per-channel moments are taken in double (two passes) and merged into the batch's (Chan's update); the
// backward recomputes each clip's z, turns it into grad_z in place and hands it to ATen's convolution
// backward, the weight and bias gradients summed over the clips in double. A hand-written C -> C
// convolution measured no faster than ATen's here, so the op's gain is memory: z never exists for more
// than one clip, and the statistics are exact to double rounding.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../common/depthwise.h"
#include "audio_squeeze_stats.h"

namespace avfused {
namespace {

using audio_squeeze_stats::Moments;
using depthwise::check_image_op_tensor;

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

at::Tensor clip_z(const at::Tensor& audio, int64_t b, const at::Tensor& weight, const at::Tensor& bias) {
  return at::conv1d(audio.narrow(0, b, 1), weight, bias, 1, weight.size(2) / 2).contiguous();
}

std::tuple<at::Tensor, at::Tensor> audio_squeeze_stats_cpu(const at::Tensor& audio, const at::Tensor& weight,
                                                           const at::Tensor& bias) {
  check_cpu_inputs("audio_squeeze_stats", audio, weight, bias);
  const int64_t clips = audio.size(0), channels = audio.size(1), length = audio.size(2);
  std::vector<Moments> moments(channels);
  for (int64_t b = 0; b < clips; ++b) {
    const at::Tensor z = clip_z(audio, b, weight, bias);
    const float* values = z.data_ptr<float>();
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const Moments clip = audio_squeeze_stats::row_moments(values + c * length, length);
        if (b == 0) {
          moments[c] = clip;
        } else {
          moments[c].merge(clip);
        }
      }
    });
  }
  at::Tensor mean = at::empty({channels}, audio.options()), var = at::empty({channels}, audio.options());
  for (int64_t c = 0; c < channels; ++c) {
    mean.data_ptr<float>()[c] = static_cast<float>(moments[c].mean);
    var.data_ptr<float>()[c] = static_cast<float>(moments[c].m2 / moments[c].count);
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
  const at::Tensor audio_c = audio.contiguous(), weight_c = weight.contiguous();
  const double positions = static_cast<double>(clips * length);
  // grad_z = base + slope (z - mean) per channel
  const at::Tensor grad_mean_c = grad_mean.contiguous(), grad_var_c = grad_var.contiguous(), mean_c = mean.contiguous();
  const float* centre = mean_c.data_ptr<float>();
  std::vector<float> base(channels), slope(channels);
  for (int64_t c = 0; c < channels; ++c) {
    base[c] = static_cast<float>(grad_mean_c.data_ptr<float>()[c] / positions);
    slope[c] = static_cast<float>(2.0 * grad_var_c.data_ptr<float>()[c] / positions);
  }
  at::Tensor grad_audio = at::empty_like(audio_c);
  at::Tensor weight_sum = at::zeros({channels, channels, kernel}, audio.options().dtype(at::kDouble));
  at::Tensor bias_sum = at::zeros({channels}, audio.options().dtype(at::kDouble));
  for (int64_t b = 0; b < clips; ++b) {
    at::Tensor grad_z = clip_z(audio_c, b, weight_c, bias);
    float* values = grad_z.data_ptr<float>();
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        float* row = values + c * length;
        for (int64_t l = 0; l < length; ++l) row[l] = base[c] + slope[c] * (row[l] - centre[c]);
      }
    });
    auto [grad_input, grad_weight, grad_bias] = at::convolution_backward(
        grad_z, audio_c.narrow(0, b, 1), weight_c, at::IntArrayRef{channels}, {1}, {kernel / 2}, {1}, false, {0}, 1,
        {true, true, true});
    grad_audio.narrow(0, b, 1).copy_(grad_input);
    weight_sum += grad_weight.to(at::kDouble);
    bias_sum += grad_bias.to(at::kDouble);
  }
  return {grad_audio, weight_sum.to(at::kFloat), bias_sum.to(at::kFloat)};
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
