// Checks shared by the CUDA tensor glue of every op (<op>_cuda_host.cpp): launch errors and int ranges.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

namespace avfused {

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "avfused_ext.", op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

// The kernels index with int: refuse sizes past its range instead of overflowing.
inline void check_int_range(int64_t value, const char* what, const char* op) {
  TORCH_CHECK(value <= std::numeric_limits<int>::max(), "avfused_ext.", op, ": ", what, " = ", value,
              " is too large for the CUDA kernel");
}

// A non-empty (N, C, H, W) batch of CUDA images whose channels and H x W pixels the kernels index with int.
inline void check_cuda_images(const at::Tensor& images, const char* name, const char* op) {
  TORCH_CHECK(images.dim() == 4, "avfused_ext.", op, ": ", name, " must be (N, C, H, W), got shape ", images.sizes());
  TORCH_CHECK(images.numel() > 0, "avfused_ext.", op, ": empty ", name, " ", images.sizes());
  TORCH_CHECK(images.is_cuda(), "avfused_ext.", op, ": expected CUDA tensors, got ", name, " on ", images.device());
  check_int_range(images.size(1), "channels", op);
  check_int_range(images.size(2) * images.size(3), "height x width", op);
}

// A backward's incoming gradient must match its saved activation in shape, dtype and device.
inline void check_grad_like(const at::Tensor& grad, const at::Tensor& like, const char* like_name, const char* op) {
  TORCH_CHECK(grad.sizes() == like.sizes() && grad.scalar_type() == like.scalar_type() && grad.device() == like.device(),
              "avfused_ext.", op, ": grad must be like ", like_name, " ", like.sizes(), " ", like.scalar_type(),
              ", got ", grad.sizes(), " ", grad.scalar_type(), " on ", grad.device());
}

}  // namespace avfused
