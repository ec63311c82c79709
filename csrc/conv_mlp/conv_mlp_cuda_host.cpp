// CUDA host side of conv_mlp: checks, allocation, the launches (conv_mlp_cuda.cu).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <tuple>

#include "../common/cuda_checks.h"
#include "conv_mlp.h"

namespace avfused {
namespace {

constexpr const char* kOp = "conv_mlp";

struct MlpCudaInputs {
  at::Tensor x, w_in, b_in, w_dw, b_dw, w_out, b_out;  // b_out undefined in the backward
  cuda::ActivationType type;
  int64_t images, channels, expanded, height, width;
};

MlpCudaInputs check_cuda_inputs(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in,
                                const at::Tensor& w_dw, const at::Tensor& b_dw, const at::Tensor& w_out,
                                const at::Tensor& b_out) {
  const auto [channels, expanded] = check_conv_mlp_shapes(x, w_in, b_in, w_dw, b_dw, w_out, b_out);
  TORCH_CHECK(x.is_cuda(), "avfused_ext.", kOp, ": expected CUDA tensors, got x on ", x.device());
  TORCH_CHECK(channels <= cuda::kConvMlpMaxChannels, "avfused_ext.", kOp, ": at most ", cuda::kConvMlpMaxChannels,
              " channels on CUDA, got ", channels);
  check_int_range(expanded * 9, "expanded channels x 9", kOp);
  check_int_range(x.size(2), "height", kOp);
  check_int_range(x.size(3), "width", kOp);
  const at::Device device = x.device();
  return {x.contiguous(),
          cuda_weight(kOp, "w_in", w_in, device),
          cuda_weight(kOp, "b_in", b_in, device),
          cuda_weight(kOp, "w_dw", w_dw, device),
          cuda_weight(kOp, "b_dw", b_dw, device),
          cuda_weight(kOp, "w_out", w_out, device),
          b_out.defined() ? cuda_weight(kOp, "b_out", b_out, device) : at::Tensor(),
          activation_type(kOp, "x", x),
          x.size(0),
          channels,
          expanded,
          x.size(2),
          x.size(3)};
}

at::Tensor conv_mlp_cuda(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_dw,
                         const at::Tensor& b_dw, const at::Tensor& w_out, const at::Tensor& b_out) {
  const c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(b_out.defined(), "avfused_ext.conv_mlp: b_out is required");
  const MlpCudaInputs in = check_cuda_inputs(x, w_in, b_in, w_dw, b_dw, w_out, b_out);
  at::Tensor out = at::empty_like(in.x);
  check_launch(cuda::launch_conv_mlp_forward(in.type, in.x.data_ptr(), in.w_in.data_ptr<float>(),
                                             in.b_in.data_ptr<float>(), in.w_dw.data_ptr<float>(),
                                             in.b_dw.data_ptr<float>(), in.w_out.data_ptr<float>(),
                                             in.b_out.data_ptr<float>(), out.data_ptr(), in.images,
                                             static_cast<int>(in.channels), static_cast<int>(in.expanded),
                                             static_cast<int>(in.height), static_cast<int>(in.width),
                                             current_device_limits(), c10::cuda::getCurrentCUDAStream()),
               kOp);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv_mlp_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in,
    const at::Tensor& w_dw, const at::Tensor& b_dw, const at::Tensor& w_out) {
  const c10::cuda::CUDAGuard guard(x.device());
  const MlpCudaInputs in = check_cuda_inputs(x, w_in, b_in, w_dw, b_dw, w_out, at::Tensor());
  check_grad_like(grad, in.x, "x", "conv_mlp_backward");
  const at::Tensor grad_c = grad.contiguous();
  const int64_t c = in.channels, e = in.expanded;
  const at::TensorOptions weights = in.w_in.options();
  at::Tensor dx = at::empty_like(in.x);
  at::Tensor d_w_in = at::zeros({e, c}, weights), d_b_in = at::zeros({e}, weights);
  at::Tensor d_w_dw = at::zeros({e, 9}, weights), d_b_dw = at::zeros({e}, weights);
  at::Tensor d_w_out = at::zeros({c, e}, weights), d_b_out = at::zeros({c}, weights);
  check_launch(cuda::launch_conv_mlp_backward(
                   in.type, grad_c.data_ptr(), in.x.data_ptr(), in.w_in.data_ptr<float>(), in.b_in.data_ptr<float>(),
                   in.w_dw.data_ptr<float>(), in.b_dw.data_ptr<float>(), in.w_out.data_ptr<float>(), dx.data_ptr(),
                   d_w_in.data_ptr<float>(), d_b_in.data_ptr<float>(), d_w_dw.data_ptr<float>(),
                   d_b_dw.data_ptr<float>(), d_w_out.data_ptr<float>(), d_b_out.data_ptr<float>(), in.images,
                   static_cast<int>(c), static_cast<int>(e), static_cast<int>(in.height), static_cast<int>(in.width),
                   current_device_limits(), c10::cuda::getCurrentCUDAStream()),
               "conv_mlp_backward");
  return {dx, d_w_in, d_b_in, d_w_dw, d_b_dw, d_w_out, d_b_out};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_IMPL(avfused_ext, CUDA, m) {
  m.impl("conv_mlp", &avfused::conv_mlp_cuda);
  m.impl("conv_mlp_backward", &avfused::conv_mlp_backward_cuda);
}
