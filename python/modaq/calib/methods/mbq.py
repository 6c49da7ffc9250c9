"""MBQ: modality-balanced quantization (Li et al., CVPR 2025).

Channel-wise equalization whose search objective weights each modality's reconstruction error by
the mean absolute gradient of the SFT loss w.r.t. the Linear's output over that modality's tokens:

    min_E  |g_v| * ||W X_v - Q(W E) Q_a(E^-1 X_v)||_1  +  |g_l| * ||W X_l - Q(W E) Q_a(E^-1 X_l)||_1

(eq. 14-17; Q_a is the identity for weight-only formats).  The gradients come from one backward
pass over the calibration set (sensitivity.py) and reach the search through
ModalityWeights('mbq'); MAE is the default loss (the paper's ablation, sec. 4.3.2).  Candidates
follow the deployed format: AWQ-style for weight-only (W3A16 / W4A16, with clipping), SmoothQuant-
style for weight-activation formats (W4A8 / W8A8), as in the paper's baselines.
"""
from __future__ import annotations

from .base import BlockJob, LinearPlan, Method
from .equalize import equalize_block


class MBQ(Method):
    name = "mbq"

    def run(self, job: BlockJob) -> dict[str, LinearPlan]:
        style = "awq" if job.fmt.weight_only else "sq"
        return equalize_block(job, style, job.config.loss_kind(), job.config.clip_for(job.fmt))
