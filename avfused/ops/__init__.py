"""Backend implementations of the hot ops (``triton_impl``, ``cuda_impl``), each a torch.library op.

Import nothing here: a backend module is imported only when ``avfused.backends`` asks for it, so the
package works without triton or the compiled extension.
"""
