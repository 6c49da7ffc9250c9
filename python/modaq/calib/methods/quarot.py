"""QuaRot (Ashkboos et al.): randomized Hadamard rotations, then GPTQ (or RTN) weights.

prepare: each residual stream is rotated offline, x -> x Q with Q a randomized Hadamard of the
stream width (calib/rotation/prepare.py: norms folded, the vision tower's LayerNorms converted to
RMSNorms where the stream can be centered, a mean-preserving Q where it cannot), so the Linears
reading a stream (q / k / v, gate / up, fc1, the projector's input Linear) see incoherent,
outlier-free activations with no extra op.  A stream the adapter cannot rotate (LLaVA-1.5's
CLIP tower) is left as it is.

run: every other Linear input gets an online randomized Hadamard of its width, fused into the
activation quantization (quantize_act): down_proj / fc2 (the MLP's hidden activations), o_proj /
attn.proj / out_proj (the attention output: a full Hadamard of the hidden width, not QuaRot's
per-head split, since the fused kernel handles any supported width at the same cost), the
projector's later Linears, and the readers of an unrotated stream.  A width without a Hadamard
matrix (modaq.hadamard) keeps no online transform.  Weights: W P (P orthogonal, P^{-T} = P)
quantized by GPTQ with the rotated, modality-weighted Hessian P^T (a_v H_v + a_t H_t) P, or by
RTN (config.rotation_weights).  MBQ(Rot) is this method with modality='mbq'.
"""
from __future__ import annotations

import torch
from torch import nn

from ... import hadamard
from ...nn import Rotation, prepare_weight
from ..adapters.base import Adapter
from ..rotation import PreparedModel, prepare_model
from .base import BlockJob, LinearPlan, Method
from .common import quantize_weight
from .gptq import gptq_quantize


def rotated_gram(h: torch.Tensor, rotation: Rotation | None) -> torch.Tensor:
    """P^T H P (fp64) for symmetric H [K, K]: the Gram matrix of the rotated inputs x P."""
    h = h.double()
    if rotation is None:
        return h
    return rotation.apply(rotation.apply(h).t().contiguous())


def quantized_streams(config) -> tuple[str, ...]:
    """The streams worth rotating: the vision stream when the tower or the projector is quantized."""
    vision = config.format_for("vision") is not None or config.format_for("projector") is not None
    return ("vision", "language") if vision else ("language",)


class QuaRot(Method):
    name = "quarot"

    def __init__(self, config=None):
        super().__init__(config)
        self.prepared = PreparedModel()
        self.online_seed = 0

    def prepare(self, model: nn.Module, adapter: Adapter) -> list[str]:
        cfg = self.config
        self.needs_gram = cfg.rotation_weight_quantizer() == "gptq"
        self.prepared = prepare_model(model, adapter, streams=quantized_streams(cfg), rotate=True, seed=cfg.seed)
        self.online_seed = cfg.seed + 1000
        return list(self.prepared.notes) + [f"LayerNorm -> RMSNorm: {n}" for n in self.prepared.converted]

    def _online(self, job: BlockJob, first: str, lin: nn.Linear) -> Rotation | None:
        k = lin.in_features
        if f"{job.name}.{first}" in self.prepared.reader_linears or not hadamard.is_hadamard_size(k):
            return None
        self.online_seed += 1
        return Rotation("hadamard", signs=hadamard.random_signs(k, self.online_seed, device=lin.weight.device))

    def run(self, job: BlockJob) -> dict[str, LinearPlan]:
        cfg = self.config
        plans = {}
        for gj in job.groups:
            first = next(iter(gj.linears))
            rot = self._online(job, first, gj.linears[first])
            for name, lin in gj.linears.items():
                w = prepare_weight(lin.weight, None, rot)
                if self.needs_gram:
                    h = rotated_gram(gj.record.gram_matrix(*gj.coeffs[name]), rot)
                    qw = gptq_quantize(w, h, job.fmt, job.group_size, cfg.gptq_damp, cfg.gptq_block_size)
                else:
                    qw = quantize_weight(w, job.fmt, job.group_size)
                plans[name] = LinearPlan(qw, rotation=rot)
        return plans
