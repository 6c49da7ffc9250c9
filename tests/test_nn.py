"""Quantized Linear modules: drop-in accuracy, smoothing / rotation folding, state_dict round
trip, rebuild from config, torch.compile(fullgraph=True) on CPU, and construction errors."""
import json

import pytest
import torch

from modaq import formats as F
from modaq import ops
from modaq.nn import (QUANT_LINEARS, Rotation, W3A16Linear, W4A4Linear, W4A8Linear, W8A8Linear, from_config,
                      prepare_weight)

# relative output error of RTN on a random Linear: loose bounds that still catch a wrong kernel
MAX_ERR = {"w3a16": 0.3, "w4a16": 0.15, "w4a8": 0.2, "w4a4": 0.3, "w8a8": 0.03}


@torch.no_grad()
def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def kron_rotation(n1, n2):
    q1, _ = torch.linalg.qr(torch.randn(n1, n1))
    return Rotation.kron(q1 + 0.1 * torch.eye(n1), torch.eye(n2) + 0.05 * torch.randn(n2, n2))


@pytest.mark.parametrize("fmt", sorted(QUANT_LINEARS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_from_linear_approximates_the_linear(fmt, dtype):
    lin = torch.nn.Linear(256, 48).to(dtype)
    mod = QUANT_LINEARS[fmt].from_linear(lin)
    x = torch.randn(3, 5, 256, dtype=dtype)
    y = mod(x)
    assert y.shape == (3, 5, 48) and y.dtype == dtype
    assert rel_err(y, lin(x)) < MAX_ERR[fmt]


@pytest.mark.parametrize("fmt", sorted(QUANT_LINEARS))
@pytest.mark.parametrize("rotation", ["hadamard", "kron"])
def test_smoothing_and_rotation_fold_exactly_before_quantization(fmt, rotation):
    lin = torch.nn.Linear(128, 32)
    smooth = torch.rand(128) + 0.5
    rot = Rotation.random_hadamard(128, seed=2) if rotation == "hadamard" else kron_rotation(8, 16)
    mod = QUANT_LINEARS[fmt].from_linear(lin, smooth=smooth, rotation=rot)
    x = torch.randn(6, 128)
    assert rel_err(mod(x), lin(x)) < MAX_ERR[fmt] * 1.5
    w = prepare_weight(lin.weight, smooth, rot)  # unquantized folded weight: exact identity
    assert rel_err(rot.apply(x / smooth) @ w.t() + lin.bias, lin(x)) < 1e-5


def test_rotation_spreads_an_outlier_channel():
    lin = torch.nn.Linear(256, 64)
    x = torch.randn(32, 256)
    x[:, 7] *= 100  # one outlier channel leaves the other channels few quantization levels
    hadamard = Rotation.random_hadamard(256, seed=0)
    for cls, gain in ((W8A8Linear, 0.5), (W4A4Linear, 0.9)):
        plain, rotated = cls.from_linear(lin), cls.from_linear(lin, rotation=hadamard)
        assert rel_err(rotated(x), lin(x)) < gain * rel_err(plain(x), lin(x))


@pytest.mark.parametrize("fmt", sorted(QUANT_LINEARS))
def test_state_dict_and_config_round_trip(fmt):
    lin = torch.nn.Linear(128, 24, bias=(fmt != "w8a8"))
    rot = Rotation.random_hadamard(128, seed=1) if fmt in ("w4a4", "w3a16") else None
    mod = QUANT_LINEARS[fmt].from_linear(lin, rotation=rot, smooth=torch.rand(128) + 0.5)
    rebuilt = from_config(mod.quant_config(), dtype=torch.float32)
    assert [n for n, _ in rebuilt.named_buffers()] == [n for n, _ in mod.named_buffers()]
    rebuilt.load_state_dict(mod.state_dict())
    x = torch.randn(4, 128)
    assert torch.equal(rebuilt(x), mod(x))
    text = repr(mod)
    assert f"format={fmt}" in text and "in_features=128" in text


def test_kron_config_round_trip():
    mod = W8A8Linear.from_linear(torch.nn.Linear(128, 8), rotation=kron_rotation(8, 16))
    cfg = mod.quant_config()
    assert cfg["rotation"] == "kron" and cfg["kron_shape"] == [8, 16]
    rebuilt = from_config(cfg, dtype=torch.float32)
    rebuilt.load_state_dict(mod.state_dict())
    x = torch.randn(2, 128)
    assert torch.equal(rebuilt(x), mod(x))


@pytest.mark.parametrize("fmt", ["w4a8", "w4a4", "w8a8"])
@pytest.mark.parametrize("rotation", [None, "hadamard", "kron"])
def test_act_clip_ratio_round_trips_and_is_applied(fmt, rotation):
    lin = torch.nn.Linear(128, 24)
    rot = {None: None, "hadamard": Rotation.random_hadamard(128, seed=3), "kron": kron_rotation(8, 16)}[rotation]
    mod = QUANT_LINEARS[fmt].from_linear(lin, rotation=rot, act_clip_ratio=0.8137)
    plain = QUANT_LINEARS[fmt].from_linear(lin, rotation=rot)
    cfg = mod.quant_config()
    assert cfg["act_clip_ratio"] == 0.8137 and plain.quant_config()["act_clip_ratio"] == 1.0
    assert "act_clip_ratio=0.8137" in repr(mod) and "act_clip_ratio" not in repr(plain)
    rebuilt = from_config(json.loads(json.dumps(cfg)), dtype=torch.float32)  # as save_quantized writes it
    rebuilt.load_state_dict(mod.state_dict())
    assert rebuilt.act_clip_ratio == 0.8137
    x = torch.randn(6, 128)
    x[:, 3] *= 30
    assert torch.equal(rebuilt(x), mod(x))
    # the module feeds its ratio to quantize_act (not the plain absmax)
    xq, xs = ops.quantize_act(x, mod.fmt.act_bits, mod.smooth, mod.hadamard_signs, mod.kron_left,
                              mod.kron_right, clip_ratio=0.8137)
    gemm = getattr(ops, f"{fmt}_gemm")
    assert torch.equal(mod(x), gemm(xq, xs, mod.qweight, mod.w_scale, mod.bias, x.dtype))
    assert not torch.equal(mod(x), plain(x))
    del cfg["act_clip_ratio"]  # a config saved before activation clipping existed
    assert from_config(cfg).act_clip_ratio == 1.0


def test_act_clip_ratio_errors_and_compile():
    with pytest.raises(ValueError, match=r"act_clip_ratio: expected a float in \(0, 1\]"):
        W4A4Linear(128, 8, act_clip_ratio=1.2)
    with pytest.raises(ValueError, match="act_clip_ratio"):
        W4A8Linear.from_linear(torch.nn.Linear(128, 8), act_clip_ratio=0.0)
    with pytest.raises(TypeError, match="act_clip_ratio"):
        W8A8Linear(128, 8, act_clip_ratio=torch.tensor(0.5))
    with pytest.raises(ValueError, match="act_clip_ratio: w4a16 does not quantize activations"):
        QUANT_LINEARS["w4a16"](128, 8, act_clip_ratio=0.9)
    assert "act_clip_ratio" not in W3A16Linear.from_linear(torch.nn.Linear(128, 8)).quant_config()
    mod = W4A4Linear.from_linear(torch.nn.Linear(128, 32).to(torch.bfloat16), act_clip_ratio=0.75,
                                 rotation=Rotation.random_hadamard(128, 0))
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    assert torch.equal(torch.compile(mod, fullgraph=True, backend="aot_eager")(x), mod(x))


def test_from_quantized_uses_the_given_integers():
    w = torch.randn(16, 128)
    qw = F.quantize_weight_asym(w, 3, 64)
    mod = W3A16Linear.from_quantized(qw, None, group_size=64, dtype=torch.float32)
    x = torch.randn(2, 128)
    ref = x @ F.dequantize_weight_asym(*qw, 64).t()
    assert rel_err(mod(x), ref) < 1e-6


def test_torch_compile_fullgraph_on_cpu():
    lin = torch.nn.Linear(128, 32).to(torch.bfloat16)
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    for fmt in ("w4a16", "w4a8"):
        mod = QUANT_LINEARS[fmt].from_linear(lin, rotation=Rotation.random_hadamard(128, 0) if fmt == "w4a8" else None)
        compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(x), mod(x))
    mod = W3A16Linear.from_linear(lin)
    assert torch.allclose(torch.compile(mod, fullgraph=True)(x).float(), mod(x).float(), atol=1e-2)


def test_construction_errors_name_the_argument():
    with pytest.raises(TypeError, match="linear: expected torch.nn.Linear"):
        W4A8Linear.from_linear(torch.nn.Conv1d(4, 4, 1))
    with pytest.raises(ValueError, match="in_features: 100 must be divisible by group_size"):
        W3A16Linear(100, 8)
    with pytest.raises(ValueError, match="group_size: w4a8 uses per-channel"):
        W4A8Linear(128, 8, group_size=128)
    with pytest.raises(ValueError, match="rotation: size 64 does not match"):
        W4A8Linear.from_linear(torch.nn.Linear(128, 8), rotation=Rotation.random_hadamard(64, 0))
    with pytest.raises(ValueError, match="kron_shape"):
        W4A8Linear(128, 8, rotation="kron", kron_shape=(8, 8))
    with pytest.raises(ValueError, match="rotation: expected"):
        W4A8Linear(128, 8, rotation="givens")
    with pytest.raises(ValueError, match="smooth: expected shape"):
        W4A8Linear.from_linear(torch.nn.Linear(128, 8), smooth=torch.ones(3))
