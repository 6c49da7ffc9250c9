"""FlatQuant-style learnable transforms and the fake-quantized Linear they train through.

For a LinearGroup with shared input x [T, K] (K = n1 * n2, hadamard.kron_factors) the
transform is an invertible P = P1 (x) P2 with a per-channel scale d:

    x  ->  x' = (x * d) P          (online: QuantLinear smooth s = 1 / d, Rotation.kron(P1, P2))
    W  ->  W' = (W / d) P^{-T}     (offline: folded into the weight, P^{-1} in fp64)

so x' W'^T = x W^T.  P1, P2 are plain matrices (FlatQuant's direct-inverse parameterization),
initialized Haar-random orthogonal; d is initialized SmoothQuant-style,
d = max|W|^(1 - alpha) / max|x|^alpha per input channel (FlatQuant's diag_init, alpha = 0.3).
Learnable weight clipping (FlatQuant's LWC): per output row, the range shrinks to
[sigmoid(c_min) min w, sigmoid(c_max) max w] (c initialized to 4, sigmoid(4) = 0.982).
Learnable activation clipping (FlatQuant's LAC): per Linear one ratio r = sigmoid(c_a)
(c_a initialized to 4) shrinks every token's range to r * absmax; values beyond it saturate.
FlatQuant learns separate factors for max x and min x; the deployed quantizer is symmetric
(range = r * max|x|, quantize_act's clip_ratio), so one factor is learned here.

Quantizers match the deployed modules (formats.py): per-token symmetric activations
(scale = r * absmax / qmax, the fused quantize_act kernel with clip_ratio = r),
per-output-channel symmetric weights, round-to-nearest; the rounding passes gradients straight
through (STE), so r gets gradients through the scale.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ... import formats
from ...hadamard import kron_factors
from ...nn import Rotation
from ...ops.reference import kron_rows
from .prepare import random_orthogonal

CLIP_INIT = 4.0


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


def fake_quant_rows(x: torch.Tensor, bits: int, clip_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric quantize-dequantize of each row of x [R, C], STE: scale = r * absmax / qmax with
    r = clip_ratio (a scalar tensor, differentiable) or 1; values beyond r * absmax saturate."""
    qmax = 2 ** (bits - 1) - 1
    absmax = x.abs().amax(-1, keepdim=True)
    if clip_ratio is not None:
        absmax = absmax * clip_ratio
    scale = absmax.clamp(min=1e-12) / qmax
    return torch.clamp(round_ste(x / scale), -qmax, qmax) * scale


def smoothquant_init(w_absmax: torch.Tensor, x_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """d = max|W|^(1 - alpha) / max|x|^alpha per input channel (x * d flattens x's outliers)."""
    return (w_absmax.clamp(min=1e-5).pow(1 - alpha) / x_absmax.clamp(min=1e-5).pow(alpha)).clamp(min=1e-5)


class KronTransform(nn.Module):
    """x -> (x * d) (P1 (x) P2) and W -> (W / d) (P1 (x) P2)^{-T} for K = n1 * n2 inputs.

    identity=True starts (and, if not trained, stays) at P = I, d = 1: plain RTN."""

    def __init__(self, k: int, scale: torch.Tensor | None = None, seed: int = 0, identity: bool = False,
                 factors: tuple[int, int] | None = None):
        super().__init__()
        n1, n2 = factors or kron_factors(k)
        if n1 * n2 != k:
            raise ValueError(f"factors: {n1} x {n2} does not equal k = {k}")
        self.k = k
        if identity:
            left, right = torch.eye(n1), torch.eye(n2)
        else:
            left, right = random_orthogonal(n1, seed).float(), random_orthogonal(n2, seed + 1).float()
        self.left = nn.Parameter(left)
        self.right = nn.Parameter(right)
        self.scale = nn.Parameter(torch.ones(k) if scale is None or identity else scale.detach().float().clone())
        self._inverses = None  # (P1^{-T}, P2^{-T}) while cached_weights is active

    def inverses_t(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(P1^{-T}, P2^{-T}) in fp32, inverted in fp64 (differentiable).  inv_ex: linalg.inv's
        singularity check would synchronize the GPU on every call; a singular factor shows up as
        non-finite weights and a non-finite loss instead."""
        if self._inverses is not None:
            return self._inverses
        return (torch.linalg.inv_ex(self.left.double()).inverse.t().float(),
                torch.linalg.inv_ex(self.right.double()).inverse.t().float())

    def act(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, K] fp32 -> (x * d) P."""
        return kron_rows(x * self.scale, self.left, self.right)

    def act_left(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, K] fp32 -> x (P1 (x) I): the online part once d and P2 are merged into the producer."""
        return kron_rows(x, self.left, None)

    # The producer of this transform's input with d and P2 folded into its output rows:
    # y -> (y * d) (I (x) P2), i.e. W -> blockdiag(P2^T) diag(d) W and b -> (b * d) (I (x) P2).
    # Valid where the producer's output reaches the input through a map that is linear and the
    # same for every P2-sized block: attention's value path with heads as blocks, without GQA.
    def merge_rows(self, w: torch.Tensor) -> torch.Tensor:
        """W [K, C] (K = this transform's size) -> blockdiag(P2^T) diag(d) W."""
        return merge_head_factor(w * self.scale[:, None].to(w.dtype), self.right.to(w.dtype))

    def merge_bias(self, b: torch.Tensor) -> torch.Tensor:
        """b [K] -> (b * d) (I (x) P2)."""
        return self.merge_rows(b[:, None])[:, 0]

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        """W [N, K] fp32 -> (W / d) P^{-T}; the inverses in fp64 (differentiable)."""
        return kron_rows(w / self.scale, *self.inverses_t())

    @torch.no_grad()
    def deployed(self) -> tuple[torch.Tensor, Rotation]:
        """(smooth s = 1 / d, Rotation.kron(P1, P2)) for the quantized module."""
        return (1.0 / self.scale).detach().float().clone(), Rotation.kron(self.left.detach().float().clone(),
                                                                           self.right.detach().float().clone())


def merge_head_factor(w: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Rows of W [K, C] in blocks of n2 = right's size, each block B -> right^T B: the producer
    weight whose output row vectors come out multiplied by right, block by block."""
    n2 = right.shape[0]
    return torch.einsum("ji,hjk->hik", right, w.reshape(-1, n2, w.shape[1])).reshape(w.shape)


class WeightClip(nn.Module):
    """Learnable per-row clipping of W [N, K] to [sigmoid(c_min) min w, sigmoid(c_max) max w]."""

    def __init__(self, rows: int):
        super().__init__()
        self.c_max = nn.Parameter(torch.full((rows, 1), CLIP_INIT))
        self.c_min = nn.Parameter(torch.full((rows, 1), CLIP_INIT))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        hi = w.amax(1, keepdim=True) * torch.sigmoid(self.c_max.to(w.dtype))
        lo = w.amin(1, keepdim=True) * torch.sigmoid(self.c_min.to(w.dtype))
        return torch.clamp(w, lo, hi)


class ActClip(nn.Module):
    """Learnable activation clip ratio r = sigmoid(c) of one Linear's input (FlatQuant's LAC)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(CLIP_INIT))

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.c.float())

    @torch.no_grad()
    def ratio(self) -> float:
        """r as the deployed module's act_clip_ratio: the fp32 value training used (kept above
        the smallest normal fp32 so that a collapsed ratio still deploys)."""
        return max(float(self.forward()), float(torch.finfo(torch.float32).tiny))


class FlatLinear(nn.Module):
    """Training stand-in for an nn.Linear: y = Q_a((x * d) P; r) Q_w(clip((W / d) P^{-T}))^T + b,
    fp32, with the Linear's weight frozen and the transform / clipping learnable (weight
    clipping if `clip`, the activation clip ratio r if `act_clip`, else r = 1)."""

    def __init__(self, linear: nn.Linear, transform: KronTransform, fmt: formats.QuantFormat, clip: bool,
                 act_clip: bool = False, out_merge: KronTransform | None = None, merged_input: bool = False):
        super().__init__()
        if fmt.weight_only or not fmt.weight_symmetric:
            raise ValueError(f"fmt: FlatLinear needs a weight-activation format, got {fmt.name}")
        self.linear, self.transform, self.fmt = linear, transform, fmt
        # v_proj of a merged pair: its rows carry o_proj's d and P2 (KronTransform.merge_rows);
        # o_proj of that pair: its input arrives with them, so only P1 acts online
        self.out_merge, self.merged_input = out_merge, merged_input
        self.clip = WeightClip(linear.out_features).to(linear.weight.device) if clip else None
        self.act_clip = ActClip().to(linear.weight.device) if act_clip else None
        self._weight = None  # the fake-quantized weight while cached_weights is active

    def quantized_weight(self) -> torch.Tensor:
        """Q_w(clip((W / d) P^{-T})) [N, K] fp32 (differentiable in the transform and clipping)."""
        if self._weight is not None:
            return self._weight
        w = self.transform.weight(self.linear.weight.float())
        if self.out_merge is not None:
            w = self.out_merge.merge_rows(w)
        if self.clip is not None:
            w = self.clip(w)
        return fake_quant_rows(w, self.fmt.weight_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        xt = self.transform.act_left(x2) if self.merged_input else self.transform.act(x2)
        xq = fake_quant_rows(xt, self.fmt.act_bits, None if self.act_clip is None else self.act_clip())
        y = xq @ self.quantized_weight().t()
        if self.linear.bias is not None:
            b = self.linear.bias.float()
            y = y + (b if self.out_merge is None else self.out_merge.merge_bias(b))
        return y.reshape(*shape[:-1], -1).to(x.dtype)

    @torch.no_grad()
    def clip_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The learned clipping applied to a deployed weight [N, K] (any float dtype)."""
        return w if self.clip is None else self.clip(w)

    def act_clip_ratio(self) -> float:
        """The deployed module's act_clip_ratio (1.0 without activation clipping)."""
        return 1.0 if self.act_clip is None else self.act_clip.ratio()


@contextmanager
def cached_weights(wrappers):
    """Within the block: each transform's inverses and each FlatLinear's fake-quantized weight
    computed once (they depend on the parameters, not on the sample), shared by every forward
    of an optimizer step; autograd sums the samples' gradients through the shared graph.
    Without it every sample's forward re-inverts P1, P2 in fp64 for every member Linear."""
    wrappers = list(wrappers)
    transforms = list({id(w.transform): w.transform for w in wrappers}.values())
    try:
        for t in transforms:
            t._inverses = t.inverses_t()
        for w in wrappers:
            w._weight = w.quantized_weight()
        yield
    finally:
        for w in wrappers:
            w._weight = None
        for t in transforms:
            t._inverses = None
