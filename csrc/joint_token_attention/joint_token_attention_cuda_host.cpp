// CUDA host side of joint_token_attention: checks, workspaces, the launches (joint_token_attention_cuda.cu).
//   joint_token_attention          inference: out only (the saved tensors are dropped)
//   joint_token_attention_train    out and what the backward needs: u, mixed, lse
//   joint_token_attention_attend_backward   the attention part of the backward (the rest is ATen, in Python)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "../common/cuda_checks.h"
#include "joint_token_attention.h"

namespace avfused {
namespace {

TokenDtype token_dtype(at::ScalarType type) {
  if (type == at::kBFloat16) return TokenDtype::kBFloat16;
  if (type == at::kHalf) return TokenDtype::kFloat16;
  return TokenDtype::kFloat32;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> joint_token_attention_train_cuda(
    const at::Tensor& tokens, const at::Tensor& pos, const at::Tensor& ln_weight, const at::Tensor& ln_bias,
    const at::Tensor& lin_weight, const at::Tensor& lin_bias, double eps) {
  const JointTokenAttentionInputs in = check_joint_token_attention_inputs(
      tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, c10::DeviceType::CUDA, /*low_precision_tokens=*/true);
  TORCH_CHECK(in.dim <= kCudaAttentionWidth, "avfused_ext.joint_token_attention: token dim at most ",
              kCudaAttentionWidth, " on CUDA, got ", in.dim);
  TORCH_CHECK(in.batch <= 65535, "avfused_ext.joint_token_attention: at most 65535 clips per call on CUDA, got ",
              in.batch);
  check_int_range(in.length, "tokens", "joint_token_attention");
  const c10::cuda::CUDAGuard guard(in.tokens.device());
  const auto floats = in.tokens.options().dtype(at::kFloat);
  at::Tensor u = at::empty({in.batch, in.length, kCudaAttentionWidth}, floats);
  at::Tensor mixed = at::empty({in.batch, in.length, in.dim}, floats);
  at::Tensor lse = at::empty({in.batch, in.length}, floats);
  at::Tensor out = at::empty_like(in.tokens);
  check_launch(cuda::launch_joint_token_attention_forward(
                   in.tokens.data_ptr(), token_dtype(in.tokens.scalar_type()), in.pos.data_ptr<float>(),
                   in.ln_weight.data_ptr<float>(), in.ln_bias.data_ptr<float>(), in.lin_weight.data_ptr<float>(),
                   in.lin_bias.data_ptr<float>(), u.data_ptr<float>(), out.data_ptr(), mixed.data_ptr<float>(),
                   lse.data_ptr<float>(), static_cast<int>(in.batch), static_cast<int>(in.length),
                   static_cast<int>(in.dim), static_cast<float>(eps), c10::cuda::getCurrentCUDAStream()),
               "joint_token_attention");
  return {out, u, mixed, lse};
}

at::Tensor joint_token_attention_cuda(const at::Tensor& tokens, const at::Tensor& pos, const at::Tensor& ln_weight,
                                      const at::Tensor& ln_bias, const at::Tensor& lin_weight,
                                      const at::Tensor& lin_bias, double eps) {
  return std::get<0>(joint_token_attention_train_cuda(tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, eps));
}

at::Tensor joint_token_attention_attend_backward_cuda(const at::Tensor& u_in, const at::Tensor& d_mixed_in,
                                                      const at::Tensor& lse_in, const at::Tensor& delta_in) {
  const char* op = "avfused_ext.joint_token_attention_attend_backward";
  TORCH_CHECK(u_in.dim() == 3 && u_in.size(2) == kCudaAttentionWidth, op, ": u must be (B, L, ",
              kCudaAttentionWidth, "), got ", u_in.sizes());
  const int64_t batch = u_in.size(0), length = u_in.size(1);
  TORCH_CHECK(d_mixed_in.dim() == 3 && d_mixed_in.size(0) == batch && d_mixed_in.size(1) == length &&
                  d_mixed_in.size(2) >= 1 && d_mixed_in.size(2) <= kCudaAttentionWidth,
              op, ": d_mixed must be (", batch, ", ", length, ", D <= ", kCudaAttentionWidth, "), got ",
              d_mixed_in.sizes());
  for (const at::Tensor* t : {&lse_in, &delta_in}) {
    TORCH_CHECK(t->sizes() == at::IntArrayRef({batch, length}), op, ": lse and delta must be (", batch, ", ", length,
                "), got ", t->sizes());
  }
  for (const at::Tensor* t : {&u_in, &d_mixed_in, &lse_in, &delta_in}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_cuda() && t->device() == u_in.device(), op,
                ": expected float32 CUDA tensors on one device, got ", t->scalar_type(), " on ", t->device());
  }
  TORCH_CHECK(batch <= 65535, op, ": at most 65535 clips per call, got ", batch);
  check_int_range(length, "tokens", "joint_token_attention_attend_backward");
  const c10::cuda::CUDAGuard guard(u_in.device());
  const at::Tensor u = u_in.contiguous(), d_mixed = d_mixed_in.contiguous(), lse = lse_in.contiguous(),
                   delta = delta_in.contiguous();
  at::Tensor du = at::empty_like(u);
  check_launch(cuda::launch_joint_token_attention_attend_backward(
                   u.data_ptr<float>(), d_mixed.data_ptr<float>(), lse.data_ptr<float>(), delta.data_ptr<float>(),
                   du.data_ptr<float>(), static_cast<int>(batch), static_cast<int>(length),
                   static_cast<int>(d_mixed.size(2)), c10::cuda::getCurrentCUDAStream()),
               "joint_token_attention_attend_backward");
  return du;
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_IMPL(avfused_ext, CUDA, m) {
  m.impl("joint_token_attention", &avfused::joint_token_attention_cuda);
  m.impl("joint_token_attention_train", &avfused::joint_token_attention_train_cuda);
  m.impl("joint_token_attention_attend_backward", &avfused::joint_token_attention_attend_backward_cuda);
}
