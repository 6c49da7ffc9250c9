"""Modality weighting of reconstruction losses, orthogonal to the calibration method.

Every method minimizes (or, for GPTQ, builds its Hessian from) a loss of the form

    L = a_v * sum_{t in V} e_t  +  a_t * sum_{t in T} e_t

over the vision tokens V and text tokens T seen by one Linear, with e_t the token's output error
(sum over channels of |dY| for MAE or dY^2 for MSE).  `ModalityWeights.coefficients` gives
(a_v, a_t) for one Linear from its `ModalityStats`:

  none         a_v = a_t = 1 / N                         (AWQ / SmoothQuant / GPTQ as published)
  mbq          a_v = |g_v| / N, a_t = |g_l| / N          MBQ eq. 13: mean |dL/dY| of the SFT loss
                                                         over the Linear's vision / text outputs
                                                         (absolute, so in a group q / k / v each
                                                         count by their own sensitivity)
  scale_ratio  a_v = beta * (S_txt / S_vis) / |V|,       modality-aware rotation paper eq. 9-14:
               a_t = 1 / |T|                             S = mean_t ||Y_t||_2 / d of the FP output,
                                                         each term averaged over its own tokens
  fixed        a_v = w_vision / N, a_t = w_text / N      MBQ sec. 3.1's balanced CWE (0.1 / 1)

A Linear that sees one modality only (vision tower, projector) gets the plain average: weighting
applies where both modalities meet, in the language decoder.
"""
from __future__ import annotations

from dataclasses import dataclass

WEIGHTING_KINDS = ("none", "mbq", "scale_ratio", "fixed")


@dataclass(frozen=True)
class ModalityStats:
    """What one Linear saw during calibration (counts over all tokens, not a subsample)."""

    n_vision: int
    n_text: int
    out_scale_vision: float = 0.0  # mean over vision tokens of ||y_t||_2 / d (FP output)
    out_scale_text: float = 0.0
    grad_vision: float | None = None  # mean |dL/dY| over vision positions (MBQ)
    grad_text: float | None = None


@dataclass(frozen=True)
class ModalityWeights:
    """How vision and text token errors are weighted (see module docstring)."""

    kind: str = "none"
    beta: float = 0.1
    vision: float = 0.1
    text: float = 1.0

    def __post_init__(self):
        if self.kind not in WEIGHTING_KINDS:
            raise ValueError(f"modality: expected one of {WEIGHTING_KINDS}, got {self.kind!r}")
        if not 0 < self.beta <= 1:
            raise ValueError(f"beta: expected a value in (0, 1], got {self.beta!r}")
        if self.vision < 0 or self.text < 0 or self.vision + self.text == 0:
            raise ValueError(f"fixed weights: expected non-negative (vision, text) not both 0, got "
                             f"({self.vision}, {self.text})")

    @property
    def needs_gradients(self) -> bool:
        return self.kind == "mbq"

    def coefficients(self, st: ModalityStats) -> tuple[float, float]:
        """(a_v, a_t): multipliers of the per-modality sums of token errors."""
        n = st.n_vision + st.n_text
        if n == 0:
            raise ValueError("stats: the Linear saw no tokens during calibration")
        uniform = (1.0 / n, 1.0 / n)
        if self.kind == "none" or st.n_vision == 0 or st.n_text == 0:
            return uniform
        if self.kind == "fixed":
            return self.vision / n, self.text / n
        if self.kind == "mbq":
            gv, gt = st.grad_vision, st.grad_text
            if gv is None or gt is None or gv + gt <= 0:
                return uniform  # no gradient reached this Linear (e.g. an unused vision layer)
            return gv / n, gt / n  # absolute: members of a group weigh by their own sensitivity
        if st.out_scale_vision <= 0:  # scale_ratio with silent vision outputs: nothing to damp
            return uniform
        lam_v = self.beta * st.out_scale_text / st.out_scale_vision
        return lam_v / st.n_vision, 1.0 / st.n_text
