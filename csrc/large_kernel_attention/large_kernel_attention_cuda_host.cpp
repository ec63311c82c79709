// CUDA host side of large_kernel_attention: checks, allocation, the launches (large_kernel_attention_cuda.cu).
// The backward's float32 dc7 workspace covers as many images per launch as fit in p's own bytes, so the
// backward's working memory stays within the size of what the forward saved.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../common/cuda_checks.h"
#include "large_kernel_attention.h"

namespace avfused {
namespace {

constexpr const char* kOp = "large_kernel_attention";

struct LkaCudaInputs {
  at::Tensor p, w5, b5, w7, b7, w1, b1;
  cuda::ActivationType type;
  int64_t images, channels, height, width;
};

LkaCudaInputs check_cuda_inputs(const at::Tensor& p, const at::Tensor& w5, const at::Tensor& b5, const at::Tensor& w7,
                                const at::Tensor& b7, const at::Tensor& w1, const at::Tensor& b1) {
  const int64_t channels = check_large_kernel_attention_shapes(p, w5, b5, w7, b7, w1, b1);
  TORCH_CHECK(p.is_cuda(), "avfused_ext.", kOp, ": expected CUDA tensors, got p on ", p.device());
  TORCH_CHECK(channels <= cuda::kLargeKernelAttentionMaxChannels, "avfused_ext.", kOp, ": at most ",
              cuda::kLargeKernelAttentionMaxChannels, " channels on CUDA, got ", channels);
  check_int_range(p.size(2), "height", kOp);
  check_int_range(p.size(3), "width", kOp);
  const at::Device device = p.device();
  return {p.contiguous(),
          cuda_weight(kOp, "w5", w5, device),
          cuda_weight(kOp, "b5", b5, device),
          cuda_weight(kOp, "w7", w7, device),
          cuda_weight(kOp, "b7", b7, device),
          cuda_weight(kOp, "w1", w1, device),
          cuda_weight(kOp, "b1", b1, device),
          activation_type(kOp, "p", p),
          p.size(0),
          channels,
          p.size(2),
          p.size(3)};
}

at::Tensor large_kernel_attention_cuda(const at::Tensor& p, const at::Tensor& w5, const at::Tensor& b5,
                                       const at::Tensor& w7, const at::Tensor& b7, const at::Tensor& w1,
                                       const at::Tensor& b1) {
  const c10::cuda::CUDAGuard guard(p.device());
  const LkaCudaInputs in = check_cuda_inputs(p, w5, b5, w7, b7, w1, b1);
  at::Tensor out = at::empty_like(in.p);
  check_launch(cuda::launch_large_kernel_attention_forward(
                   in.type, in.p.data_ptr(), in.w5.data_ptr<float>(), in.b5.data_ptr<float>(), in.w7.data_ptr<float>(),
                   in.b7.data_ptr<float>(), in.w1.data_ptr<float>(), in.b1.data_ptr<float>(), out.data_ptr(),
                   in.images, static_cast<int>(in.channels), static_cast<int>(in.height), static_cast<int>(in.width),
                   current_device_limits(), c10::cuda::getCurrentCUDAStream()),
               kOp);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
large_kernel_attention_backward_cuda(const at::Tensor& grad, const at::Tensor& p, const at::Tensor& w5,
                                     const at::Tensor& b5, const at::Tensor& w7, const at::Tensor& b7,
                                     const at::Tensor& w1, const at::Tensor& b1) {
  const c10::cuda::CUDAGuard guard(p.device());
  const LkaCudaInputs in = check_cuda_inputs(p, w5, b5, w7, b7, w1, b1);
  check_grad_like(grad, in.p, "p", "large_kernel_attention_backward");
  const at::Tensor grad_c = grad.contiguous();
  const int64_t c = in.channels, image_size = c * in.height * in.width;
  const at::TensorOptions weights = in.w1.options();
  at::Tensor dp = at::empty_like(in.p);
  at::Tensor d_w5 = at::zeros({c, 25}, weights), d_b5 = at::zeros({c}, weights), d_w7 = at::zeros({c, 49}, weights);
  at::Tensor d_b7 = at::zeros({c}, weights), d_w1 = at::zeros({c, c}, weights), d_b1 = at::zeros({c}, weights);
  const int64_t element = in.p.element_size();
  const int64_t chunk = std::min(in.images, std::max<int64_t>(1, in.images * element / 4));
  at::Tensor workspace = at::empty({chunk * image_size}, weights);
  const cuda::DeviceLimits limits = current_device_limits();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t n0 = 0; n0 < in.images; n0 += chunk) {
    const int64_t count = std::min(chunk, in.images - n0), offset = n0 * image_size * element;
    check_launch(cuda::launch_large_kernel_attention_backward(
                     in.type, static_cast<const char*>(grad_c.data_ptr()) + offset,
                     static_cast<const char*>(in.p.data_ptr()) + offset, in.w5.data_ptr<float>(),
                     in.b5.data_ptr<float>(), in.w7.data_ptr<float>(), in.b7.data_ptr<float>(),
                     in.w1.data_ptr<float>(), in.b1.data_ptr<float>(), static_cast<char*>(dp.data_ptr()) + offset,
                     workspace.data_ptr<float>(), d_w5.data_ptr<float>(), d_b5.data_ptr<float>(),
                     d_w7.data_ptr<float>(), d_b7.data_ptr<float>(), d_w1.data_ptr<float>(), d_b1.data_ptr<float>(),
                     count, static_cast<int>(c), static_cast<int>(in.height), static_cast<int>(in.width), limits,
                     stream),
                 "large_kernel_attention_backward");
  }
  return {dp, d_w5, d_b5, d_w7, d_b7, d_w1, d_b1};
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_IMPL(avfused_ext, CUDA, m) {
  m.impl("large_kernel_attention", &avfused::large_kernel_attention_cuda);
  m.impl("large_kernel_attention_backward", &avfused::large_kernel_attention_backward_cuda);
}
