"""Formats: RTN quantizers follow their definitions; pack / unpack round-trip bit for bit."""
import pytest
import torch

from modaq import formats as F

ODD_SHAPES = [(1, 8), (3, 24), (7, 136), (33, 264)]


@pytest.mark.parametrize("n,k", ODD_SHAPES)
def test_int3_round_trip_is_bit_exact_and_dense(n, k):
    q = torch.randint(0, 8, (n, k), dtype=torch.uint8)
    packed = F.pack_int3(q)
    assert packed.shape == (n, k * 3 // 8)  # 32 values in 12 bytes: no padding
    assert torch.equal(F.unpack_int3(packed), q)


def test_int3_bit_order_is_little_endian():
    q = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]], dtype=torch.uint8)
    word = sum(int(v) << (3 * j) for j, v in enumerate(q[0]))
    assert F.pack_int3(q)[0].tolist() == [word & 0xFF, (word >> 8) & 0xFF, word >> 16]


@pytest.mark.parametrize("n,k", ODD_SHAPES)
def test_int4_round_trips(n, k):
    u = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    assert torch.equal(F.unpack_uint4(F.pack_uint4(u)), u)
    s = torch.randint(-8, 8, (n, k), dtype=torch.int8)
    assert torch.equal(F.unpack_int4(F.pack_int4(s)), s)
    assert torch.equal(F.unpack_a4(F.pack_a4(s)), s)


@pytest.mark.parametrize("fmt", ["w3a16", "w4a16"])
@pytest.mark.parametrize("group", [64, 128])
def test_weight_only_kernel_layout_round_trip(fmt, group):
    n, k = 40, 3 * group
    w = torch.randn(n, k)
    q, s, z = F.quantize_weight_asym(w, F.get_format(fmt).weight_bits, group)
    pack, unpack = (F.pack_w3, F.unpack_w3) if fmt == "w3a16" else (F.pack_w4, F.unpack_w4)
    packed = pack(q, s, z)
    shapes = F.packed_shapes(fmt, n, k, group)
    for name, t in packed._asdict().items():
        assert (tuple(t.shape), t.dtype) == (tuple(shapes[name][0]), shapes[name][1]), name
    q2, s2, z2 = unpack(*packed, n, k)
    assert torch.equal(q2, q) and torch.equal(s2, s) and torch.equal(z2, z)


@pytest.mark.parametrize("fmt", ["w4a8", "w4a4", "w8a8"])
def test_symmetric_weight_kernel_layout_round_trip(fmt):
    n, k = 24, 200
    bits = F.get_format(fmt).weight_bits
    q, _ = F.quantize_weight_sym(torch.randn(n, k), bits)
    pack, unpack = (F.pack_w8, F.unpack_w8) if bits == 8 else (F.pack_w4_sym, F.unpack_w4_sym)
    packed = pack(q)
    shape, dtype = F.packed_shapes(fmt, n, k)["qweight"]
    assert (tuple(packed.shape), packed.dtype) == (tuple(shape), dtype)
    assert torch.equal(unpack(packed, n, k), q)


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_asym_rtn_error_is_within_half_a_step(bits, dtype):
    w = torch.randn(16, 256, dtype=dtype)
    q, s, z = F.quantize_weight_asym(w, bits, 128)
    assert q.dtype == torch.uint8 and int(q.max()) <= 2 ** bits - 1
    assert s.dtype == torch.float16 and s.shape == (16, 2) and z.shape == (16, 2)
    err = (F.dequantize_weight_asym(q, s, z, 128) - w.float()).abs().reshape(16, 2, 128)
    assert bool((err <= s.float()[..., None] * 0.5 + 1e-6).all())


def test_asym_all_zero_group_dequantizes_to_zero():
    w = torch.zeros(2, 128)
    w[1] = torch.randn(128)
    q, s, z = F.quantize_weight_asym(w, 3, 128)
    deq = F.dequantize_weight_asym(q, s, z, 128)
    assert torch.equal(deq[0], torch.zeros(128))


@pytest.mark.parametrize("bits", [4, 8])
def test_sym_weight_rtn_definition(bits):
    w = torch.randn(12, 64)
    q, s = F.quantize_weight_sym(w, bits)
    qmax = 2 ** (bits - 1) - 1
    assert torch.allclose(s, w.abs().amax(1) / qmax)
    assert int(q.abs().max()) == qmax
    assert bool(((F.dequantize_weight_sym(q, s) - w).abs() <= s[:, None] / 2 + 1e-6).all())


def test_act_quant_special_rows():
    x = torch.randn(4, 32)
    x[1] = 0
    x[2, 5] = float("nan")
    x[3, 7] = float("inf")
    q, s = F.quantize_act_sym(x, 8)
    assert s[1] == 0 and bool((q[1] == 0).all())
    assert torch.isnan(s[2]) and not torch.isfinite(s[3])
    assert torch.allclose(s[0], x[0].abs().max() / 127)


def test_fake_quantize_matches_quantize_dequantize():
    w = torch.randn(8, 128)
    q, s, z = F.quantize_weight_asym(w, 4, 64)
    assert torch.equal(F.fake_quantize_weight(w, "w4a16", 64), F.dequantize_weight_asym(q, s, z, 64))
    x = torch.randn(3, 5, 16)
    assert F.fake_quantize_act(x, 16) is x
    assert F.fake_quantize_act(x, 8).shape == x.shape


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="group_size"):
        F.quantize_weight_asym(torch.randn(4, 100), 4, 128)
    with pytest.raises(ValueError, match="w: holds NaN"):
        F.quantize_weight_asym(torch.full((2, 128), float("nan")), 4, 128)
    with pytest.raises(TypeError, match="w: expected dtype"):
        F.quantize_weight_sym(torch.ones(2, 4, dtype=torch.int32), 8)
    with pytest.raises(ValueError, match="bits"):
        F.quantize_weight_sym(torch.ones(2, 4), 3)
    with pytest.raises(ValueError, match="format"):
        F.get_format("w5a5")
    with pytest.raises(ValueError, match="multiple of 8"):
        F.pack_int3(torch.zeros(2, 12, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        F.pack_int3(torch.full((1, 8), 9, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        F.pack_int4(torch.full((1, 2), 9, dtype=torch.int8))


def test_act_quantization_divides_like_the_kernels():
    """inv = qmax / absmax is one correctly rounded fp32 division, as in the CUDA kernels
    (a Python `qmax / tensor` is reciprocal(tensor) * qmax in torch: 18 of these 64 rows get a
    different last bit and 30 values a different q)."""
    import numpy as np
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 1152, generator=g) * 3).to(torch.bfloat16).float()
    q, s = F.quantize_act_sym(x, 8)
    xn = x.numpy()
    inv = np.float32(127) / np.abs(xn).max(axis=1)
    expected = np.clip(np.rint(xn * inv[:, None]), -127, 127)
    assert np.array_equal(q.numpy(), expected.astype(np.int8))
