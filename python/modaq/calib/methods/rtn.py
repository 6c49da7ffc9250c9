"""RTN: round-to-nearest in the deployed format, no calibration data needed (the baseline)."""
from __future__ import annotations

from .base import BlockJob, LinearPlan, Method
from .common import quantize_weight


class RTN(Method):
    name = "rtn"

    def run(self, job: BlockJob) -> dict[str, LinearPlan]:
        return {name: LinearPlan(quantize_weight(lin.weight.detach().float(), job.fmt, job.group_size))
                for g in job.groups for name, lin in g.linears.items()}
