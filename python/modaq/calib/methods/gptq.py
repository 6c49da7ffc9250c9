"""GPTQ (Frantar et al.): quantize a Linear's weight column by column, compensating each
column's rounding error on the not-yet-quantized columns through the inverse Hessian of the
layer loss ||X W^T - X Q^T||^2, H = X^T X (+ damping).  With modality weighting the Hessian is
a_v H_v + a_t H_t (modality.py; VLMQ-style importance-weighted Hessian).

Weight-only formats: asymmetric groups along K whose scale / zero come from the group's
error-updated weights when the sweep reaches it (GPTQ's `groupsize`); W-A formats: symmetric
per-output-channel scales from the original weights.  The result is the exact logical tensor
formats.py defines (fp16 group scales, uint8 zeros / int8 symmetric codes).
"""
from __future__ import annotations

import torch

from ... import formats
from .base import BlockJob, LinearPlan, Method


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) I)^-1, raising the damping if needed."""
    k = h.shape[0]
    eye = torch.eye(k, device=h.device, dtype=h.dtype)
    base = float(torch.diag(h).mean())
    for attempt in range(6):
        try:
            l = torch.linalg.cholesky(h + (damp * 10 ** attempt) * base * eye)
            return torch.linalg.cholesky(torch.cholesky_inverse(l), upper=True)
        except torch.linalg.LinAlgError:
            continue
    raise ValueError("gptq: the Hessian stays singular after damping; too few calibration tokens?")


@torch.no_grad()
def gptq_quantize(w: torch.Tensor, h: torch.Tensor, fmt: formats.QuantFormat, group_size: int | None,
                  damp: float = 0.01, block_size: int = 128):
    """GPTQ of w [N, K] (float) with Hessian h [K, K] -> formats.AsymWeight or SymWeight."""
    w = w.detach().double().clone()
    h = h.detach().double().clone()
    n, k = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    hinv = _inverse_hessian_factor(h, damp)
    sym = fmt.weight_symmetric
    g = group_size or k
    block_size = max(block_size // g, 1) * g if not sym else block_size  # a group never straddles blocks
    q = torch.zeros(n, k, dtype=torch.int16, device=w.device)
    if sym:
        qmax = 2 ** (fmt.weight_bits - 1) - 1
        scale = formats.quantize_weight_sym(w.float(), fmt.weight_bits).scale.double()
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    else:
        maxq = 2 ** fmt.weight_bits - 1
        scales = torch.zeros(n, k // g, dtype=torch.float16, device=w.device)
        zeros = torch.zeros(n, k // g, dtype=torch.uint8, device=w.device)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if sym:
                qc = torch.clamp(torch.round(w1[:, i] / safe), -qmax, qmax)
                dq = qc * scale
            else:
                if col % g == 0:
                    params = formats.quantize_weight_asym(w1[:, i:i + g].float(), fmt.weight_bits, g)
                    scales[:, col // g], zeros[:, col // g] = params.scale[:, 0], params.zero[:, 0]
                s, z = scales[:, col // g].double(), zeros[:, col // g].double()
                qc = torch.clamp(torch.round(w1[:, i] / s) + z, 0, maxq)
                dq = (qc - z) * s
            q[:, col] = qc.to(torch.int16)
            e = (w1[:, i] - dq) / h1[i, i]
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if sym:
        return formats.SymWeight(q.to(torch.int8), scale.float())
    return formats.AsymWeight(q.to(torch.uint8), scales, zeros)


class GPTQ(Method):
    name = "gptq"
    needs_gram = True

    def run(self, job: BlockJob) -> dict[str, LinearPlan]:
        cfg = job.config
        plans = {}
        for gj in job.groups:
            for name, lin in gj.linears.items():
                h = gj.record.gram_matrix(*gj.coeffs[name])
                plans[name] = LinearPlan(gptq_quantize(lin.weight, h, job.fmt, job.group_size,
                                                       cfg.gptq_damp, cfg.gptq_block_size))
        return plans
