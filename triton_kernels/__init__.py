"""Triton kernels of modaq, installed as modaq.triton_kernels.

Each module holds one kernel family with a launcher that assumes validated inputs (the ops
in modaq.ops validate).  They also run on CPU tensors under TRITON_INTERPRET=1, which the
CPU test suite uses at small sizes.
"""
