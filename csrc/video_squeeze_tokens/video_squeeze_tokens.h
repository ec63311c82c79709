// video_squeeze_tokens: the SAAVM's video squeeze straight into tokens (avfused/reference.py's
// video_squeeze_tokens; the Python side is avfused/ops/video_squeeze_tokens.py).
//
// Op (schema in video_squeeze_tokens_cpu.cpp):
//   video_squeeze_tokens(video (N,C,H,W), dw_weight (C,1,3,3), dw_bias (C,), weight (1,C), bias (1,),
//                        int frames T, int window) -> (N / T, T R Q, window^2),  R = ceil(H / window),
//                        Q = ceil(W / window)
//   map = bias + sum_c weight[c] ReLU(dw3x3_c(video_c) + dw_bias[c])   ('same' zero padding)
//   token r Q + q of image n holds map[r window + i][q window + j] at i window + j (zero past the map)
// Images n = b T + t of clip b: image n's R Q tokens follow one another from token n R Q on.
// CPU forward only; its autograd (avfused/ops/video_squeeze_tokens.py) recomputes through the reference.
#pragma once
