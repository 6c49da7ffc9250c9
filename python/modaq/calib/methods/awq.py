"""AWQ: activation-aware weight quantization (Lin et al.): AWQ-style equalization grid search
(mean |x|^r / mean |W|^(1-r)) on the block's recorded inputs, then weight clipping search.
Loss and modality weighting come from the config (MSE, unweighted as published)."""
from __future__ import annotations

from .base import BlockJob, LinearPlan, Method
from .equalize import equalize_block


class AWQ(Method):
    name = "awq"

    def run(self, job: BlockJob) -> dict[str, LinearPlan]:
        return equalize_block(job, "awq", job.config.loss_kind(), job.config.clip_for(job.fmt))
