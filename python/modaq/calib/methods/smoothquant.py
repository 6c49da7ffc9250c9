"""SmoothQuant (Xiao et al.): W-A equalization s = max|x|^a / max|W|^(1-a), with the migration
strength a searched on a grid (a = 0 ... 1) against the reconstruction loss of the quantized
weights and activations, instead of SmoothQuant's fixed a = 0.5."""
from __future__ import annotations

from .base import BlockJob, LinearPlan, Method
from .equalize import equalize_block


class SmoothQuant(Method):
    name = "smoothquant"

    def run(self, job: BlockJob) -> dict[str, LinearPlan]:
        return equalize_block(job, "sq", job.config.loss_kind(), job.config.clip_for(job.fmt))
