// CUDA host side of audio_squeeze_stats: checks, allocation, the launches (audio_squeeze_stats_cuda.cu). Audio
// and grad_audio share one activation type (float32, float16 or bfloat16); weight, bias, the statistics and
// their gradients are float32. The kernels add nothing with atomics: workspace holds their partial results.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <tuple>

#include "../common/cuda_checks.h"
#include "audio_squeeze_stats.h"

namespace avfused {
namespace {

struct StatsCudaInputs {
  at::Tensor audio, weight, bias;
  cuda::ActivationType type;
  int64_t clips, channels, length, kernel;
};

StatsCudaInputs check_cuda_inputs(const char* op, const at::Tensor& audio, const at::Tensor& weight,
                                  const at::Tensor& bias) {
  TORCH_CHECK(audio.dim() == 3 && audio.numel() > 0, "avfused_ext.", op, ": audio must be a non-empty (B, C, L), "
              "got shape ", audio.sizes());
  TORCH_CHECK(audio.is_cuda(), "avfused_ext.", op, ": expected CUDA tensors, got audio on ", audio.device());
  TORCH_CHECK(weight.dim() == 3, "avfused_ext.", op, ": weight must be (C, C, K), got ", weight.sizes());
  const int64_t clips = audio.size(0), channels = audio.size(1), length = audio.size(2), kernel = weight.size(2);
  TORCH_CHECK(weight.sizes() == at::IntArrayRef({channels, channels, kernel}), "avfused_ext.", op, ": weight must be (",
              channels, ", ", channels, ", K), got ", weight.sizes());
  TORCH_CHECK(bias.sizes() == at::IntArrayRef({channels}), "avfused_ext.", op, ": bias must be (", channels, "), got ",
              bias.sizes());
  TORCH_CHECK(kernel % 2 == 1, "avfused_ext.", op, ": the kernel size must be odd, got ", kernel);
  check_int_range(length, "length", op);
  check_int_range(channels * channels * kernel, "C * C * K", op);
  const at::Device device = audio.device();
  return {audio.contiguous(),
          cuda_weight(op, "weight", weight, device),
          cuda_weight(op, "bias", bias, device),
          activation_type(op, "audio", audio),
          clips,
          channels,
          length,
          kernel};
}

std::tuple<at::Tensor, at::Tensor> audio_squeeze_stats_cuda(const at::Tensor& audio, const at::Tensor& weight,
                                                            const at::Tensor& bias) {
  const char* op = "audio_squeeze_stats";
  const c10::cuda::CUDAGuard guard(audio.device());
  const StatsCudaInputs in = check_cuda_inputs(op, audio, weight, bias);
  const int channels = static_cast<int>(in.channels), length = static_cast<int>(in.length);
  const cuda::LaunchNeeds needs = cuda::audio_squeeze_stats_forward_needs(in.clips, channels, length);
  const at::TensorOptions weights = in.weight.options();
  at::Tensor moments = at::empty({needs.workspace}, weights.dtype(at::kDouble));
  at::Tensor mean = at::empty({in.channels}, weights), var = at::empty({in.channels}, weights);
  check_launch(cuda::launch_audio_squeeze_stats_forward(
                   in.type, in.audio.data_ptr(), in.weight.data_ptr<float>(), in.bias.data_ptr<float>(),
                   moments.data_ptr<double>(), mean.data_ptr<float>(), var.data_ptr<float>(), in.clips, channels,
                   length, static_cast<int>(in.kernel), c10::cuda::getCurrentCUDAStream()),
               op);
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> audio_squeeze_stats_backward_cuda(
    const at::Tensor& grad_mean, const at::Tensor& grad_var, const at::Tensor& audio, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean) {
  const char* op = "audio_squeeze_stats_backward";
  const c10::cuda::CUDAGuard guard(audio.device());
  const StatsCudaInputs in = check_cuda_inputs(op, audio, weight, bias);
  const int64_t c = in.channels;
  const StatisticsGradients g = statistics_gradients(op, c, grad_mean, grad_var, mean, in.audio.device());
  const int channels = static_cast<int>(c), length = static_cast<int>(in.length), kernel = static_cast<int>(in.kernel);
  const cuda::DeviceLimits limits = current_device_limits();
  const cuda::LaunchNeeds needs = cuda::audio_squeeze_stats_backward_needs(in.clips, channels, length, kernel, limits);
  TORCH_CHECK(needs.shared_bytes <= limits.shared_bytes_per_block, "avfused_ext.", op, ": ", c, " channels and ",
              kernel, " taps need ", needs.shared_bytes, " bytes of shared memory per block; this GPU has ",
              limits.shared_bytes_per_block, " (use fewer channels or the torch backend)");
  const at::TensorOptions weights = in.weight.options();
  at::Tensor grad_audio = at::empty_like(in.audio);
  at::Tensor grad_weight = at::empty({c, c, in.kernel}, weights), grad_bias = at::empty({c}, weights);
  at::Tensor partials = at::empty({needs.workspace}, weights);
  check_launch(cuda::launch_audio_squeeze_stats_backward(
                   in.type, g.grad_mean.data_ptr<float>(), g.grad_var.data_ptr<float>(), in.audio.data_ptr(),
                   in.weight.data_ptr<float>(), in.bias.data_ptr<float>(), g.mean.data_ptr<float>(),
                   grad_audio.data_ptr(), grad_weight.data_ptr<float>(), grad_bias.data_ptr<float>(),
                   partials.data_ptr<float>(), in.clips, channels, length, kernel, limits,
                   c10::cuda::getCurrentCUDAStream()),
               op);
  return {grad_audio, grad_weight, grad_bias};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_IMPL(avfused_ext, CUDA, m) {
  m.impl("audio_squeeze_stats", &avfused::audio_squeeze_stats_cuda);
  m.impl("audio_squeeze_stats_backward", &avfused::audio_squeeze_stats_backward_cuda);
}
