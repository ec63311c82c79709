"""The fused backends of the hot ops: one module per op, named as the reference function it implements.

    avfused.ops.audio_frontend_stem     avfused.ops.joint_token_attention
    avfused.ops.large_kernel_attention  avfused.ops.conv_mlp

Each module holds, for its op: the one input validator both backends share, the ``triton`` wrapper
(its torch.library ops ``avfused_triton::<op>`` with fakes and autograd; kernels in ``kernels/<op>.py``),
and the ``ext`` wrapper over the C++/CUDA extension's ``avfused_ext::<op>`` (sources in ``csrc/<op>/``;
fakes and autograd registered here when the extension is built). ``avfused.backends`` picks between them.

Nothing is imported here: an op module is imported when ``avfused.backends`` first asks for it; triton
itself only when a Triton kernel first runs, so the package works without triton or the extension.
"""
