"""Block-wise training of FlatQuant transforms (FlatQuant sec. 3.3, train_utils.cali_flat_quant).

For one block: every quantizable LinearGroup gets a KronTransform (shared by its members) and
each member a FlatLinear (fake-quantized, learnable weight clipping and activation clip ratio)
in place of its nn.Linear; the block then minimizes, over the calibration samples,

    L = a_v * sum_{t in V} ||Y^q_t - Y_t||^2  +  a_t * sum_{t in T} ||Y^q_t - Y_t||^2

with Y the FP block's output on the same input, (a_v, a_t) from modality.py (the language
decoder with the scale-ratio weighting: a_v = beta * (S_txt / S_vis) / |V|, a_t = 1 / |T|, the
modality-aware rotation paper's eq. 14; vision blocks: the plain mean, eq. 15).  AdamW (lr 5e-3
for transforms and scales, 5e-2 for weight and activation clipping alike, as in FlatQuant),
cosine decay to 1e-3 x lr, `batch` samples per step with the summed loss divided by its
detached value (FlatQuant's normalization), in fp32.

Then the transforms are deployed: each group's scale s = 1 / d folds into its producer (norm
weight or previous Linear's rows) where it has one and stays in the module's `smooth` buffer
otherwise; P = P1 (x) P2 stays online (Rotation.kron, the fused Kronecker quantize kernel); the
weight is Q(clip(W diag(s) P^{-T})) computed in fp64 (Q: RTN as FlatQuant, or GPTQ); the
learned activation clip ratio becomes the module's act_clip_ratio (quantize_act's clip_ratio).

o_proj's transform is factored per head, P1 (x) P2 with P2 of size head_dim, when v_proj is its
producer (no grouped-query attention: the adapter gives o_proj a producer only then): P2 and d
merge into v_proj's rows (FlatQuant's merge; attention mixes tokens, never the channels of a
head), so only P1 (x) I stays online.  Training already sees that form: v_proj's fake-quantized
weight carries d and P2, o_proj's input gets P1 alone.  With GQA, d cannot fold into v_proj (a
KV head serves several query heads with different d), so neither can P2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...nn import Rotation, prepare_weight
from ..methods.base import BlockJob, LinearPlan
from ..methods.common import quantize_weight, token_error
from ..methods.equalize import fold_scale
from ..methods.gptq import gptq_quantize
from .transforms import FlatLinear, KronTransform, cached_weights, merge_head_factor, smoothquant_init


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 15
    lr: float = 5e-3
    clip_lr: float = 5e-2
    batch: int = 4
    diag_alpha: float = 0.3
    weight_clip: bool = True
    act_clip: bool = True
    loss: str = "mse"
    seed: int = 0
    weights: str = "rtn"  # or "gptq": GPTQ on the clipped, transformed weight
    gptq_damp: float = 0.01
    gptq_block_size: int = 128

    @classmethod
    def from_config(cls, cfg) -> "TrainSettings":
        return cls(epochs=cfg.flat_epochs, lr=cfg.flat_lr, clip_lr=cfg.flat_clip_lr, batch=cfg.flat_batch,
                   diag_alpha=cfg.flat_diag_alpha, weight_clip=cfg.flat_weight_clip, act_clip=cfg.flat_act_clip,
                   loss=cfg.loss_kind(), seed=cfg.seed, weights=cfg.rotation_weight_quantizer(),
                   gptq_damp=cfg.gptq_damp, gptq_block_size=cfg.gptq_block_size)


@dataclass
class BlockLosses:
    """Block loss L (module docstring) over all samples: identity transforms (RTN), at the
    initialization, after training."""

    identity: float
    init: float
    final: float


def _swap(block: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, child, module)


def head_merges(job: BlockJob) -> dict[int, tuple[str, int]]:
    """{group index: (v_proj name, head_dim)} for the o_proj groups whose per-head factor merges
    into v_proj (module docstring): the producer is a quantized Linear of the same attention
    module, which has a head_dim, and the group reads heads * head_dim channels."""
    members = {name for gj in job.groups for name in gj.linears}
    out = {}
    for gi, gj in enumerate(job.groups):
        g = gj.group
        if g.producer_kind != "linear" or g.producer not in members:
            continue
        attn = g.producer.rpartition(".")[0]
        head_dim = getattr(job.block.get_submodule(attn), "head_dim", None) if attn else None
        k = next(iter(gj.linears.values())).in_features
        if (isinstance(head_dim, int) and 1 < head_dim < k and k % head_dim == 0
                and all(n.rpartition(".")[0] == attn for n in gj.linears)):
            out[gi] = (g.producer, head_dim)
    return out


def _transforms(job: BlockJob, settings: TrainSettings, identity: bool) -> list[KronTransform]:
    merges = head_merges(job)
    out = []
    for gi, gj in enumerate(job.groups):
        w = torch.cat([lin.weight.detach().float() for lin in gj.linears.values()])
        scale = smoothquant_init(w.abs().amax(0), gj.record.abs_max.float().to(w.device), settings.diag_alpha)
        factors = (w.shape[1] // merges[gi][1], merges[gi][1]) if gi in merges else None
        out.append(KronTransform(w.shape[1], scale, seed=settings.seed + 2 * gi, identity=identity,
                                 factors=factors).to(w.device))
    return out


def _token_weights(job: BlockJob) -> list[torch.Tensor]:
    """Per sample, each token's multiplier in the block loss (a_v on vision tokens, a_t on text),
    on the targets' device once per block: the training loop then needs no host copies and no
    boolean indexing, each of which would synchronize the GPU on every sample."""
    a_v, a_t = job.data.coeffs
    out = []
    for target, vis in zip(job.data.targets, job.data.vision):
        tokens = target.numel() // target.shape[-1]
        if vis is None:
            out.append(torch.full((tokens,), a_v, device=target.device))
        else:
            out.append(torch.where(vis.reshape(-1).to(target.device), a_v, a_t).float())
    return out


def _block_loss(job: BlockJob, i: int, loss: str, weights: list[torch.Tensor]) -> torch.Tensor:
    data = job.data
    y = data.run(job.block, i, torch.float32)
    target = data.targets[i].to(y.device)
    e = token_error((y.float() - target.float()).reshape(-1, y.shape[-1]), loss)
    return (e * weights[i].to(e.device)).sum()


@torch.no_grad()
def _total_loss(job: BlockJob, wrappers: dict[str, FlatLinear], loss: str, weights: list[torch.Tensor]) -> float:
    with cached_weights(wrappers.values()):
        return float(sum(_block_loss(job, i, loss, weights) for i in range(len(job.data.targets))))


def _optimize(job: BlockJob, transforms: list[KronTransform], wrappers: dict[str, FlatLinear],
              settings: TrainSettings, weights: list[torch.Tensor]) -> None:
    groups = [{"params": [p for t in transforms for p in t.parameters()], "lr": settings.lr}]
    clips = [p for w in wrappers.values() for c in (w.clip, w.act_clip) if c is not None for p in c.parameters()]
    if clips:
        groups.append({"params": clips, "lr": settings.clip_lr})
    opt = torch.optim.AdamW(groups)
    n = len(job.data.targets)
    steps = settings.epochs * -(-n // settings.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=settings.lr * 1e-3)
    with torch.enable_grad():
        for _ in range(settings.epochs):
            for start in range(0, n, settings.batch):
                opt.zero_grad(set_to_none=True)
                with cached_weights(wrappers.values()):
                    total = sum(_block_loss(job, i, settings.loss, weights)
                                for i in range(start, min(start + settings.batch, n)))
                    (total / total.detach().clamp(min=1e-30)).backward()
                opt.step()
                sched.step()


def train_block(job: BlockJob, settings: TrainSettings) -> tuple[dict[str, LinearPlan], BlockLosses]:
    """Train the block's transforms (module docstring) and return the deployed plans and losses.
    The block's parameters are restored (and the scales folded); its Linears stay nn.Linear."""
    if job.data is None:
        raise ValueError("job: FlatQuant trains on the block output; the engine must pass BlockData")
    if not job.groups:  # every Linear of the block stays FP (unsupported shapes)
        return {}, BlockLosses(0.0, 0.0, 0.0)
    block = job.block
    dtypes = {n: p.dtype for n, p in block.named_parameters()}
    buffer_dtypes = {n: b.dtype for n, b in block.named_buffers()}
    flags = {p: p.requires_grad for p in block.parameters()}
    block.float()
    for p in block.parameters():
        p.requires_grad_(False)
    originals = {n: lin for gj in job.groups for n, lin in gj.linears.items()}
    try:
        losses, transforms, wrappers = _train(job, settings)
    finally:
        for name, lin in originals.items():
            _swap(block, name, lin)
        for n, p in block.named_parameters():
            p.data = p.data.to(dtypes[n])
            p.requires_grad_(flags.get(p, False))
        for n, b in block.named_buffers():
            b.data = b.data.to(buffer_dtypes[n])
    return _deploy(job, transforms, wrappers, settings), losses


def _install(job: BlockJob, transforms: list[KronTransform], settings: TrainSettings) -> dict[str, FlatLinear]:
    merges = head_merges(job)
    out_merge = {v: transforms[gi] for gi, (v, _) in merges.items()}
    wrappers = {}
    for gi, (gj, t) in enumerate(zip(job.groups, transforms)):
        for name, lin in gj.linears.items():
            wrappers[name] = FlatLinear(lin, t, job.fmt, settings.weight_clip, settings.act_clip,
                                        out_merge=out_merge.get(name), merged_input=gi in merges)
            _swap(job.block, name, wrappers[name])
    return wrappers


def _train(job: BlockJob, settings: TrainSettings):
    ident = _transforms(job, settings, identity=True)
    weights = _token_weights(job)
    identity = _install(job, ident, TrainSettings(weight_clip=False, act_clip=False))
    identity_loss = _total_loss(job, identity, settings.loss, weights)
    transforms = _transforms(job, settings, identity=False)
    wrappers = _install(job, transforms, settings)
    init_loss = _total_loss(job, wrappers, settings.loss, weights)
    _optimize(job, transforms, wrappers, settings, weights)
    final_loss = _total_loss(job, wrappers, settings.loss, weights)
    if not math.isfinite(final_loss):
        raise RuntimeError(f"FlatQuant training of block {job.name or '?'}: the block loss became {final_loss} "
                           "(a singular or exploding transform); try a lower flat_lr")
    return BlockLosses(identity_loss, init_loss, final_loss), transforms, wrappers


def transformed_gram(h: torch.Tensor, s: torch.Tensor, rot) -> torch.Tensor:
    """P^T diag(1/s) H diag(1/s) P (fp64): the Gram matrix of the module's inputs (x / s) P."""
    inv = 1.0 / s.double().to(h.device)
    a = h.double() * inv[:, None] * inv[None, :]
    return rot.apply(rot.apply(a).t().contiguous())


@torch.no_grad()
def _deploy(job: BlockJob, transforms: list[KronTransform], wrappers: dict[str, FlatLinear],
            settings: TrainSettings) -> dict[str, LinearPlan]:
    """Fold every group's scale first (a producer may be another group's member), then quantize
    each member's current weight in the transformed basis (RTN, or GPTQ with the transformed
    modality-weighted Hessian)."""
    deployed = [t.deployed() for t in transforms]
    folded = [fold_scale(job.block, gj, s.to(next(iter(gj.linears.values())).weight.device))
              for gj, (s, _) in zip(job.groups, deployed)]
    online = [rot for _, rot in deployed]  # the transform each module applies at run time
    for gi, (v_name, _) in head_merges(job).items():  # d is in v_proj's rows already (folded)
        v, rot = job.block.get_submodule(v_name), deployed[gi][1]
        right = rot.right.to(v.weight.device, torch.float64)
        v.weight.copy_(merge_head_factor(v.weight.double(), right).to(v.weight.dtype))
        if v.bias is not None:
            v.bias.copy_(merge_head_factor(v.bias.double()[:, None], right)[:, 0].to(v.bias.dtype))
        online[gi] = Rotation.kron(rot.left, torch.eye(rot.right.shape[0], device=rot.right.device))
    plans = {}
    for gj, (s, rot), is_folded, online_rot in zip(job.groups, deployed, folded, online):
        for name, lin in gj.linears.items():
            w = prepare_weight(lin.weight, None if is_folded else s.to(lin.weight.device), rot)
            w = wrappers[name].clip_weight(w.to(next(wrappers[name].parameters()).device)).to(lin.weight.device)
            if settings.weights == "gptq":
                h = transformed_gram(gj.record.gram_matrix(*gj.coeffs[name]), s, rot)
                qw = gptq_quantize(w, h, job.fmt, job.group_size, settings.gptq_damp, settings.gptq_block_size)
            else:
                qw = quantize_weight(w, job.fmt, job.group_size)
            plans[name] = LinearPlan(qw, smooth=None if is_folded else s, input_scale=s if is_folded else None,
                                     rotation=online_rot, act_clip_ratio=wrappers[name].act_clip_ratio())
    return plans
