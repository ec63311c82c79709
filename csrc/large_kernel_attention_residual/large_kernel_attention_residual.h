// large_kernel_attention_residual: the folded VPM's attention branch with its residual (avfused/reference.py's
// large_kernel_attention_residual; the Python side is avfused/ops/large_kernel_attention_residual.py, the
// folding avfused/inference.py).
//
// Op (schema in large_kernel_attention_residual_cpu.cpp):
//   large_kernel_attention_residual(x (N,C,H,W), w_in (C,C), b_in (C,), w5 (C,25), b5 (C,), w7 (C,49), b7 (C,),
//                                   w1 (C,C), b1 (C,), w_out (C,C)) -> (N,C,H,W)
//   (the weights also in their convolution shapes: (C,C,1,1), (C,1,5,5), (C,1,7,7))
//   p = ReLU(w_in x + b_in),  out = x + w_out large_kernel_attention(p, w5, b5, w7, b7, w1, b1)
// CPU forward only (inference); its autograd (the Python side) recomputes through the reference.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace avfused {

// C of a valid call: x (N, C, H, W) non-empty; w_in, w1, w_out (C, C) or (C, C, 1, 1), w5 (C, 25) or
// (C, 1, 5, 5), w7 (C, 49) or (C, 1, 7, 7), biases (C,). Dtype and device are checked apart.
inline int64_t check_large_kernel_attention_residual_shapes(const at::Tensor& x, const at::Tensor& w_in,
                                                            const at::Tensor& b_in, const at::Tensor& w5,
                                                            const at::Tensor& b5, const at::Tensor& w7,
                                                            const at::Tensor& b7, const at::Tensor& w1,
                                                            const at::Tensor& b1, const at::Tensor& w_out) {
  const char* op = "avfused_ext.large_kernel_attention_residual";
  TORCH_CHECK(x.dim() == 4, op, ": x must be (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.numel() > 0, op, ": empty x ", x.sizes());
  const int64_t c = x.size(1);
  using Shapes = std::vector<std::vector<int64_t>>;
  const Shapes square = {{c, c}, {c, c, 1, 1}}, bias = {{c}};
  const std::pair<const at::Tensor*, Shapes> expected[] = {
      {&w_in, square}, {&b_in, bias}, {&w5, {{c, 25}, {c, 1, 5, 5}}}, {&b5, bias}, {&w7, {{c, 49}, {c, 1, 7, 7}}},
      {&b7, bias},     {&w1, square}, {&b1, bias},                    {&w_out, square}};
  const char* names[] = {"w_in", "b_in", "w5", "b5", "w7", "b7", "w1", "b1", "w_out"};
  for (int i = 0; i < 9; ++i) {
    const Shapes& shapes = expected[i].second;
    const bool fits = std::any_of(shapes.begin(), shapes.end(), [&](const std::vector<int64_t>& shape) {
      return expected[i].first->sizes() == at::IntArrayRef(shape);
    });
    TORCH_CHECK(fits, op, ": ", names[i], " must be ", at::IntArrayRef(shapes[0]),
                shapes.size() > 1 ? " (or its convolution shape)" : "", ", got ", expected[i].first->sizes());
  }
  return c;
}

}  // namespace avfused
