// video_squeeze_tokens: the SAAVM's video squeeze straight into tokens (avfused/reference.py's
// video_squeeze_tokens; the Python side is avfused/ops/video_squeeze_tokens.py).
//
// Ops (schemas in video_squeeze_tokens_cpu.cpp):
//   video_squeeze_tokens(video (N,C,H,W), dw_weight (C,1,3,3), dw_bias (C,), weight (1,C), bias (1,),
//                        int frames T, int window) -> (N / T, T R Q, window^2),  R = ceil(H / window),
//                        Q = ceil(W / window)
//   video_squeeze_tokens_backward(grad_tokens, video, dw_weight, dw_bias, weight, bias, frames, window)
//                        -> (d_video, d_dw_weight, d_dw_bias, d_weight, d_bias)
//
//   z_c = dw3x3_c(video_c) + dw_bias[c]   ('same' zero padding),  map = bias + sum_c weight[c] ReLU(z_c)
//   token r Q + q of image n holds map[r window + i][q window + j] at i window + j (zero past the map)
// Images n = b T + t of clip b: image n's R Q tokens follow one another from token n R Q on.
// Backward: d_map = the token gradients put back on the map, d_bias = sum d_map, d_weight[c] = <d_map,
// ReLU(z_c)>, dz_c = weight[c] d_map [z_c > 0], d_dw_bias = sum dz, d_dw_weight = dz (x) video (a
// correlation), d_video = dw3x3^T(dz). Both passes keep only the inputs and recompute z one channel plane
// of one image at a time: the (N, C, H, W) hidden layer never reaches memory.
#pragma once
