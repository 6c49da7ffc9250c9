"""Fidelity report: reconstruction error per Linear and per block split by modality (filled in by
the engine during calibration), and the KL divergence of the next-token distributions of the
quantized model against the FP model on text positions.

Relative errors are sum_t ||y_t - y^q_t||^2 / sum_t ||y_t||^2 over the tokens of one modality:
per Linear on the recorded input subsample (the Linear's own error, FP input), per block on
the block's full outputs for the same (quantized-prefix) inputs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .capture import to_device
from .data import CalibSample


@dataclass
class ErrorRow:
    """Relative squared error of one Linear or block; None where the modality is absent."""

    name: str
    stage: str
    vision: float | None
    text: float | None


@dataclass
class CalibrationResult:
    method: str
    layers: list[ErrorRow] = field(default_factory=list)
    blocks: list[ErrorRow] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # Linear -> why it stayed FP
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    peak_gpu_bytes: int | None = None
    kl_text: float | None = None
    notes: list[str] = field(default_factory=list)  # what the method's preparation did / could not do
    transforms: dict[str, str] = field(default_factory=dict)  # Linear -> its online transform
    block_losses: dict[str, dict[str, float]] = field(default_factory=dict)  # FlatQuant: identity / init / final

    def mean_block_error(self, stage: str, modality: str) -> float | None:
        vals = [getattr(r, modality) for r in self.blocks if r.stage == stage and getattr(r, modality) is not None]
        return sum(vals) / len(vals) if vals else None

    def to_dict(self) -> dict:
        return asdict(self)


class ErrorAccumulator:
    """Sums of ||dy||^2 and ||y||^2 per modality, optionally with per-token weights."""

    def __init__(self):
        self.err = {True: 0.0, False: 0.0}
        self.ref = {True: 0.0, False: 0.0}

    def add(self, y: torch.Tensor, yq: torch.Tensor, vision: torch.Tensor | None,
            weight: torch.Tensor | None = None) -> None:
        y = y.detach().float().reshape(-1, y.shape[-1])
        d = (yq.detach().float().reshape(y.shape) - y).square().sum(-1)
        r = y.square().sum(-1)
        if weight is not None:
            weight = weight.to(d.device)
            d, r = d * weight, r * weight
        vis = (torch.ones(y.shape[0], dtype=torch.bool, device=y.device) if vision is None
               else vision.reshape(-1).to(y.device))
        for flag in (True, False):
            self.err[flag] += float(d[vis == flag].sum())
            self.ref[flag] += float(r[vis == flag].sum())

    def row(self, name: str, stage: str) -> ErrorRow:
        def rel(flag):
            return self.err[flag] / self.ref[flag] if self.ref[flag] > 0 else None
        return ErrorRow(name, stage, rel(True), rel(False))


@torch.no_grad()
def kl_text_positions(fp_model: nn.Module, q_model: nn.Module, samples: list[CalibSample],
                      vision_masks: list[torch.Tensor], device: torch.device | str = "cpu") -> float:
    """Mean over text positions of KL(p_fp || p_q) of the next-token distributions (nats).

    Runs one model at a time on `device` (each moved there and back), so both need not fit at once."""
    device = torch.device(device)
    logps = []
    for model in (fp_model, q_model):
        home = next(model.parameters()).device
        model.to(device)
        try:
            logps.append([torch.log_softmax(model(**to_device(s.inputs, device), use_cache=False).logits.float(), -1)
                          [0].cpu() for s in samples])
        finally:
            model.to(home)
    total, count = 0.0, 0
    for lp, lq, vmask in zip(logps[0], logps[1], vision_masks):
        text = ~vmask.reshape(-1).cpu()
        kl = (lp.exp() * (lp - lq)).sum(-1)
        total += float(kl[text].sum())
        count += int(text.sum())
    if count == 0:
        raise ValueError("samples: no text positions to compare")
    return total / count


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"


def format_layer_table(result: CalibrationResult, limit: int | None = None) -> str:
    """Plain-text table of per-Linear relative errors (vision / text)."""
    rows = result.layers if limit is None else result.layers[:limit]
    width = max([len(r.name) for r in rows] + [5])
    lines = [f"{'layer':<{width}}  {'stage':<9}  {'vision':>8}  {'text':>8}"]
    lines += [f"{r.name:<{width}}  {r.stage:<9}  {_fmt(r.vision):>8}  {_fmt(r.text):>8}" for r in rows]
    return "\n".join(lines)


def format_summary_table(results: dict[str, CalibrationResult]) -> str:
    """One row per run: mean block error per stage / modality, KL on text, wall time."""
    head = (f"{'method':<12} {'vision blk':>10} {'proj blk':>10} {'lang vis':>10} {'lang text':>10} "
            f"{'KL text':>10} {'time s':>7}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(f"{name:<12} {_fmt(r.mean_block_error('vision', 'vision')):>10} "
                     f"{_fmt(r.mean_block_error('projector', 'vision')):>10} "
                     f"{_fmt(r.mean_block_error('language', 'vision')):>10} "
                     f"{_fmt(r.mean_block_error('language', 'text')):>10} {_fmt(r.kl_text):>10} {r.seconds:>7.1f}")
    return "\n".join(lines)
