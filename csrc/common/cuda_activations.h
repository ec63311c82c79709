// Activation element types of the VPM ops' CUDA kernels (large_kernel_attention, conv_mlp): float32,
// float16 and bfloat16 activations are loaded into float, computed and accumulated in float and stored
// rounded once; weights and weight gradients stay float32. The enum and the limits are torch-free (the .cu
// files and the host side share them); the device helpers are nvcc's, the ATen helpers the host side's.
#pragma once

#include <cuda_runtime.h>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace avfused::cuda {

enum class ActivationType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// What the launchers size their grids and shared memory by (the host reads them from the device's properties).
struct DeviceLimits {
  int multiprocessors;
  size_t shared_bytes_per_block;  // with the opt-in past 48 KB
};

#ifdef __CUDACC__
// Read-only loads (the tensor is not written during the kernel) ...
__device__ __forceinline__ float load_float(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_float(const __half* p) { return __half2float(__ldg(p)); }
__device__ __forceinline__ float load_float(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }
// ... and plain conversions (for a tensor the kernel also writes).
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// The sum of v over the 32 lanes of a warp, in lane 0 (every lane must call it).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// launch(T{}) for the element type of `type`: one instantiation of a launcher per activation type.
template <class Launch>
cudaError_t dispatch_activation(ActivationType type, Launch&& launch) {
  switch (type) {
    case ActivationType::kFloat32:
      return launch(float{});
    case ActivationType::kFloat16:
      return launch(__half{});
    case ActivationType::kBFloat16:
      return launch(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// Tiles of the VPM kernels: square, `size` a side, one block each (per channel too where the kernel is
// depthwise); the largest side that gives at least `min_blocks` blocks and fits its shared memory, else the
// smallest that fits (size 0: none fits); of sides that cut the map into as many tiles, the smallest (a
// tile past a small map's edge is wasted work).
struct TileGrid {
  int size, tiles_x, tiles;  // side, tiles across, tiles per image
};
inline TileGrid tile_grid(int size, int height, int width) {
  const int tiles_x = (width + size - 1) / size, tiles_y = (height + size - 1) / size;
  return {size, tiles_x, tiles_x * tiles_y};
}
template <class Bytes>
inline TileGrid choose_tile(long long blocks_per_tile, int height, int width, long long min_blocks,
                            size_t max_bytes, Bytes&& bytes) {
  const int sizes[] = {16, 8, 4};
  TileGrid chosen{0, 0, 0};
  for (int size : sizes) {
    if (bytes(size) > max_bytes) continue;
    const TileGrid grid = tile_grid(size, height, width);
    if (chosen.size != 0 && grid.tiles != chosen.tiles && blocks_per_tile * chosen.tiles >= min_blocks) break;
    chosen = grid;
  }
  return chosen;
}

// Dynamic shared memory past the default 48 KB needs the kernel's opt-in.
template <class Kernel>
cudaError_t allow_shared_bytes(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}
#endif

}  // namespace avfused::cuda

#ifndef __CUDACC__  // the host side (<op>_cuda_host.cpp)
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

namespace avfused {

// The kernels' element type for `t`'s dtype (float32, float16 or bfloat16).
inline cuda::ActivationType activation_type(const char* op, const char* name, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return cuda::ActivationType::kFloat32;
    case at::kHalf:
      return cuda::ActivationType::kFloat16;
    case at::kBFloat16:
      return cuda::ActivationType::kBFloat16;
    default:
      TORCH_CHECK(false, "avfused_ext.", op, ": ", name, " must be float32, float16 or bfloat16 on CUDA, got ",
                  t.scalar_type());
  }
}

// A float32 weight on `device`, contiguous.
inline at::Tensor cuda_weight(const char* op, const char* name, const at::Tensor& t, const at::Device& device) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, "avfused_ext.", op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.device() == device, "avfused_ext.", op, ": all tensors must be on ", device, ", got ", name, " on ",
              t.device());
  return t.contiguous();
}

// The (C,) float32 vectors a batch-statistics backward takes (grad_mean, grad_var, mean), checked and on `device`.
struct StatisticsGradients {
  at::Tensor grad_mean, grad_var, mean;
};
inline StatisticsGradients statistics_gradients(const char* op, int64_t channels, const at::Tensor& grad_mean,
                                                const at::Tensor& grad_var, const at::Tensor& mean,
                                                const at::Device& device) {
  const char* names[] = {"grad_mean", "grad_var", "mean"};
  const at::Tensor* vectors[] = {&grad_mean, &grad_var, &mean};
  for (int i = 0; i < 3; ++i) {
    TORCH_CHECK(vectors[i]->sizes() == at::IntArrayRef({channels}), "avfused_ext.", op, ": ", names[i], " must be (",
                channels, "), got ", vectors[i]->sizes());
  }
  return {cuda_weight(op, "grad_mean", grad_mean, device), cuda_weight(op, "grad_var", grad_var, device),
          cuda_weight(op, "mean", mean, device)};
}

// The current device's multiprocessors and shared memory per block (with the opt-in).
inline cuda::DeviceLimits current_device_limits() {
  const cudaDeviceProp* properties = at::cuda::getCurrentDeviceProperties();
  return {properties->multiProcessorCount, properties->sharedMemPerBlockOptin};
}

}  // namespace avfused
#endif  // __CUDACC__
