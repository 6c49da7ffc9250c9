"""FlatQuant transforms (calib/rotation/transforms.py, train.py) on planted blocks: the transform
pair is exact in FP, training lowers the block loss against identity transforms (plain RTN),
the deployed modaq module computes what training optimized (activation clip ratio included),
learned activation clipping lowers the loss on per-token outliers, and the scale-ratio modality
weighting moves the optimum toward text fidelity."""
import copy

import pytest
import torch
from torch import nn

from modaq import formats
from modaq.calib import QuantConfig
from modaq.calib.adapters.base import LinearGroup
from modaq.calib.methods.base import BlockData, BlockJob, GroupJob
from modaq.calib.modality import ModalityStats, ModalityWeights
from modaq.calib.records import InputRecord
from modaq.calib.rotation.train import TrainSettings, train_block
from modaq.calib.rotation.transforms import FlatLinear, KronTransform, cached_weights
from modaq.nn import QUANT_LINEARS, RMSNorm

K, N = 128, 64
pytestmark = pytest.mark.usefixtures("one_thread")


class NormLinear(nn.Module):
    """A minimal block: RMSNorm (with outlier channels) -> Linear; the norm can absorb scales."""

    def __init__(self, gen):
        super().__init__()
        self.norm = RMSNorm(K)
        self.fc = nn.Linear(K, N)
        with torch.no_grad():
            self.norm.weight.copy_(1 + torch.rand(K, generator=gen))
            self.norm.weight[:4] *= 25.0
            self.fc.weight.copy_(torch.randn(N, K, generator=gen) / K ** 0.5)
            self.fc.bias.copy_(0.1 * torch.randn(N, generator=gen))

    def forward(self, x):
        return self.fc(self.norm(x))


class PlainLinear(nn.Module):
    """A block that is one Linear without a producer: the learned scale stays in the module."""

    def __init__(self, gen):
        super().__init__()
        self.fc = nn.Linear(K, N)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(N, K, generator=gen) / K ** 0.5)

    def forward(self, x):
        return self.fc(x)


def _modality_tokens(gen, samples=4):
    """Per sample 96 vision tokens, 8x louder with outliers of their own (channels 8..11), and
    16 text tokens with outliers in channels 0..3 (the decoder-input picture of the rotation paper)."""
    xs, masks = [], []
    for _ in range(samples):
        xv = torch.randn(96, K, generator=gen) * 8.0
        xv[:, 8:12] *= 30.0
        xt = torch.randn(16, K, generator=gen)
        xt[:, :4] *= 20.0
        xs.append(torch.cat([xv, xt]))
        masks.append(torch.cat([torch.ones(96, dtype=torch.bool), torch.zeros(16, dtype=torch.bool)]))
    return xs, masks


def _job(block, xs, masks, fmt, coeffs):
    rec = InputRecord(K, quota=10_000, need_gram=True, store_device=torch.device("cpu"),
                      generator=torch.Generator().manual_seed(0))
    handle = block.fc.register_forward_hook(rec.hook)
    with torch.no_grad():
        targets = []
        for x, m in zip(xs, masks):
            rec.vision_mask = m
            targets.append(block(x))
    handle.remove()
    group = LinearGroup(("fc",), "norm", "norm") if hasattr(block, "norm") else LinearGroup(("fc",))
    gj = GroupJob(group, {"fc": block.fc}, rec, {"fc": (1.0, 1.0)})
    data = BlockData(lambda b, i, dtype=None: b(xs[i]), targets, masks, coeffs)
    return BlockJob(block, formats.get_format(fmt), None, [gj], QuantConfig(progress=False), "block", data)


def _deploy(block, plans, act_clip_ratio=None):
    plan = plans["fc"]
    ratio = plan.act_clip_ratio if act_clip_ratio is None else act_clip_ratio
    block.fc = QUANT_LINEARS["w4a4"].from_quantized(plan.weight, block.fc.bias, smooth=plan.smooth,
                                                    rotation=plan.rotation, dtype=torch.float32,
                                                    act_clip_ratio=ratio)
    return block


def _spiky_tokens(gen, samples=4, tokens=64, spike=30.0):
    """Tokens with one +-30 spike each at a random channel (a per-token outlier that no
    per-channel scale absorbs): after the transform the tails stay heavy, so clipping pays."""
    xs = []
    for _ in range(samples):
        x = torch.randn(tokens, K, generator=gen)
        sign = torch.sign(torch.randn(tokens, generator=gen))
        x[torch.arange(tokens), torch.randint(0, K, (tokens,), generator=gen)] += spike * sign
        xs.append(x)
    return xs, [torch.zeros(tokens, dtype=torch.bool) for _ in xs]


def test_kron_transform_pair_is_exact_in_fp():
    gen = torch.Generator().manual_seed(0)
    t = KronTransform(K, 0.5 + torch.rand(K, generator=gen), seed=3)
    x, w = torch.randn(10, K, generator=gen), torch.randn(N, K, generator=gen)
    torch.testing.assert_close(t.act(x) @ t.weight(w).t(), x @ w.t(), rtol=1e-4, atol=1e-4)
    s, rot = t.deployed()
    assert rot.kind == "kron" and rot.left.shape == (8, 8) and rot.right.shape == (16, 16)
    torch.testing.assert_close(rot.apply(x / s), t.act(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="weight-activation format"):
        FlatLinear(nn.Linear(K, N), t, formats.get_format("w4a16"), clip=True)


def test_cached_weights_give_the_same_loss_and_gradients():
    """One optimizer step's forwards share the fake-quantized weight (cached_weights): same loss
    and same gradients as recomputing it per forward, and the cache is cleared on exit."""
    gen = torch.Generator().manual_seed(5)
    t = KronTransform(K, 0.5 + torch.rand(K, generator=gen), seed=3)
    lin = nn.Linear(K, N)
    flats = [FlatLinear(lin, t, formats.get_format("w4a8"), clip=True, act_clip=True) for _ in range(2)]
    xs = [torch.randn(6, K, generator=gen) for _ in range(3)]
    params = list(t.parameters()) + [p for f in flats for p in (*f.clip.parameters(), *f.act_clip.parameters())]

    def loss_and_grads():
        for p in params:
            p.grad = None
        loss = sum(f(x).square().sum() for f in flats for x in xs)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    plain_loss, plain_grads = loss_and_grads()
    with cached_weights(flats):
        assert flats[0]._weight is not None and t._inverses is not None
        cached_loss, cached_grads = loss_and_grads()
    assert flats[0]._weight is None and t._inverses is None
    torch.testing.assert_close(cached_loss, plain_loss, rtol=1e-6, atol=0)
    for a, b in zip(cached_grads, plain_grads):  # fp32 summation order differs: compare norm-wise
        assert b.norm() > 0 and (a - b).norm() <= 1e-5 * b.norm(), float((a - b).norm() / b.norm())


def test_training_lowers_the_block_loss_and_the_module_deploys_it():
    gen = torch.Generator().manual_seed(1)
    block = NormLinear(gen)
    xs, masks = _modality_tokens(gen)
    job = _job(block, xs, masks, "w4a4", (1.0, 1.0))
    norm_before = block.norm.weight.detach().clone()
    plans, losses = train_block(job, TrainSettings(epochs=8))
    assert losses.init < losses.identity and losses.final < 0.8 * losses.init, vars(losses)
    plan = plans["fc"]
    # the scale folded into the norm (its producer); the Kronecker transform stays online
    assert plan.smooth is None and plan.input_scale is not None and plan.rotation.kind == "kron"
    torch.testing.assert_close(block.norm.weight.detach(), norm_before / plan.input_scale)
    assert type(block.fc) is nn.Linear  # the method leaves swapping to the engine
    deployed = _deploy(block, plans)
    with torch.no_grad():
        loss = sum(float((deployed(x) - y).square().sum()) for x, y in zip(xs, job.data.targets))
    # the fused module (quantize_act with the Kronecker transform, int GEMM) reproduces the
    # training loss up to rounding-boundary flips
    assert loss == pytest.approx(losses.final, rel=1e-2)  # measured 2e-7
    assert loss < 0.5 * losses.identity


def test_learned_activation_clipping_lowers_the_block_loss():
    """FlatQuant's LAC on planted per-token outliers: trained with the activation clip ratio the
    block loss ends no higher than without it (measured 0.915-0.95x over generator seeds 1-8), the ratio
    moved below its init sigmoid(4) = 0.982, and the deployed module (quantize_act with
    clip_ratio) reproduces the training loss, which the plain absmax (ratio 1) would raise."""
    gen = torch.Generator().manual_seed(1)
    block = PlainLinear(gen)
    xs, masks = _spiky_tokens(gen)
    final, plans = {}, {}
    for act_clip in (False, True):
        job = _job(copy.deepcopy(block), xs, masks, "w4a4", (1.0, 1.0))
        plans[act_clip], losses = train_block(job, TrainSettings(epochs=15, batch=1, act_clip=act_clip))
        final[act_clip] = losses.final
    assert final[True] < final[False], final  # measured 0.921x
    assert plans[False]["fc"].act_clip_ratio == 1.0
    ratio = plans[True]["fc"].act_clip_ratio
    assert 0.5 < ratio < 0.95, ratio  # measured 0.910

    def deployed_loss(act_clip_ratio=None):
        mod = _deploy(copy.deepcopy(block), plans[True], act_clip_ratio)
        assert mod.fc.act_clip_ratio == (ratio if act_clip_ratio is None else act_clip_ratio)
        with torch.no_grad():
            return sum(float((mod(x) - y).square().sum()) for x, y in zip(xs, job.data.targets))
    assert deployed_loss() == pytest.approx(final[True], rel=1e-3)  # measured 3e-8
    assert deployed_loss(1.0) > final[True]  # measured +6.8%


def test_flat_act_clip_config_reaches_the_training():
    assert TrainSettings.from_config(QuantConfig(method="flatquant", format="w4a4", progress=False)).act_clip
    cfg = QuantConfig(method="flatquant", format="w4a4", flat_act_clip=False, flat_weight_clip=False, progress=False)
    settings = TrainSettings.from_config(cfg)
    assert not settings.act_clip and not settings.weight_clip and settings.clip_lr == cfg.flat_clip_lr


def _text_error_after_training(coeffs, seed=2):
    gen = torch.Generator().manual_seed(seed)
    block = PlainLinear(gen)
    xs, masks = _modality_tokens(gen)
    job = _job(block, xs, masks, "w4a4", coeffs)
    targets = job.data.targets
    plans, _ = train_block(job, TrainSettings(epochs=8))
    assert plans["fc"].smooth is not None and plans["fc"].input_scale is None  # no producer: kept in the module
    deployed = _deploy(block, plans)
    with torch.no_grad():
        err = {True: 0.0, False: 0.0}
        for x, m, y in zip(xs, masks, targets):
            e = (deployed(x) - y).square().sum(-1)
            for flag in (True, False):
                err[flag] += float(e[m == flag].sum())
    return err[False], err[True]


def test_scale_ratio_weighting_moves_the_optimum_toward_text_fidelity():
    """The rotation paper's eq. 14: a_v = beta * (S_txt / S_vis) / |V|, a_t = 1 / |T| from the
    FP outputs' per-modality scales; against the unweighted mean (1 / N each) the text tokens'
    error drops and the vision tokens' error rises (Theorem 1's trade-off)."""
    n_v, n_t = 4 * 96, 4 * 16
    stats = ModalityStats(n_v, n_t, out_scale_vision=8.0, out_scale_text=1.0)
    weighted = ModalityWeights("scale_ratio", beta=0.1).coefficients(stats)
    plain = ModalityWeights("none").coefficients(stats)
    assert weighted[0] / weighted[1] == pytest.approx(0.1 * (1.0 / 8.0) * n_t / n_v)
    text_w, vis_w = _text_error_after_training(weighted)
    text_p, vis_p = _text_error_after_training(plain)
    assert text_w < 0.5 * text_p, (text_w, text_p)  # measured 0.27x
    assert vis_w > vis_p


def test_a_diverged_training_raises_instead_of_deploying_nan(monkeypatch):
    """A transform that became singular (inv_ex does not check) gives a non-finite block loss:
    train_block raises a clear error and leaves the block's weights as they were."""
    import modaq.calib.rotation.train as train

    def collapse(job, transforms, wrappers, settings, weights):
        with torch.no_grad():
            transforms[0].left.zero_()
    monkeypatch.setattr(train, "_optimize", collapse)
    gen = torch.Generator().manual_seed(2)
    block = NormLinear(gen)
    xs, masks = _modality_tokens(gen)
    before = {n: p.detach().clone() for n, p in block.named_parameters()}
    with pytest.raises(RuntimeError, match="FlatQuant training of block block: the block loss became"):
        train_block(_job(block, xs, masks, "w4a8", (1.0, 1.0)), TrainSettings(epochs=1))
    for n, p in block.named_parameters():
        torch.testing.assert_close(p.detach(), before[n])


# ------------------------------------------------- o_proj's per-head factor merged into v_proj

HEADS, HEAD_DIM, TOKENS = 4, 32, 48


class ValueOut(nn.Module):
    """Attention's value path with fixed attention weights: o_proj(A @ v_proj(x)), A mixing
    tokens the same way in every head (what softmax(QK^T) does per head, linearly in V)."""

    def __init__(self, gen, head_dim=HEAD_DIM):
        super().__init__()
        self.attn = nn.Module()
        self.attn.head_dim = head_dim
        self.attn.v_proj = nn.Linear(K, HEADS * HEAD_DIM)
        self.attn.o_proj = nn.Linear(HEADS * HEAD_DIM, N)
        a = torch.tril(torch.rand(TOKENS, TOKENS, generator=gen))
        self.register_buffer("mix", a / a.sum(-1, keepdim=True))
        with torch.no_grad():
            for lin in (self.attn.v_proj, self.attn.o_proj):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) / lin.in_features ** 0.5)
                lin.bias.copy_(0.1 * torch.randn(lin.out_features, generator=gen))

    def forward(self, x):
        return self.attn.o_proj(self.mix @ self.attn.v_proj(x))


def _value_out_job(block, xs, masks, fmt="w4a8"):
    groups = [LinearGroup(("attn.v_proj",)), LinearGroup(("attn.o_proj",), "attn.v_proj", "linear")]
    recs = {}
    for g in groups:
        name = g.linears[0]
        recs[name] = InputRecord(block.get_submodule(name).in_features, quota=10_000, need_gram=False,
                                 store_device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    handles = [block.get_submodule(n).register_forward_hook(r.hook) for n, r in recs.items()]
    with torch.no_grad():
        targets = []
        for x, m in zip(xs, masks):
            for r in recs.values():
                r.vision_mask = m
            targets.append(block(x))
    for h in handles:
        h.remove()
    gjs = [GroupJob(g, {g.linears[0]: block.get_submodule(g.linears[0])}, recs[g.linears[0]],
                    {g.linears[0]: (1.0, 1.0)}) for g in groups]
    data = BlockData(lambda b, i, dtype=None: b(xs[i]), targets, masks, (1.0, 1.0))
    return BlockJob(block, formats.get_format(fmt), None, gjs, QuantConfig(progress=False), "block", data)


def test_head_factor_merge_is_exact_in_fp():
    """d and P2 of o_proj's transform moved into v_proj's rows (and bias) leave P1 (x) I online:
    o_proj(A v'(x)) with the transformed weight equals the FP o_proj(A v(x))."""
    gen = torch.Generator().manual_seed(7)
    block = ValueOut(gen)
    x = torch.randn(TOKENS, K, generator=gen)
    t = KronTransform(HEADS * HEAD_DIM, 0.5 + torch.rand(HEADS * HEAD_DIM, generator=gen), seed=4,
                      factors=(HEADS, HEAD_DIM))
    v, o = block.attn.v_proj, block.attn.o_proj
    with torch.no_grad():
        ref = block(x)
        v_out = x @ t.merge_rows(v.weight).t() + t.merge_bias(v.bias)
        y = t.act_left(block.mix @ v_out) @ t.weight(o.weight).t() + o.bias
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


def test_training_merges_o_proj_head_factor_into_v_proj():
    """With v_proj as o_proj's producer (no GQA) the trained o_proj transform is per head, only
    P1 (x) I stays online, v_proj's weight and bias carry d and P2, and the deployed modules
    reproduce the training loss (training saw the merged form)."""
    gen = torch.Generator().manual_seed(3)
    block = ValueOut(gen)
    xs = [torch.randn(TOKENS, K, generator=gen) * (1 + 20 * (torch.arange(K) < 4)) for _ in range(4)]
    masks = [torch.zeros(TOKENS, dtype=torch.bool) for _ in xs]
    job = _value_out_job(block, xs, masks)
    plans, losses = train_block(job, TrainSettings(epochs=6))
    assert losses.final < losses.identity, vars(losses)
    rot = plans["attn.o_proj"].rotation
    assert rot.left.shape == (HEADS, HEADS) and torch.equal(rot.right, torch.eye(HEAD_DIM))
    assert plans["attn.o_proj"].input_scale is not None  # d folded into v_proj's rows
    for name in ("attn.v_proj", "attn.o_proj"):
        plan, lin = plans[name], block.get_submodule(name)
        mod = QUANT_LINEARS["w4a8"].from_quantized(plan.weight, lin.bias, smooth=plan.smooth, rotation=plan.rotation,
                                                   dtype=torch.float32, act_clip_ratio=plan.act_clip_ratio)
        setattr(block.attn, name.split(".")[1], mod)
    with torch.no_grad():
        loss = sum(float((block(x) - y).square().sum()) for x, y in zip(xs, job.data.targets))
    assert loss == pytest.approx(losses.final, rel=1e-2)


def test_no_head_merge_without_an_attention_producer():
    """The merge needs v_proj of the same attention module as producer, with a head_dim: an
    MLP's up -> down pair (SiLU(gate) * up is not linear per block) or a GQA o_proj (no producer)
    keeps its full P1 (x) P2 online."""
    from modaq.calib.rotation.train import head_merges
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(TOKENS, K, generator=gen)]
    masks = [torch.zeros(TOKENS, dtype=torch.bool)]
    assert head_merges(_value_out_job(ValueOut(gen), xs, masks)) == {1: ("attn.v_proj", HEAD_DIM)}
    assert head_merges(_value_out_job(ValueOut(gen, head_dim=None), xs, masks)) == {}
    job = _value_out_job(ValueOut(gen), xs, masks)
    job.groups[1].group = LinearGroup(("attn.o_proj",))  # as the adapter builds it under GQA
    assert head_merges(job) == {}
