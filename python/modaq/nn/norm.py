"""RMSNorm that stands in for a LayerNorm whose input stream was centered offline.

LayerNorm(x) = (x - mean(x)) / sqrt(var(x) + eps) * g + b.  When every module that writes the
residual stream produces zero-mean outputs (calib.rotation centers them), mean(x) = 0 and
var(x) = mean(x^2), so LayerNorm(x) = RMSNorm(x) * g + b exactly; with g and b folded into the
Linears that read the norm, what remains is this module with a unit weight.  Unlike LayerNorm it
commutes with any orthogonal Q of the channels (RMSNorm(x Q) = RMSNorm(x) Q for a unit weight),
which is what lets a rotation of the residual stream fold into the weights.
"""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim, in fp32, returned in x.dtype.

    x: [..., dim] float16 / bfloat16 / float32; weight: [dim] (a norm "producer" of the
    calibrator can still absorb per-channel scales into it).
    """

    def __init__(self, dim: int, eps: float = 1e-6, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        if not eps > 0:
            raise ValueError(f"eps: expected a positive float, got {eps!r}")
        self.dim, self.eps = dim, float(eps)
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)

    def norm_config(self) -> dict:
        """JSON-able constructor arguments (load_quantized rebuilds the module from them)."""
        return {"type": "rms_norm", "dim": self.dim, "eps": self.eps}

    @classmethod
    def from_config(cls, cfg: dict, dtype: torch.dtype = torch.float32, device=None) -> "RMSNorm":
        if cfg.get("type") != "rms_norm":
            raise ValueError(f"cfg: expected a norm config of type 'rms_norm', got {cfg.get('type')!r}")
        return cls(int(cfg["dim"]), float(cfg["eps"]), dtype=dtype, device=device)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"
