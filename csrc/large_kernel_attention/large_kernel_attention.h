// large_kernel_attention: the VPM's gate by large-kernel context (avfused/reference.py's
// large_kernel_attention; the Python side is avfused/ops/large_kernel_attention.py). Shared by the CPU
// (large_kernel_attention_cpu.cpp) and CUDA (large_kernel_attention_cuda.cu, _cuda_host.cpp) halves.
//
// Ops (schemas in large_kernel_attention_cpu.cpp):
//   large_kernel_attention(p (N,C,H,W), w5 (C,25), b5 (C,), w7 (C,49), b7 (C,), w1 (C,C), b1 (C,)) -> (N,C,H,W)
//   large_kernel_attention_backward(grad (N,C,H,W), p, w5, b5, w7, b7, w1, b1) -> (dp, dw5, db5, dw7, db7, dw1, db1)
//
//   c5 = dw5x5(p) + b5,  c7 = dw7x7_dilation3(c5) + b7,  g = W1 c7 + b1,  out = p * g   ('same' zero padding)
// Backward: dp = grad g + dw5x5^T(dc5),  dg = grad p,  dW1 = dg c7^T,  dc7 = W1^T dg,  dc5 = dw7x7^T(dc7),
// dw7 = dc7 (x) c5, dw5 = dc5 (x) p (correlations), the biases the sums of dg, dc7, dc5. Both halves keep
// only p (and the weights) from the forward and recompute c5 and c7 per image (CPU) or tile (CUDA).
#pragma once

#ifdef CUDART_VERSION  // the CUDA launchers (large_kernel_attention_cuda.cu): plain pointers and a stream
#include "../common/cuda_activations.h"

namespace avfused::cuda {

// Channels the CUDA kernels take (their per-tile shared memory holds every channel of a tile).
constexpr int kLargeKernelAttentionMaxChannels = 512;

// out (N, C, H, W) in p's type; weights float32 (w5 (C, 25), w7 (C, 49), w1 (C, C)).
cudaError_t launch_large_kernel_attention_forward(ActivationType type, const void* p, const float* w5, const float* b5,
                                                  const float* w7, const float* b7, const float* w1, const float* b1,
                                                  void* out, long long images, int channels, int height, int width,
                                                  DeviceLimits limits, cudaStream_t stream);

// dp (N, C, H, W) in p's type is written; the float32 gradients d_w5 .. d_b1 are added to (zero them
// first); workspace holds `images` x C x H x W floats (the 1x1's input gradient dc7).
cudaError_t launch_large_kernel_attention_backward(ActivationType type, const void* grad, const void* p,
                                                   const float* w5, const float* b5, const float* w7, const float* b7,
                                                   const float* w1, const float* b1, void* dp, float* workspace,
                                                   float* d_w5, float* d_b5, float* d_w7, float* d_b7, float* d_w1,
                                                   float* d_b1, long long images, int channels, int height, int width,
                                                   DeviceLimits limits, cudaStream_t stream);

}  // namespace avfused::cuda
#endif

#ifndef __CUDACC__  // the ATen half: the shape checks both halves share
#include <ATen/ATen.h>

namespace avfused {

// C of a valid call (p (N, C, H, W) non-empty, the weights flattened); the device and dtype rules are each
// half's own.
inline int64_t check_large_kernel_attention_shapes(const at::Tensor& p, const at::Tensor& w5, const at::Tensor& b5,
                                                   const at::Tensor& w7, const at::Tensor& b7, const at::Tensor& w1,
                                                   const at::Tensor& b1) {
  const char* op = "avfused_ext.large_kernel_attention";
  TORCH_CHECK(p.dim() == 4, op, ": p must be (N, C, H, W), got shape ", p.sizes());
  TORCH_CHECK(p.numel() > 0, op, ": empty p ", p.sizes());
  const int64_t c = p.size(1);
  const std::pair<const at::Tensor*, std::vector<int64_t>> expected[] = {
      {&w5, {c, 25}}, {&b5, {c}}, {&w7, {c, 49}}, {&b7, {c}}, {&w1, {c, c}}, {&b1, {c}}};
  const char* names[] = {"w5", "b5", "w7", "b7", "w1", "b1"};
  for (int i = 0; i < 6; ++i) {
    TORCH_CHECK(expected[i].first->sizes() == at::IntArrayRef(expected[i].second), op, ": ", names[i], " must be ",
                at::IntArrayRef(expected[i].second), ", got ", expected[i].first->sizes());
  }
  return c;
}

}  // namespace avfused
#endif  // __CUDACC__
