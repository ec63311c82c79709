// video_stem: the folded video stem (avfused/reference.py's video_stem; the Python side is
// avfused/ops/video_stem.py, the folding avfused/inference.py).
//
// Op (schema in video_stem_cpu.cpp):
//   video_stem(frames (N,I,H,W), weight (C,I,K,K), bias (C,), border (I,)) -> (N,C,Hp,Wp)
//   conv = Conv2d(frames padded by K/2 with border[i] in channel i, weight, bias, stride 2)  (Ho x Wo)
//   out  = MaxPool2d(ReLU(conv), 3, stride 2, padding 1)                                     (Hp x Wp)
// K odd; Ho = (H - 1) / 2 + 1, Hp = (Ho - 1) / 2 + 1 (likewise for the width).
// CPU forward only; its autograd (avfused/ops/video_stem.py) recomputes through the reference.
#pragma once

#include <cstdint>

namespace avfused::video_stem {

constexpr int64_t kStride = 2;  // of the convolution and of the pooling
constexpr int64_t kPool = 3;    // pooling window (padding 1)

// Output side of the stride-2 'same' convolution, and of the pooling after it.
inline int64_t conv_size(int64_t input) { return (input - 1) / kStride + 1; }
inline int64_t pool_size(int64_t conv) { return (conv - 1) / kStride + 1; }

}  // namespace avfused::video_stem
