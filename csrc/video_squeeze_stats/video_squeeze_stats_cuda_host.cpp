// CUDA host side of video_squeeze_stats: checks, allocation, the launches (video_squeeze_stats_cuda.cu).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <tuple>

#include "../common/cuda_checks.h"
#include "video_squeeze_stats.h"

namespace avfused {
namespace {

struct StatsCudaInputs {
  at::Tensor video, dw, dw_bias;
  cuda::ActivationType type;
  int64_t images, channels, height, width;
};

StatsCudaInputs check_cuda_inputs(const char* op, const at::Tensor& video, const at::Tensor& dw_weight,
                                  const at::Tensor& dw_bias) {
  check_cuda_images(video, "video", op);
  const int64_t channels = video.size(1);
  TORCH_CHECK(dw_weight.sizes() == at::IntArrayRef({channels, 1, 3, 3}), "avfused_ext.", op, ": dw_weight must be ",
              at::IntArrayRef({channels, 1, 3, 3}), ", got ", dw_weight.sizes());
  TORCH_CHECK(dw_bias.sizes() == at::IntArrayRef({channels}), "avfused_ext.", op, ": dw_bias must be (", channels,
              "), got ", dw_bias.sizes());
  const at::Device device = video.device();
  return {video.contiguous(),
          cuda_weight(op, "dw_weight", dw_weight, device),
          cuda_weight(op, "dw_bias", dw_bias, device),
          activation_type(op, "video", video),
          video.size(0),
          channels,
          video.size(2),
          video.size(3)};
}

std::tuple<at::Tensor, at::Tensor> video_squeeze_stats_cuda(const at::Tensor& video, const at::Tensor& dw_weight,
                                                            const at::Tensor& dw_bias) {
  const char* op = "video_squeeze_stats";
  const c10::cuda::CUDAGuard guard(video.device());
  const StatsCudaInputs in = check_cuda_inputs(op, video, dw_weight, dw_bias);
  const at::TensorOptions weights = in.dw.options();
  at::Tensor plane_stats = at::empty({2 * in.images * in.channels}, weights.dtype(at::kDouble));
  at::Tensor mean = at::empty({in.channels}, weights), var = at::empty({in.channels}, weights);
  check_launch(cuda::launch_video_squeeze_stats_forward(
                   in.type, in.video.data_ptr(), in.dw.data_ptr<float>(), in.dw_bias.data_ptr<float>(),
                   plane_stats.data_ptr<double>(), mean.data_ptr<float>(), var.data_ptr<float>(), in.images,
                   static_cast<int>(in.channels), static_cast<int>(in.height), static_cast<int>(in.width),
                   c10::cuda::getCurrentCUDAStream()),
               op);
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> video_squeeze_stats_backward_cuda(
    const at::Tensor& grad_mean, const at::Tensor& grad_var, const at::Tensor& video, const at::Tensor& dw_weight,
    const at::Tensor& dw_bias, const at::Tensor& mean) {
  const char* op = "video_squeeze_stats_backward";
  const c10::cuda::CUDAGuard guard(video.device());
  const StatsCudaInputs in = check_cuda_inputs(op, video, dw_weight, dw_bias);
  const int64_t c = in.channels;
  const StatisticsGradients g = statistics_gradients(op, c, grad_mean, grad_var, mean, in.video.device());
  at::Tensor grad_video = at::empty_like(in.video);
  at::Tensor d_dw = at::zeros({c, 1, 3, 3}, in.dw.options()), d_dw_bias = at::zeros({c}, in.dw.options());
  check_launch(cuda::launch_video_squeeze_stats_backward(
                   in.type, g.grad_mean.data_ptr<float>(), g.grad_var.data_ptr<float>(), in.video.data_ptr(),
                   in.dw.data_ptr<float>(), in.dw_bias.data_ptr<float>(), g.mean.data_ptr<float>(),
                   grad_video.data_ptr(), d_dw.data_ptr<float>(), d_dw_bias.data_ptr<float>(), in.images,
                   static_cast<int>(c), static_cast<int>(in.height), static_cast<int>(in.width),
                   c10::cuda::getCurrentCUDAStream()),
               op);
  return {grad_video, d_dw, d_dw_bias};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_IMPL(avfused_ext, CUDA, m) {
  m.impl("video_squeeze_stats", &avfused::video_squeeze_stats_cuda);
  m.impl("video_squeeze_stats_backward", &avfused::video_squeeze_stats_backward_cuda);
}
