"""FlatQuant (Sun et al.) with the modality-aware rotation paper's pipeline.

prepare: the residual streams' norms are folded and the vision tower's LayerNorms become
RMSNorms where the stream can be centered (calib/rotation/prepare.py; the paper's stage (i));
no residual rotation (FlatQuant learns one transform per Linear group instead).
run: per block, the Kronecker transforms, per-channel scales, weight clipping and activation
clip ratios (flat_weight_clip / flat_act_clip) are trained on the block output with the
modality-weighted loss (calib/rotation/train.py; the paper's eq. 14 in the decoder with
modality='scale_ratio', the default, and plain MSE in the vision tower), then
deployed: scales folded into the norm / previous Linear where possible, P1 (x) P2 online
(Rotation.kron, fused into quantize_act), weights Q(clip(W diag(s) P^{-T})) with Q = RTN
(FlatQuant's default) or GPTQ (rotation_weights='gptq'), activations clipped to the learned
ratio of their per-token absmax (the module's act_clip_ratio).  o_proj's transform is per head
where v_proj is its producer (no grouped-query attention): its head_dim factor and scale merge
into v_proj's rows and only the head factor P1 (x) I stays online (calib/rotation/train.py).
Otherwise P stays online whole: no norm or Linear can absorb a dense transform of the next
Linear's input.
"""
from __future__ import annotations

from torch import nn

from ..adapters.base import Adapter
from ..rotation import prepare_model
from ..rotation.train import BlockLosses, TrainSettings, train_block
from .base import BlockJob, LinearPlan, Method
from .quarot import quantized_streams


class FlatQuant(Method):
    name = "flatquant"
    needs_block_data = True

    def __init__(self, config=None):
        super().__init__(config)
        self.losses: dict[str, BlockLosses] = {}

    def prepare(self, model: nn.Module, adapter: Adapter) -> list[str]:
        self.needs_gram = self.config.rotation_weight_quantizer() == "gptq"
        info = prepare_model(model, adapter, streams=quantized_streams(self.config), rotate=False)
        return list(info.notes) + [f"LayerNorm -> RMSNorm: {n}" for n in info.converted]

    def run(self, job: BlockJob) -> dict[str, LinearPlan]:
        plans, losses = train_block(job, TrainSettings.from_config(self.config))
        self.losses[job.name] = losses
        return plans
