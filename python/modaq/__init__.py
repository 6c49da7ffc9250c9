"""modaq: modality-aware post-training quantization for vision-language models.

Layers (each calls only downward): cli -> api -> calib / nn -> ops -> (_C | triton_kernels | reference).
"""
__version__ = "0.1.0"

from . import formats, nn, ops  # noqa: E402,F401
