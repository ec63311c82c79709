// CUDA host side of video_expand_residual: checks, allocation, the launches (video_expand_residual_cuda.cu).
// video, tokens and grad share one activation type (float32, float16 or bfloat16); weight, bias and scale
// are float32, as are the weight gradients, which the kernels add with atomics into zeroed tensors.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <tuple>

#include "../common/cuda_checks.h"
#include "video_expand_residual.h"

namespace avfused {
namespace {

constexpr const char* kOp = "video_expand_residual";

struct ExpandCudaInputs {
  at::Tensor video, tokens, weight, bias, scale;
  cuda::ActivationType type;
  int64_t images, frames, channels, height, width;
};

ExpandCudaInputs check_cuda_inputs(const char* op, const at::Tensor& video, const at::Tensor& tokens,
                                   const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                                   int64_t window) {
  TORCH_CHECK(video.dim() == 4 && video.numel() > 0, "avfused_ext.", op, ": video must be a non-empty (N, C, H, W), "
              "got shape ", video.sizes());
  TORCH_CHECK(video.is_cuda(), "avfused_ext.", op, ": expected CUDA tensors, got video on ", video.device());
  TORCH_CHECK(window > 0, "avfused_ext.", op, ": window must be positive, got ", window);
  const int64_t images = video.size(0), channels = video.size(1), height = video.size(2), width = video.size(3);
  TORCH_CHECK(tokens.dim() == 3 && tokens.size(0) > 0 && images % tokens.size(0) == 0, "avfused_ext.", op,
              ": tokens must be (B, T R Q, window^2) for whole clips of the ", images, " images, got ", tokens.sizes());
  const int64_t frames = images / tokens.size(0);
  const int64_t rows = (height + window - 1) / window, cols = (width + window - 1) / window;
  TORCH_CHECK(tokens.sizes() == at::IntArrayRef({tokens.size(0), frames * rows * cols, window * window}),
              "avfused_ext.", op, ": tokens must be ", at::IntArrayRef({tokens.size(0), frames * rows * cols,
              window * window}), ", got ", tokens.sizes());
  TORCH_CHECK(tokens.scalar_type() == video.scalar_type() && tokens.device() == video.device(), "avfused_ext.", op,
              ": tokens must be ", video.scalar_type(), " on ", video.device(), " like video, got ",
              tokens.scalar_type(), " on ", tokens.device());
  TORCH_CHECK(weight.sizes() == at::IntArrayRef({channels, 1, 3, 3}), "avfused_ext.", op, ": weight must be (",
              channels, ", 1, 3, 3), got ", weight.sizes());
  TORCH_CHECK(bias.sizes() == at::IntArrayRef({channels}) && scale.sizes() == at::IntArrayRef({channels}),
              "avfused_ext.", op, ": bias and scale must be (", channels, "), got ", bias.sizes(), " and ",
              scale.sizes());
  check_int_range(height * width, "height * width", op);
  check_int_range(window * window, "window^2", op);
  const at::Device device = video.device();
  return {video.contiguous(),
          tokens.contiguous(),
          cuda_weight(op, "weight", weight, device),
          cuda_weight(op, "bias", bias, device),
          cuda_weight(op, "scale", scale, device),
          activation_type(op, "video", video),
          images,
          frames,
          channels,
          height,
          width};
}

at::Tensor video_expand_residual_cuda(const at::Tensor& video, const at::Tensor& tokens, const at::Tensor& weight,
                                      const at::Tensor& bias, const at::Tensor& scale, int64_t window) {
  const c10::cuda::CUDAGuard guard(video.device());
  const ExpandCudaInputs in = check_cuda_inputs(kOp, video, tokens, weight, bias, scale, window);
  at::Tensor out = at::empty_like(in.video);
  check_launch(cuda::launch_video_expand_residual_forward(
                   in.type, in.video.data_ptr(), in.tokens.data_ptr(), in.weight.data_ptr<float>(),
                   in.bias.data_ptr<float>(), in.scale.data_ptr<float>(), out.data_ptr(), in.images,
                   static_cast<int>(in.frames), static_cast<int>(in.channels), static_cast<int>(in.height),
                   static_cast<int>(in.width), static_cast<int>(window), current_device_limits(),
                   c10::cuda::getCurrentCUDAStream()),
               kOp);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> video_expand_residual_backward_cuda(
    const at::Tensor& grad, const at::Tensor& video, const at::Tensor& tokens, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& scale, int64_t window) {
  const char* op = "video_expand_residual_backward";
  const c10::cuda::CUDAGuard guard(video.device());
  const ExpandCudaInputs in = check_cuda_inputs(op, video, tokens, weight, bias, scale, window);
  check_grad_like(grad, in.video, "video", op);
  const at::Tensor grad_c = grad.contiguous();
  const int64_t c = in.channels;
  const at::TensorOptions weights = in.weight.options();
  at::Tensor grad_video = at::empty_like(in.video), grad_tokens = at::empty_like(in.tokens);
  at::Tensor grad_weight = at::zeros({c, 1, 3, 3}, weights), grad_bias = at::zeros({c}, weights);
  at::Tensor grad_scale = at::zeros({c}, weights);
  check_launch(cuda::launch_video_expand_residual_backward(
                   in.type, grad_c.data_ptr(), in.video.data_ptr(), in.tokens.data_ptr(), in.weight.data_ptr<float>(),
                   in.scale.data_ptr<float>(), grad_video.data_ptr(), grad_tokens.data_ptr(),
                   grad_weight.data_ptr<float>(), grad_bias.data_ptr<float>(), grad_scale.data_ptr<float>(),
                   in.images, static_cast<int>(in.frames), static_cast<int>(c), static_cast<int>(in.height),
                   static_cast<int>(in.width), static_cast<int>(window), current_device_limits(),
                   c10::cuda::getCurrentCUDAStream()),
               op);
  return {grad_video, grad_tokens, grad_weight, grad_bias, grad_scale};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_IMPL(avfused_ext, CUDA, m) {
  m.impl("video_expand_residual", &avfused::video_expand_residual_cuda);
  m.impl("video_expand_residual_backward", &avfused::video_expand_residual_backward_cuda);
}
