// CUDA host side of joint_token_attention: checks, the workspace, the launch
// (joint_token_attention_cuda.cu); the backward is the device-generic composite of joint_token_attention.h.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "../common/cuda_checks.h"
#include "joint_token_attention.h"

namespace avfused {
namespace {

at::Tensor joint_token_attention_cuda(const at::Tensor& tokens, const at::Tensor& pos, const at::Tensor& ln_weight,
                                      const at::Tensor& ln_bias, const at::Tensor& lin_weight,
                                      const at::Tensor& lin_bias, double eps) {
  const JointTokenAttentionInputs in = check_joint_token_attention_inputs(tokens, pos, ln_weight, ln_bias, lin_weight,
                                                                          lin_bias, c10::DeviceType::CUDA);
  const int padded = cuda::joint_token_attention_padded_dim(static_cast<int>(in.dim));
  TORCH_CHECK(padded > 0, "avfused_ext.joint_token_attention: token dim at most 64 on CUDA, got ", in.dim);
  TORCH_CHECK(in.batch <= 65535, "avfused_ext.joint_token_attention: at most 65535 clips per call on CUDA, got ",
              in.batch);
  check_int_range(in.length, "tokens", "joint_token_attention");
  const c10::cuda::CUDAGuard guard(in.tokens.device());
  at::Tensor u = at::empty({in.batch, in.length, padded}, in.tokens.options());
  at::Tensor out = at::empty_like(in.tokens);
  check_launch(cuda::launch_joint_token_attention_forward(
                   in.tokens.data_ptr<float>(), in.pos.data_ptr<float>(), in.ln_weight.data_ptr<float>(),
                   in.ln_bias.data_ptr<float>(), in.lin_weight.data_ptr<float>(), in.lin_bias.data_ptr<float>(),
                   u.data_ptr<float>(), out.data_ptr<float>(), static_cast<int>(in.batch),
                   static_cast<int>(in.length), static_cast<int>(in.dim), static_cast<float>(eps),
                   c10::cuda::getCurrentCUDAStream()),
               "joint_token_attention");
  return out;
}

}  // namespace
}  // namespace avfused

TORCH_LIBRARY_IMPL(avfused_ext, CUDA, m) { m.impl("joint_token_attention", &avfused::joint_token_attention_cuda); }
