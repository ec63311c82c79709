// CUDA host side of video_squeeze_tokens: checks, allocation, the launches (video_squeeze_tokens_cuda.cu).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <tuple>

#include "../common/cuda_checks.h"
#include "video_squeeze_tokens.h"

namespace avfused {
namespace {

constexpr const char* kOp = "video_squeeze_tokens";

struct SqueezeCudaInputs {
  at::Tensor video, dw, dw_bias, weight, bias;
  cuda::ActivationType type;
  int64_t images, channels, height, width, rows, cols;
};

SqueezeCudaInputs check_cuda_inputs(const char* op, const at::Tensor& video, const at::Tensor& dw_weight,
                                    const at::Tensor& dw_bias, const at::Tensor& weight, const at::Tensor& bias,
                                    int64_t frames, int64_t window) {
  check_cuda_images(video, "video", op);
  const int64_t channels = video.size(1);
  const std::pair<const at::Tensor*, std::vector<int64_t>> expected[] = {
      {&dw_weight, {channels, 1, 3, 3}}, {&dw_bias, {channels}}, {&weight, {1, channels}}, {&bias, {1}}};
  const char* names[] = {"dw_weight", "dw_bias", "weight", "bias"};
  for (int i = 0; i < 4; ++i) {
    TORCH_CHECK(expected[i].first->sizes() == at::IntArrayRef(expected[i].second), "avfused_ext.", op, ": ", names[i],
                " must be ", at::IntArrayRef(expected[i].second), ", got ", expected[i].first->sizes());
  }
  TORCH_CHECK(window > 0, "avfused_ext.", op, ": window must be positive, got ", window);
  TORCH_CHECK(frames > 0 && video.size(0) % frames == 0, "avfused_ext.", op, ": ", video.size(0),
              " images are not whole clips of ", frames, " frames");
  const at::Device device = video.device();
  return {video.contiguous(),
          cuda_weight(op, "dw_weight", dw_weight, device),
          cuda_weight(op, "dw_bias", dw_bias, device),
          cuda_weight(op, "weight", weight, device),
          cuda_weight(op, "bias", bias, device),
          activation_type(op, "video", video),
          video.size(0),
          channels,
          video.size(2),
          video.size(3),
          (video.size(2) + window - 1) / window,
          (video.size(3) + window - 1) / window};
}

at::Tensor video_squeeze_tokens_cuda(const at::Tensor& video, const at::Tensor& dw_weight, const at::Tensor& dw_bias,
                                     const at::Tensor& weight, const at::Tensor& bias, int64_t frames,
                                     int64_t window) {
  const c10::cuda::CUDAGuard guard(video.device());
  const SqueezeCudaInputs in = check_cuda_inputs(kOp, video, dw_weight, dw_bias, weight, bias, frames, window);
  // zeros: the kernel writes the map's pixels, the windows' padding past the map stays zero
  at::Tensor tokens = at::zeros({in.images / frames, frames * in.rows * in.cols, window * window}, in.video.options());
  check_launch(cuda::launch_video_squeeze_tokens_forward(
                   in.type, in.video.data_ptr(), in.dw.data_ptr<float>(), in.dw_bias.data_ptr<float>(),
                   in.weight.data_ptr<float>(), in.bias.data_ptr<float>(), tokens.data_ptr(), in.images,
                   static_cast<int>(in.channels), static_cast<int>(in.height), static_cast<int>(in.width),
                   static_cast<int>(window), c10::cuda::getCurrentCUDAStream()),
               kOp);
  return tokens;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> video_squeeze_tokens_backward_cuda(
    const at::Tensor& grad_tokens, const at::Tensor& video, const at::Tensor& dw_weight, const at::Tensor& dw_bias,
    const at::Tensor& weight, const at::Tensor& bias, int64_t frames, int64_t window) {
  const char* op = "video_squeeze_tokens_backward";
  const c10::cuda::CUDAGuard guard(video.device());
  const SqueezeCudaInputs in = check_cuda_inputs(op, video, dw_weight, dw_bias, weight, bias, frames, window);
  const std::vector<int64_t> token_shape = {in.images / frames, frames * in.rows * in.cols, window * window};
  TORCH_CHECK(grad_tokens.sizes() == at::IntArrayRef(token_shape) && grad_tokens.scalar_type() == in.video.scalar_type()
                  && grad_tokens.device() == in.video.device(),
              "avfused_ext.", op, ": grad_tokens must be ", at::IntArrayRef(token_shape), " ", in.video.scalar_type(),
              " on ", in.video.device(), ", got ", grad_tokens.sizes(), " ", grad_tokens.scalar_type(), " on ",
              grad_tokens.device());
  const at::Tensor grad_c = grad_tokens.contiguous();
  const int64_t c = in.channels;
  const at::TensorOptions weights = in.dw.options();
  at::Tensor grad_video = at::empty_like(in.video);
  at::Tensor d_dw = at::zeros({c, 1, 3, 3}, weights), d_dw_bias = at::zeros({c}, weights);
  at::Tensor d_weight = at::zeros({1, c}, weights), d_bias = at::zeros({1}, weights);
  check_launch(cuda::launch_video_squeeze_tokens_backward(
                   in.type, grad_c.data_ptr(), in.video.data_ptr(), in.dw.data_ptr<float>(),
                   in.dw_bias.data_ptr<float>(), in.weight.data_ptr<float>(), grad_video.data_ptr(),
                   d_dw.data_ptr<float>(), d_dw_bias.data_ptr<float>(), d_weight.data_ptr<float>(),
                   d_bias.data_ptr<float>(), in.images, static_cast<int>(c), static_cast<int>(in.height),
                   static_cast<int>(in.width), static_cast<int>(window), c10::cuda::getCurrentCUDAStream()),
               op);
  return {grad_video, d_dw, d_dw_bias, d_weight, d_bias};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_IMPL(avfused_ext, CUDA, m) {
  m.impl("video_squeeze_tokens", &avfused::video_squeeze_tokens_cuda);
  m.impl("video_squeeze_tokens_backward", &avfused::video_squeeze_tokens_backward_cuda);
}
