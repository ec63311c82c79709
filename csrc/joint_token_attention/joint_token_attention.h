// joint_token_attention: the SAAVM's joint attention (avfused/reference.py's joint_token_attention; the
// Python side is avfused/ops/joint_token_attention.py). Shared by the CPU (joint_token_attention_cpu.cpp)
// and CUDA (joint_token_attention_cuda.cu, joint_token_attention_cuda_host.cpp) halves.
//
// Ops (schemas in joint_token_attention_cpu.cpp):
//   joint_token_attention(tokens (B,L,D), pos (L,D), ln_w, ln_b, lin_w (D,D), lin_b, eps) -> (B,L,D)
//   joint_token_attention_backward(grad_out, tokens, pos, ln_w, ln_b, lin_w, lin_b, eps) -> six gradients
//
//   z = tokens + pos,  u = LayerNorm(z),  P = softmax(u u^T / sqrt(D)),  O = P u,
//   out = z + O W^T + b
// The backward (device-generic ATen) recomputes u and P (B x L x L is small: L is a few hundred tokens)
// and applies the softmax-attention gradient with q = k = v = u.
#pragma once

#ifdef CUDART_VERSION  // the CUDA launchers (joint_token_attention_cuda.cu): plain pointers and a stream
namespace avfused::cuda {

// The padded token width the attention kernel uses for `dim` values (0: dim not supported).
int joint_token_attention_padded_dim(int dim);

// u_workspace (B, L, padded_dim) is written (the normalised tokens); out (B, L, D).
cudaError_t launch_joint_token_attention_forward(const float* tokens, const float* pos, const float* ln_weight,
                                                 const float* ln_bias, const float* lin_weight,
                                                 const float* lin_bias, float* u_workspace, float* out, int batch,
                                                 int length, int dim, float eps, cudaStream_t stream);

}  // namespace avfused::cuda
#endif

#ifndef __CUDACC__  // the ATen half: input checks and the device-generic backward
#include <ATen/ATen.h>

#include <cmath>
#include <tuple>

namespace avfused {

// Validated, contiguous float32 inputs and their sizes.
struct JointTokenAttentionInputs {
  at::Tensor tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias;
  int64_t batch, length, dim;
};
inline JointTokenAttentionInputs check_joint_token_attention_inputs(const at::Tensor& tokens, const at::Tensor& pos,
                                                         const at::Tensor& ln_weight, const at::Tensor& ln_bias,
                                                         const at::Tensor& lin_weight, const at::Tensor& lin_bias,
                                                         c10::optional<c10::DeviceType> device) {
  TORCH_CHECK(tokens.dim() == 3, "avfused_ext.joint_token_attention: tokens must be (batch, tokens, dim), got shape ",
              tokens.sizes());
  const int64_t length = tokens.size(1), dim = tokens.size(2);
  TORCH_CHECK(tokens.size(0) > 0 && length > 0 && dim > 0, "avfused_ext.joint_token_attention: empty tokens ",
              tokens.sizes());
  TORCH_CHECK(pos.sizes() == at::IntArrayRef({length, dim}), "avfused_ext.joint_token_attention: pos must be (",
              length, ", ", dim, "), got ", pos.sizes());
  TORCH_CHECK(ln_weight.sizes() == at::IntArrayRef({dim}) && ln_bias.sizes() == at::IntArrayRef({dim}),
              "avfused_ext.joint_token_attention: LayerNorm weight and bias must be (", dim, ",), got ",
              ln_weight.sizes(), " and ", ln_bias.sizes());
  TORCH_CHECK(lin_weight.sizes() == at::IntArrayRef({dim, dim}) && lin_bias.sizes() == at::IntArrayRef({dim}),
              "avfused_ext.joint_token_attention: Linear weight must be (", dim, ", ", dim, ") and bias (", dim,
              ",), got ", lin_weight.sizes(), " and ", lin_bias.sizes());
  for (const at::Tensor* t : {&tokens, &pos, &ln_weight, &ln_bias, &lin_weight, &lin_bias}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, "avfused_ext.joint_token_attention: expected float32 tensors, got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == tokens.device(),
                "avfused_ext.joint_token_attention: all tensors must be on one device, got ", tokens.device(), " and ",
                t->device());
    if (device.has_value()) {
      TORCH_CHECK(t->device().type() == *device, "avfused_ext.joint_token_attention: expected ",
                  c10::DeviceTypeName(*device), " tensors, got one on ", t->device());
    }
  }
  JointTokenAttentionInputs in;
  in.tokens = tokens.contiguous();
  in.pos = pos.contiguous();
  in.ln_weight = ln_weight.contiguous();
  in.ln_bias = ln_bias.contiguous();
  in.lin_weight = lin_weight.contiguous();
  in.lin_bias = lin_bias.contiguous();
  in.batch = tokens.size(0);
  in.length = length;
  in.dim = dim;
  return in;
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
joint_token_attention_backward_composite(const at::Tensor& grad_out, const at::Tensor& tokens, const at::Tensor& pos,
                                   const at::Tensor& ln_weight, const at::Tensor& ln_bias,
                                   const at::Tensor& lin_weight, const at::Tensor& lin_bias, double eps) {
  const JointTokenAttentionInputs in =
      check_joint_token_attention_inputs(tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, c10::nullopt);
  TORCH_CHECK(grad_out.sizes() == in.tokens.sizes(), "avfused_ext.joint_token_attention_backward: grad_out must be ",
              in.tokens.sizes(), ", got ", grad_out.sizes());
  const at::Tensor g = grad_out.to(at::kFloat).contiguous();
  const int64_t dim = in.dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  const at::Tensor z = in.tokens + in.pos;
  const auto normed = at::native_layer_norm(z, {dim}, in.ln_weight, in.ln_bias, eps);
  const at::Tensor& u = std::get<0>(normed);
  const at::Tensor probs = at::softmax(at::matmul(u, u.transpose(1, 2)).mul_(scale), -1);  // (B, L, L)
  const at::Tensor mixed = at::matmul(probs, u);                                          // (B, L, D)

  const at::Tensor grad_lin_weight = at::matmul(g.reshape({-1, dim}).t(), mixed.reshape({-1, dim}));
  const at::Tensor grad_lin_bias = g.sum({0, 1});
  const at::Tensor grad_mixed = at::matmul(g, in.lin_weight);                        // dL/dO
  const at::Tensor grad_probs = at::matmul(grad_mixed, u.transpose(1, 2));           // dL/dP
  const at::Tensor row_dot = (grad_mixed * mixed).sum(-1, /*keepdim=*/true);          // sum_j P_ij dP_ij
  const at::Tensor grad_scores = probs * (grad_probs - row_dot);                     // dL/dS
  // u is query, key and value at once: three paths back to it
  const at::Tensor grad_u = at::matmul(probs.transpose(1, 2), grad_mixed) +
                            (at::matmul(grad_scores, u) + at::matmul(grad_scores.transpose(1, 2), u)).mul_(scale);
  const auto ln_grads = at::native_layer_norm_backward(grad_u, z, {dim}, std::get<1>(normed), std::get<2>(normed),
                                                       in.ln_weight, in.ln_bias, {true, true, true});
  const at::Tensor grad_z = std::get<0>(ln_grads) + g;  // the residual
  return {grad_z, grad_z.sum(0), std::get<1>(ln_grads), std::get<2>(ln_grads), grad_lin_weight, grad_lin_bias};
}

}  // namespace avfused
#endif  // __CUDACC__
