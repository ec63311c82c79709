// conv_mlp: the VPM's convolutional MLP (avfused/reference.py's conv_mlp; the Python side is
// avfused/ops/conv_mlp.py).
//
// Op (schema in conv_mlp_cpu.cpp):
//   conv_mlp(x (N,C,H,W), w_in (E,C), b_in (E,), w_dw (E,9), b_dw (E,), w_out (C,E), b_out (C,)) -> (N,C,H,W)
//   h = W_in x + b_in,  a = ReLU(dw3x3(h) + b_dw),  out = W_out a + b_out   ('same' zero padding)
// CPU forward only; its autograd (avfused/ops/conv_mlp.py) recomputes through the reference.
#pragma once
