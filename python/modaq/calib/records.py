"""Forward hooks that record what each Linear of a block sees during the FP pass.

`InputRecord` (one per LinearGroup, on its first Linear: the members share the input) keeps
  - token counts per modality, per-channel mean |x| and max |x| over ALL tokens (the AWQ /
    SmoothQuant statistics),
  - a stratified random subsample of the input tokens: at most `quota` tokens per modality per
    forward call, each with an importance weight c_t = (tokens of its modality in that call) /
    (kept ones), so sum_kept c_t e_t estimates the sum over all tokens (the loss of
    modality.py) without storing every token,
  - optionally the per-modality Gram matrices H_v = sum_{t in V} x_t x_t^T, H_t likewise (GPTQ).
`OutputRecord` (one per Linear) sums ||y_t||_2 / d per modality (the scale-ratio weighting).
The engine sets `vision_mask` (bool [tokens] or None = all vision) before each forward call.
"""
from __future__ import annotations

import torch
from torch import nn


def _mask_for(mask: torch.Tensor | None, tokens: int, device) -> torch.Tensor:
    if mask is None:
        return torch.ones(tokens, dtype=torch.bool, device=device)
    if mask.numel() != tokens:
        raise ValueError(f"modality mask: {mask.numel()} positions but the Linear input has {tokens} tokens "
                         "(a language-stage Linear must see one row per sequence position)")
    return mask.reshape(-1).to(device)


class InputRecord:
    """Statistics and a token subsample of one LinearGroup's shared input (see module docstring)."""

    def __init__(self, in_features: int, quota: int, need_gram: bool, store_device: torch.device,
                 generator: torch.Generator):
        self.k = in_features
        self.quota = quota
        self.need_gram = need_gram
        self.store_device = store_device
        self.gen = generator
        self.vision_mask: torch.Tensor | None = None
        self.count = {True: 0, False: 0}  # vision, text
        self.abs_sum: torch.Tensor | None = None
        self.abs_max: torch.Tensor | None = None
        self.gram: dict[bool, torch.Tensor] = {}
        self._x: list[torch.Tensor] = []
        self._vis: list[torch.Tensor] = []
        self._c: list[torch.Tensor] = []

    def hook(self, module: nn.Module, inputs: tuple, output) -> None:
        x = inputs[0].detach().reshape(-1, self.k)
        vis = _mask_for(self.vision_mask, x.shape[0], x.device)
        xf = x.float()
        a = xf.abs()
        self.abs_sum = a.sum(0) if self.abs_sum is None else self.abs_sum + a.sum(0)
        amax = a.amax(0)
        self.abs_max = amax if self.abs_max is None else torch.maximum(self.abs_max, amax)
        for flag in (True, False):
            idx = (vis == flag).nonzero().flatten()
            n = idx.numel()
            if n == 0:
                continue
            self.count[flag] += n
            if self.need_gram:
                xm = xf[idx]
                g = xm.t() @ xm
                self.gram[flag] = g if flag not in self.gram else self.gram[flag] + g
            keep = idx[torch.randperm(n, generator=self.gen)[: self.quota].to(idx.device)]
            self._x.append(x[keep].to(self.store_device))
            self._vis.append(torch.full((keep.numel(),), flag, dtype=torch.bool, device=self.store_device))
            self._c.append(torch.full((keep.numel(),), n / keep.numel(), device=self.store_device))

    # ------------------------------------------------------------------------ results

    @property
    def n_tokens(self) -> int:
        return self.count[True] + self.count[False]

    @property
    def x(self) -> torch.Tensor:
        """Kept input tokens [T, K] in the model dtype."""
        return torch.cat(self._x)

    @property
    def vision(self) -> torch.Tensor:
        """bool [T]: which kept tokens are vision tokens."""
        return torch.cat(self._vis)

    @property
    def importance(self) -> torch.Tensor:
        """float32 [T]: c_t, the number of tokens each kept token stands for."""
        return torch.cat(self._c)

    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.n_tokens, 1)

    def gram_matrix(self, a_vision: float, a_text: float) -> torch.Tensor:
        """a_v H_v + a_t H_t, float32 [K, K] (the modality-weighted GPTQ Hessian, up to 2x)."""
        if not self.need_gram:
            raise RuntimeError("InputRecord: Gram matrices were not recorded (need_gram=False)")
        h = torch.zeros(self.k, self.k, device=next(iter(self.gram.values())).device)
        for flag, a in ((True, a_vision), (False, a_text)):
            if flag in self.gram:
                h += a * self.gram[flag]
        return h


class OutputRecord:
    """Per-modality sums of ||y_t||_2 / d of one Linear's FP output."""

    def __init__(self, source: InputRecord):
        self.source = source  # shares its vision_mask
        self.scale_sum = {True: 0.0, False: 0.0}

    def hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        y = output.detach().reshape(-1, output.shape[-1]).float()
        vis = _mask_for(self.source.vision_mask, y.shape[0], y.device)
        per_token = y.norm(dim=-1) / y.shape[-1]
        self.scale_sum[True] += float(per_token[vis].sum())
        self.scale_sum[False] += float(per_token[~vis].sum())

    def mean_scale(self, vision: bool) -> float:
        n = self.source.count[vision]
        return self.scale_sum[vision] / n if n else 0.0
