// joint_token_attention: the SAAVM's joint attention (avfused/reference.py's joint_token_attention; the
// Python side is avfused/ops/joint_token_attention.py). Shared by the CPU (joint_token_attention_cpu.cpp)
// and CUDA (joint_token_attention_cuda.cu, joint_token_attention_cuda_host.cpp) halves.
//
// Ops (schemas in joint_token_attention_cpu.cpp):
//   joint_token_attention(tokens (B,L,D), pos (L,D), ln_w, ln_b, lin_w (D,D), lin_b, eps) -> (B,L,D)
//   joint_token_attention_backward(grad_out, tokens, pos, ln_w, ln_b, lin_w, lin_b, eps) -> six gradients
//   CUDA only, for training (the Python autograd of avfused/ops/joint_token_attention.py chains them):
//   joint_token_attention_train(tokens, ...) -> (out, u (B,L,64), mixed (B,L,D), lse (B,L))
//   joint_token_attention_attend_backward(u, d_mixed, lse, delta) -> du (B,L,64)
//
//   z = tokens + pos,  u = LayerNorm(z),  P = softmax(u u^T / sqrt(D)),  O = P u,
//   out = z + O W^T + b
// The CPU backward (device-generic ATen) recomputes u and P (B x L x L is small: L is a few hundred
// tokens) and applies the softmax-attention gradient with q = k = v = u; on CUDA the training forward
// saves u, mixed and lse and the attention part of the backward is two flash-style kernels.
#pragma once

namespace avfused {

constexpr int kCudaAttentionWidth = 64;  // the CUDA kernels' padded token width: D <= 64 there
enum class TokenDtype { kFloat32, kBFloat16, kFloat16 };  // the dtype of tokens and out on CUDA

}  // namespace avfused

#ifdef CUDART_VERSION  // the CUDA launchers (joint_token_attention_cuda.cu): plain pointers and a stream
namespace avfused::cuda {

// u_workspace (B, L, 64) float32 receives the normalised tokens; out (B, L, D) in tokens' dtype; mixed
// (B, L, D) float32 the attention output and lse (B, L) float32 its row log-sum-exp (for the backward).
cudaError_t launch_joint_token_attention_forward(const void* tokens, TokenDtype dtype, const float* pos,
                                                 const float* ln_weight, const float* ln_bias,
                                                 const float* lin_weight, const float* lin_bias, float* u_workspace,
                                                 void* out, float* mixed, float* lse, int batch, int length, int dim,
                                                 float eps, cudaStream_t stream);

// du (B, L, 64) = the gradient reaching u through softmax(scale u u^T) u, from d_mixed (B, L, D),
// lse (B, L) and delta = rowsum(d_mixed * mixed) (B, L); all float32.
cudaError_t launch_joint_token_attention_attend_backward(const float* u, const float* d_mixed, const float* lse,
                                                         const float* delta, float* du, int batch, int length,
                                                         int dim, cudaStream_t stream);

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
                                                         c10::optional<c10::DeviceType> device,
                                                         bool low_precision_tokens = false) {
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
  const auto type = tokens.scalar_type();
  TORCH_CHECK(type == at::kFloat || (low_precision_tokens && (type == at::kBFloat16 || type == at::kHalf)),
              "avfused_ext.joint_token_attention: expected float32", low_precision_tokens ? " (or bf16 / fp16)" : "",
              " tokens, got ", type);
  for (const at::Tensor* t : {&pos, &ln_weight, &ln_bias, &lin_weight, &lin_bias}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, "avfused_ext.joint_token_attention: expected float32 tensors, got ",
                t->scalar_type());
  }
  for (const at::Tensor* t : {&tokens, &pos, &ln_weight, &ln_bias, &lin_weight, &lin_bias}) {
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
  const at::Tensor grad_lin_bias = g.sum(at::IntArrayRef{0, 1});  // torch 2.11: a bare {0, 1} is ambiguous
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
