// CUDA host side of audio_expand_residual: checks, allocation, the launches (audio_expand_residual_cuda.cu).
// audio, tokens and grad share one activation type (float32, float16 or bfloat16); weight, bias and scale
// are float32, as are the weight gradients, which the kernels reduce through a float32 workspace (per-tile
// partial sums, no atomics).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <tuple>

#include "../common/cuda_checks.h"
#include "audio_expand_residual.h"

namespace avfused {
namespace {

constexpr const char* kOp = "audio_expand_residual";

struct ExpandCudaInputs {
  at::Tensor audio, tokens, weight, bias, scale;
  cuda::ActivationType type;
  cuda::AudioExpandShape shape;
};

ExpandCudaInputs check_cuda_inputs(const char* op, const at::Tensor& audio, const at::Tensor& tokens,
                                   const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                                   const cuda::DeviceLimits& limits) {
  check_audio_expand_shapes(op, audio, tokens, weight, bias, scale);
  TORCH_CHECK(audio.is_cuda(), "avfused_ext.", op, ": expected CUDA tensors, got audio on ", audio.device());
  TORCH_CHECK(tokens.scalar_type() == audio.scalar_type() && tokens.device() == audio.device(), "avfused_ext.", op,
              ": tokens must be ", audio.scalar_type(), " on ", audio.device(), " like audio, got ",
              tokens.scalar_type(), " on ", tokens.device());
  const int64_t channels = audio.size(1), length = audio.size(2), kernel = weight.size(2);
  const int64_t values = tokens.size(1) * tokens.size(2);
  check_int_range(length, "length", op);
  check_int_range(values, "tokens per clip (T * D)", op);
  check_int_range(channels * (kernel + 2), "channels * (kernel + 2)", op);
  const size_t bytes = cuda::audio_expand_residual_shared_bytes(static_cast<int>(kernel));
  TORCH_CHECK(bytes <= limits.shared_bytes_per_block, "avfused_ext.", op, ": a kernel of ", kernel, " taps needs ",
              bytes, " bytes of shared memory per block; this GPU has ", limits.shared_bytes_per_block);
  const at::Device device = audio.device();
  return {audio.contiguous(),
          tokens.contiguous(),
          cuda_weight(op, "weight", weight, device),
          cuda_weight(op, "bias", bias, device),
          cuda_weight(op, "scale", scale, device),
          activation_type(op, "audio", audio),
          {audio.size(0), static_cast<int>(channels), static_cast<int>(length), static_cast<int>(values),
           static_cast<int>(kernel)}};
}

at::Tensor audio_expand_residual_cuda(const at::Tensor& audio, const at::Tensor& tokens, const at::Tensor& weight,
                                      const at::Tensor& bias, const at::Tensor& scale) {
  const c10::cuda::CUDAGuard guard(audio.device());
  const cuda::DeviceLimits limits = current_device_limits();
  const ExpandCudaInputs in = check_cuda_inputs(kOp, audio, tokens, weight, bias, scale, limits);
  at::Tensor out = at::empty_like(in.audio);
  check_launch(cuda::launch_audio_expand_residual_forward(
                   in.type, in.audio.data_ptr(), in.tokens.data_ptr(), in.weight.data_ptr<float>(),
                   in.bias.data_ptr<float>(), in.scale.data_ptr<float>(), out.data_ptr(), in.shape, limits,
                   c10::cuda::getCurrentCUDAStream()),
               kOp);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> audio_expand_residual_backward_cuda(
    const at::Tensor& grad, const at::Tensor& audio, const at::Tensor& tokens, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& scale) {
  const char* op = "audio_expand_residual_backward";
  const c10::cuda::CUDAGuard guard(audio.device());
  const cuda::DeviceLimits limits = current_device_limits();
  const ExpandCudaInputs in = check_cuda_inputs(op, audio, tokens, weight, bias, scale, limits);
  check_grad_like(grad, in.audio, "audio", op);
  const at::Tensor grad_c = grad.contiguous();
  const int64_t c = in.shape.channels, k = in.shape.kernel;
  const at::TensorOptions weights = in.weight.options();
  at::Tensor grad_audio = at::empty_like(in.audio), grad_tokens = at::empty_like(in.tokens);
  at::Tensor grad_weight = at::empty({c, 1, k}, weights), grad_bias = at::empty({c}, weights);
  at::Tensor grad_scale = at::empty({c}, weights);
  at::Tensor workspace = at::empty({cuda::audio_expand_residual_backward_workspace(in.shape, limits)}, weights);
  check_launch(cuda::launch_audio_expand_residual_backward(
                   in.type, grad_c.data_ptr(), in.audio.data_ptr(), in.tokens.data_ptr(), in.weight.data_ptr<float>(),
                   in.scale.data_ptr<float>(), grad_audio.data_ptr(), grad_tokens.data_ptr(),
                   grad_weight.data_ptr<float>(), grad_bias.data_ptr<float>(), grad_scale.data_ptr<float>(),
                   workspace.data_ptr<float>(), in.shape, limits, c10::cuda::getCurrentCUDAStream()),
               op);
  return {grad_audio, grad_tokens, grad_weight, grad_bias, grad_scale};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_IMPL(avfused_ext, CUDA, m) {
  m.impl("audio_expand_residual", &avfused::audio_expand_residual_cuda);
  m.impl("audio_expand_residual_backward", &avfused::audio_expand_residual_backward_cuda);
}
