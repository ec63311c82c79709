// Checks shared by the CUDA tensor glue of every op (<op>_cuda_host.cpp): launch errors and int ranges.
#pragma once

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

}  // namespace avfused
