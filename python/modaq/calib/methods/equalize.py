"""Channel-wise equalization (CWE) search, scale folding and weight-clipping search.

For a LinearGroup with shared input X [T, K] and member weights W_j [N_j, K], CWE picks a
per-input-channel scale s and deploys Q(W_j diag(s)) applied to Q_a(X diag(s)^-1) (MBQ eq. 5,
14-17): the FP product is unchanged, the quantization error moves between X and W.  The search
evaluates a 1-D family of candidates and keeps the one minimizing

    L(s) = sum_j sum_t w_jt * e(Q_a(x_t / s) Q(W_j s)^T - x_t W_j^T)         (modality.py)

on the recorded token subsample; Q_a is per-token activation quantization for W-A formats and
the identity for weight-only ones.  s = 1 (plain RTN) is always a candidate, so the search never
does worse than RTN on its own objective.  Candidate families:

  awq  s(r) = mean|x|^r / mean_j(|W| / max|W| per group)^(1-r),  r in [0, 1)   (AWQ, duo scaling)
  sq   s(a) = max|x|^a / max|W|^(1-a),                             a in [0, 1]   (SmoothQuant)

each normalized by sqrt(max(s) min(s)).  Clipping (AWQ): per output row and weight group, shrink
the range to r * [min, max] (r = 1 ... clip_min_ratio) where it lowers the weighted output error
of that group's partial product.
"""
from __future__ import annotations

import torch

from ... import formats
from .base import BlockJob, GroupJob, LinearPlan
from .common import fake_act, fake_weight, quantize_weight, token_error, token_weights

STYLES = ("awq", "sq")


def candidate_scales(style: str, job: GroupJob, group_size: int | None, grid: int) -> list[torch.Tensor]:
    rec = job.record
    w = torch.cat([lin.weight.detach().float() for lin in job.linears.values()])
    k = w.shape[1]
    if style == "awq":
        g = group_size or k
        wg = w.abs().reshape(-1, g)
        w_mean = (wg / (wg.amax(dim=1, keepdim=True) + 1e-6)).reshape(w.shape).mean(0)
        x_mean = rec.mean_abs()
        raw = [(x_mean.pow(i / grid) / (w_mean.pow(1 - i / grid) + 1e-4)).clamp(min=1e-4) for i in range(grid)]
    elif style == "sq":
        x_max = rec.abs_max.clamp(min=1e-5)
        w_max = w.abs().amax(0).clamp(min=1e-5)
        raw = [(x_max.pow(i / grid) / w_max.pow(1 - i / grid)).clamp(min=1e-5) for i in range(grid + 1)]
    else:
        raise ValueError(f"style: expected one of {STYLES}, got {style!r}")
    return [s / torch.sqrt(s.max() * s.min()) for s in raw]


@torch.no_grad()
def search_scale(job: GroupJob, fmt: formats.QuantFormat, group_size: int | None, style: str, loss: str,
                 grid: int) -> tuple[torch.Tensor | None, float, float]:
    """(best s or None when s = 1 wins, best loss, loss at s = 1) for one group."""
    weights = {n: lin.weight.detach().float() for n, lin in job.linears.items()}
    x = job.record.x.to(next(iter(weights.values())).device).float()  # recorded tokens may be offloaded
    targets = {n: x @ w.t() for n, w in weights.items()}
    tw = {n: token_weights(job.record, job.coeffs[n]).to(x.device) for n in weights}

    def objective(s: torch.Tensor | None) -> float:
        xs = fake_act(x if s is None else x / s, fmt)
        total = 0.0
        for n, w in weights.items():
            wq = fake_weight(w if s is None else w * s, fmt, group_size)
            total += float((tw[n] * token_error(xs @ wq.t() - targets[n], loss)).sum())
        return total

    base = best = objective(None)
    best_s = None
    for s in candidate_scales(style, job, group_size, grid):
        value = objective(s)
        if value < best:
            best, best_s = value, s
    return best_s, best, base


@torch.no_grad()
def fold_scale(block: torch.nn.Module, job: GroupJob, s: torch.Tensor) -> bool:
    """Fold s into the group's producer (x -> x / s) and its members' columns (W -> W s).
    Returns False (nothing changed) when the group has no producer."""
    g = job.group
    if g.producer is None:
        return False
    prod = block.get_submodule(g.producer)
    if g.producer_kind == "norm":
        prod.weight.div_(s.to(prod.weight.dtype))
        if getattr(prod, "bias", None) is not None:
            prod.bias.div_(s.to(prod.bias.dtype))
    else:
        prod.weight.div_(s[:, None].to(prod.weight.dtype))
        if prod.bias is not None:
            prod.bias.div_(s.to(prod.bias.dtype))
    for lin in (*job.linears.values(), *job.frozen.values()):
        lin.weight.mul_(s[None, :].to(lin.weight.dtype))
    return True


@torch.no_grad()
def clip_weight(w: torch.Tensor, x: torch.Tensor, tw: torch.Tensor, fmt: formats.QuantFormat,
                group_size: int | None, loss: str, grid: int, min_ratio: float) -> torch.Tensor:
    """w [N, K] fp32 with each (row, group) range shrunk to the ratio that minimizes the weighted
    error of that group's partial output sum_j x_tj (w_j - Q(w)_j) over tokens x [T, K]."""
    n, k = w.shape
    g = group_size or k
    groups = k // g
    wg = w.reshape(n, groups, g)
    if fmt.weight_symmetric:
        hi = wg.abs().amax(-1, keepdim=True)
        lo = -hi
    else:
        lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    xg = x.reshape(-1, groups, g)
    best_err = torch.full((n, groups), float("inf"), device=w.device)
    best_ratio = torch.ones(n, groups, device=w.device)
    ratios = [1.0 - i / grid for i in range(int(round((1 - min_ratio) * grid)) + 1)]
    rows = max(1, (1 << 24) // max(1, x.shape[0] * groups))  # bound the [T, rows, G] product
    for r in ratios:
        wc = torch.maximum(torch.minimum(wg, hi * r), lo * r)
        diff = wg - fake_weight(wc.reshape(n, k), fmt, group_size).reshape(n, groups, g)
        err = torch.empty(n, groups, device=w.device)
        for i in range(0, n, rows):
            e = torch.einsum("tgj,ngj->tng", xg, diff[i:i + rows])
            e = e.abs() if loss == "mae" else e.square()
            err[i:i + rows] = torch.einsum("t,tng->ng", tw, e)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, r), best_ratio)
    ratio = best_ratio[..., None]
    return torch.maximum(torch.minimum(wg, hi * ratio), lo * ratio).reshape(n, k)


def _clip_subset(job: GroupJob, tokens: int, seed: int) -> torch.Tensor:
    t = job.record.x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(t, generator=gen)[:tokens]


@torch.no_grad()
def equalize_block(job: BlockJob, style: str, loss: str, clip: bool) -> dict[str, LinearPlan]:
    """Search every group's scale on the FP block, fold them, then clip (optionally) and quantize."""
    cfg = job.config
    scales = [search_scale(gj, job.fmt, job.group_size, style, loss, cfg.grid)[0] for gj in job.groups]
    absorbed = [s is not None and fold_scale(job.block, gj, s) for gj, s in zip(job.groups, scales)]
    plans = {}
    for gj, s, folded in zip(job.groups, scales, absorbed):
        idx = _clip_subset(gj, cfg.clip_tokens, cfg.seed) if clip else None
        x = gj.record.x.to(next(iter(gj.linears.values())).weight.device).float()
        x = x if s is None else x / s
        for name, lin in gj.linears.items():
            w = lin.weight.detach().float()
            if s is not None and not folded:
                w = w * s
            if clip and name not in gj.group.no_clip:
                tw = token_weights(gj.record, gj.coeffs[name]).to(x.device)
                w = clip_weight(w, x[idx.to(x.device)], tw[idx.to(x.device)], job.fmt, job.group_size, loss,
                                cfg.clip_grid, cfg.clip_min_ratio)
            plans[name] = LinearPlan(quantize_weight(w, job.fmt, job.group_size),
                                     smooth=s if (s is not None and not folded) else None,
                                     input_scale=s if folded else None)
    return plans
