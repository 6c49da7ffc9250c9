"""Methods on single Linear groups with planted structure: GPTQ vs RTN on the layer loss,
equalization vs RTN with outlier channels, clipping, and MBQ's modality weighting."""
import pytest
import torch

from modaq import formats
from modaq.calib.adapters.base import LinearGroup
from modaq.calib.methods.base import GroupJob
from modaq.calib.methods.common import dequantize, fake_weight, quantize_weight, token_error, token_weights
from modaq.calib.methods.equalize import clip_weight, search_scale
from modaq.calib.methods.gptq import gptq_quantize
from modaq.calib.modality import ModalityStats, ModalityWeights
from modaq.calib.records import InputRecord
from modaq.nn import QUANT_LINEARS

K, N = 256, 96


pytestmark = pytest.mark.usefixtures("one_thread")


def _correlated_inputs(t: int, gen: torch.Generator) -> torch.Tensor:
    """Tokens with correlated channels and a few outlier channels (what trained models show)."""
    mix = torch.randn(K, K, generator=gen) / K ** 0.5 + torch.eye(K)
    x = torch.randn(t, K, generator=gen) @ mix
    x[:, :4] *= 25.0
    return x


def _record(x: torch.Tensor, vision: torch.Tensor, need_gram: bool = False) -> InputRecord:
    rec = InputRecord(K, quota=x.shape[0], need_gram=need_gram, store_device=torch.device("cpu"),
                      generator=torch.Generator().manual_seed(0))
    rec.vision_mask = vision
    rec.hook(None, (x,), None)
    return rec


def _group_job(x, vision, weights: dict, coeffs=(None, None)) -> GroupJob:
    rec = _record(x, vision)
    lins = {}
    for name, w in weights.items():
        lin = torch.nn.Linear(K, w.shape[0], bias=False)
        lin.weight.data.copy_(w)
        lins[name] = lin
    mw = ModalityWeights("mbq") if coeffs != (None, None) else ModalityWeights("none")
    stats = ModalityStats(rec.count[True], rec.count[False], grad_vision=coeffs[0], grad_text=coeffs[1])
    return GroupJob(LinearGroup(tuple(weights)), lins, rec, {n: mw.coefficients(stats) for n in weights})


def _layer_loss(x, w, wq):
    return float((x @ (w - wq).t()).square().sum())


@pytest.mark.parametrize("fmt_name", ["w4a16", "w3a16", "w4a8", "w8a8"])
def test_gptq_beats_rtn_on_layer_loss(fmt_name):
    gen = torch.Generator().manual_seed(1)
    fmt = formats.get_format(fmt_name)
    gs = 128 if fmt.weight_only else None
    x = _correlated_inputs(1024, gen)
    w = torch.randn(N, K, generator=gen) / K ** 0.5
    rtn = dequantize(quantize_weight(w, fmt, gs), gs)
    qw = gptq_quantize(w, x.t() @ x, fmt, gs)
    gptq = dequantize(qw, gs)
    assert _layer_loss(x, w, gptq) < 0.7 * _layer_loss(x, w, rtn)
    # the logical tensors are valid module inputs and reproduce the dequantized weight exactly
    mod = QUANT_LINEARS[fmt_name].from_quantized(qw, None, group_size=gs, dtype=torch.float32)
    if fmt.weight_only:
        assert qw.scale.dtype == torch.float16 and int(qw.q.max()) < 2 ** fmt.weight_bits
        y = mod(x[:8])
        torch.testing.assert_close(y, x[:8] @ gptq.t(), rtol=1e-4, atol=1e-4)


def test_gptq_modality_weighted_hessian_favors_the_heavy_modality():
    gen = torch.Generator().manual_seed(2)
    fmt = formats.get_format("w3a16")
    xv = _correlated_inputs(512, gen)
    xt = torch.randn(512, K, generator=gen) * 0.5
    w = torch.randn(N, K, generator=gen) / K ** 0.5
    hv, ht = xv.t() @ xv, xt.t() @ xt
    plain = dequantize(gptq_quantize(w, hv + ht, fmt, 128), 128)
    text_heavy = dequantize(gptq_quantize(w, 0.01 * hv + ht, fmt, 128), 128)
    assert _layer_loss(xt, w, text_heavy) < _layer_loss(xt, w, plain)


@pytest.mark.parametrize("fmt_name,style", [("w3a16", "awq"), ("w4a8", "sq"), ("w4a8", "awq"), ("w4a16", "sq")])
def test_equalization_beats_rtn_with_outlier_channels(fmt_name, style):
    gen = torch.Generator().manual_seed(3)
    fmt = formats.get_format(fmt_name)
    gs = 128 if fmt.weight_only else None
    x = _correlated_inputs(512, gen)
    job = _group_job(x, None, {"a": torch.randn(N, K, generator=gen) / K ** 0.5,
                               "b": torch.randn(N // 2, K, generator=gen) / K ** 0.5})
    s, best, base = search_scale(job, fmt, gs, style, "mse", grid=20)
    assert s is not None and best < 0.8 * base
    # the equalized layers really compute ~ x W^T better than RTN
    for lin in job.linears.values():
        w = lin.weight.detach()
        xq = formats.fake_quantize_act(x / s, fmt.act_bits)
        eq = xq @ fake_weight(w * s, fmt, gs).t()
        rtn = formats.fake_quantize_act(x, fmt.act_bits) @ fake_weight(w, fmt, gs).t()
        ref = x @ w.t()
        assert (eq - ref).square().sum() < (rtn - ref).square().sum()


def test_clipping_never_hurts_its_objective():
    gen = torch.Generator().manual_seed(4)
    fmt = formats.get_format("w3a16")
    x = torch.randn(256, K, generator=gen)
    w = torch.randn(N, K, generator=gen) / K ** 0.5
    w[:, 7] *= 8.0  # a column of large weights widens every group's range
    tw = torch.ones(256)
    clipped = clip_weight(w, x, tw, fmt, 128, "mse", grid=20, min_ratio=0.5)
    assert (clipped.abs() <= w.abs() + 1e-7).all()
    err = _layer_loss(x, w, fake_weight(clipped, fmt, 128))
    assert err < _layer_loss(x, w, fake_weight(w, fmt, 128))


def _modality_tokens(gen):
    """Text tokens with outliers in channels 0..3; 8x more vision tokens, 6x louder, with their own
    outliers in channels 8..11 (the heavy-tailed vision activations of VLM decoders)."""
    xt = torch.randn(64, K, generator=gen)
    xt[:, :4] *= 20.0
    xv = torch.randn(512, K, generator=gen) * 6.0
    xv[:, 8:12] *= 40.0
    x = torch.cat([xv, xt])
    vision = torch.cat([torch.ones(512, dtype=torch.bool), torch.zeros(64, dtype=torch.bool)])
    return x, vision


@pytest.mark.parametrize("fmt_name,style,loss", [("w4a8", "sq", "mae"), ("w3a16", "awq", "mae"),
                                                 ("w4a8", "sq", "mse")])
def test_mbq_weighting_moves_scales_toward_text_fidelity(fmt_name, style, loss):
    """|g_l| >> |g_v| (as MBQ measures on VLMs): the weighted search picks other factors and the
    text tokens' reconstruction error drops against the unweighted search on the same data."""
    gen = torch.Generator().manual_seed(5)
    fmt = formats.get_format(fmt_name)
    gs = 128 if fmt.weight_only else None
    x, vision = _modality_tokens(gen)
    w = {"q": torch.randn(N, K, generator=gen) / K ** 0.5}
    plain = _group_job(x, vision, w)
    weighted = _group_job(x, vision, w, coeffs=(0.01, 1.0))
    assert weighted.coeffs["q"][1] == pytest.approx(100 * weighted.coeffs["q"][0])
    s_plain = search_scale(plain, fmt, gs, style, loss, 20)[0]
    s_mbq = search_scale(weighted, fmt, gs, style, loss, 20)[0]

    def text_error(s):
        xt = x[~vision]
        wt = w["q"]
        xs = xt if s is None else xt / s
        ws = wt if s is None else wt * s
        dy = formats.fake_quantize_act(xs, fmt.act_bits) @ fake_weight(ws, fmt, gs).t() - xt @ wt.t()
        return float(token_error(dy, loss).sum())

    assert s_plain is None or s_mbq is None or not torch.allclose(s_plain, s_mbq)
    assert text_error(s_mbq) < 0.9 * text_error(s_plain)


def test_token_weights_follow_modality_coefficients():
    x, vision = _modality_tokens(torch.Generator().manual_seed(6))
    rec = _record(x, vision)
    tw = token_weights(rec, (0.5, 2.0))
    assert torch.all(tw[rec.vision] == 0.5) and torch.all(tw[~rec.vision] == 2.0)
    assert rec.count == {True: 512, False: 64}
