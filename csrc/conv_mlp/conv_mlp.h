// conv_mlp: the VPM's convolutional MLP (avfused/reference.py's conv_mlp; the Python side is
// avfused/ops/conv_mlp.py). Shared by the CPU (conv_mlp_cpu.cpp) and CUDA (conv_mlp_cuda.cu,
// conv_mlp_cuda_host.cpp) halves.
//
// Ops (schemas in conv_mlp_cpu.cpp):
//   conv_mlp(x (N,C,H,W), w_in (E,C), b_in (E,), w_dw (E,9), b_dw (E,), w_out (C,E), b_out (C,)) -> (N,C,H,W)
//   conv_mlp_backward(grad (N,C,H,W), x, w_in, b_in, w_dw, b_dw, w_out) -> (dx, dw_in, db_in, dw_dw, db_dw,
//                                                                          dw_out, db_out)
//
//   h = W_in x + b_in,  pre = dw3x3(h) + b_dw,  a = ReLU(pre),  out = W_out a + b_out   ('same' zero padding)
// Backward: dW_out = grad a^T, dpre = (W_out^T grad) [pre > 0], dw_dw = dpre (x) h, dh = dw3x3^T(dpre),
// dW_in = dh x^T, dx = W_in^T dh, the biases the sums of grad, dpre, dh. Both halves keep only x (and the
// weights) from the forward and recompute h and pre a few expanded channels at a time, so the (N, E, H, W)
// expansion never exists whole.
#pragma once

#ifdef CUDART_VERSION  // the CUDA launchers (conv_mlp_cuda.cu): plain pointers and a stream
#include "../common/cuda_activations.h"

namespace avfused::cuda {

// Channels the CUDA kernels take (their per-tile shared memory holds every channel of a tile); any E.
constexpr int kConvMlpMaxChannels = 256;

// out (N, C, H, W) in x's type; weights float32 (w_in (E, C), w_dw (E, 9), w_out (C, E)).
cudaError_t launch_conv_mlp_forward(ActivationType type, const void* x, const float* w_in, const float* b_in,
                                    const float* w_dw, const float* b_dw, const float* w_out, const float* b_out,
                                    void* out, long long images, int channels, int expanded, int height, int width,
                                    DeviceLimits limits, cudaStream_t stream);

// dx (N, C, H, W) in x's type is written; the float32 gradients d_w_in .. d_b_out are added to (zero them
// first).
cudaError_t launch_conv_mlp_backward(ActivationType type, const void* grad, const void* x, const float* w_in,
                                     const float* b_in, const float* w_dw, const float* b_dw, const float* w_out,
                                     void* dx, float* d_w_in, float* d_b_in, float* d_w_dw, float* d_b_dw,
                                     float* d_w_out, float* d_b_out, long long images, int channels, int expanded,
                                     int height, int width, DeviceLimits limits, cudaStream_t stream);

}  // namespace avfused::cuda
#endif

#ifndef __CUDACC__  // the ATen half: the shape checks both halves share
#include <ATen/ATen.h>

#include <utility>

namespace avfused {

// (C, E) of a valid call (x (N, C, H, W) non-empty, the weights flattened; w_out and b_out may be absent
// (undefined) for the backward); the device and dtype rules are each half's own.
inline std::pair<int64_t, int64_t> check_conv_mlp_shapes(const at::Tensor& x, const at::Tensor& w_in,
                                                         const at::Tensor& b_in, const at::Tensor& w_dw,
                                                         const at::Tensor& b_dw, const at::Tensor& w_out,
                                                         const at::Tensor& b_out) {
  const char* op = "avfused_ext.conv_mlp";
  TORCH_CHECK(x.dim() == 4, op, ": x must be (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.numel() > 0, op, ": empty x ", x.sizes());
  TORCH_CHECK(w_in.dim() == 2 && w_in.size(0) > 0, op, ": w_in must be (E, C), got shape ", w_in.sizes());
  const int64_t c = x.size(1), e = w_in.size(0);
  const std::pair<const at::Tensor*, std::vector<int64_t>> expected[] = {
      {&w_in, {e, c}}, {&b_in, {e}}, {&w_dw, {e, 9}}, {&b_dw, {e}}, {&w_out, {c, e}}, {&b_out, {c}}};
  const char* names[] = {"w_in", "b_in", "w_dw", "b_dw", "w_out", "b_out"};
  for (int i = 0; i < 6; ++i) {
    if (!expected[i].first->defined()) continue;
    TORCH_CHECK(expected[i].first->sizes() == at::IntArrayRef(expected[i].second), op, ": ", names[i], " must be ",
                at::IntArrayRef(expected[i].second), ", got ", expected[i].first->sizes());
  }
  return {c, e};
}

}  // namespace avfused
#endif  // __CUDACC__
