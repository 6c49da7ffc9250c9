"""Ops on CPU: each public op against an independent fp64 computation, and input validation."""
import math

import pytest
import torch

from modaq import formats as F
from modaq import ops
from modaq.hadamard import hadamard_matrix, random_signs

DTYPES = [torch.float16, torch.bfloat16]


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def woq_weight(bits, n, k, g):
    q, s, z = F.quantize_weight_asym(torch.randn(n, k), bits, g)
    pack = F.pack_w3 if bits == 3 else F.pack_w4
    return pack(q, s, z), F.dequantize_weight_asym(q, s, z, g)


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k,g", [(1, 24, 128, 128), (5, 33, 192, 64), (16, 7, 256, 128)])
def test_weight_only_gemm_matches_dequantized_matmul(bits, dtype, m, n, k, g):
    packed, w = woq_weight(bits, n, k, g)
    x = torch.randn(2, m, k, dtype=dtype)  # leading dims are flattened and restored
    bias = torch.randn(n, dtype=dtype)
    op = ops.w3a16_gemm if bits == 3 else ops.w4a16_gemm
    y = op(x, *packed, n, g, bias)
    assert y.shape == (2, m, n) and y.dtype == dtype
    ref = x.double() @ w.double().t() + bias.double()
    assert rel_err(y, ref) < 1e-2


def test_weight_only_gemm_propagates_nan_rows():
    packed, _ = woq_weight(4, 8, 128, 128)
    x = torch.randn(3, 128, dtype=torch.float16)
    x[1, 3] = float("nan")
    y = ops.w4a16_gemm(x, *packed, 8, 128)
    assert bool(torch.isnan(y[1]).all()) and bool(torch.isfinite(y[[0, 2]]).all())


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_act_with_smoothing_matches_formats(bits, dtype):
    x = torch.randn(2, 3, 64, dtype=dtype)
    smooth = torch.rand(64) + 0.5
    q, s = ops.quantize_act(x, bits, smooth)
    q_ref, s_ref = F.quantize_act_sym(x.float().reshape(6, 64) / smooth, bits)
    assert torch.equal(s, s_ref)
    assert torch.equal(F.unpack_a4(q) if bits == 4 else q, q_ref)


@pytest.mark.parametrize("k", [64, 12 * 8, 20 * 4, 28 * 16])
def test_hadamard_transform_matches_explicit_matrix(k):
    x = torch.randn(5, k)
    signs = random_signs(k, seed=3)
    y = ops.hadamard_transform(x, signs)
    ref = (x.double() * signs.double()) @ hadamard_matrix(k) / math.sqrt(k)
    assert rel_err(y, ref) < 1e-6
    assert abs(float(y.norm() / x.norm()) - 1) < 1e-5  # orthonormal


def test_kron_transform_matches_kronecker_product():
    x = torch.randn(4, 6 * 10, dtype=torch.bfloat16)
    left, right = torch.randn(6, 6), torch.randn(10, 10)
    y = ops.kron_transform(x, left, right)
    ref = x.double() @ torch.kron(left.double(), right.double())
    assert y.dtype == torch.bfloat16 and rel_err(y, ref) < 1e-2


def test_quantize_act_with_transforms_quantizes_the_transformed_rows():
    k = 96
    x = torch.randn(7, k, dtype=torch.float16)
    signs = random_signs(k, seed=1)
    q, s = ops.quantize_act(x, 8, hadamard_signs=signs)
    xt = ops.hadamard_transform(x.float(), signs)
    assert torch.allclose(s, xt.abs().amax(1) / 127, rtol=1e-5)
    assert rel_err(q.float() * s[:, None], xt) < 1e-2
    left, right = torch.randn(8, 8), torch.randn(12, 12)
    q, s = ops.quantize_act(x, 4, kron_left=left, kron_right=right)
    xk = ops.kron_transform(x.float(), left, right)
    assert rel_err(F.unpack_a4(q).float() * s[:, None], xk) < 0.2


def _transformed_fp64(x, transform, k):
    """(x / smooth) then the online transform, in fp64 from the explicit matrices."""
    g = torch.Generator().manual_seed(k)
    kw = {"smooth": torch.rand(k, generator=g) + 0.5}
    xd = x.double() / kw["smooth"].double()
    if transform == "hadamard":
        kw["hadamard_signs"] = random_signs(k, seed=5)
        xd = (xd * kw["hadamard_signs"].double()) @ hadamard_matrix(k) / math.sqrt(k)
    elif transform == "kron":
        kw["kron_left"], kw["kron_right"] = torch.randn(8, 8, generator=g), torch.randn(k // 8, k // 8, generator=g)
        xd = xd @ torch.kron(kw["kron_left"].double(), kw["kron_right"].double())
    return kw, xd


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("transform", [None, "hadamard", "kron"])
@pytest.mark.parametrize("clip", [0.55, 0.8137])
def test_quantize_act_clip_ratio_matches_fp64_and_saturates(bits, transform, clip):
    """scale = fp32(clip) * absmax / qmax of the transformed row, q = clamp(rint(x' / scale)):
    against fp64 the scales agree to fp32 rounding, q only at rounding boundaries (fp32 vs fp64
    transform), and every value beyond the clipped range saturates at +-qmax (no wrap-around)."""
    k, qmax = 96, 2 ** (bits - 1) - 1
    x = torch.randn(2, 7, k, dtype=torch.float16)
    x[0, 2] = 0  # a zero token: scale 0, q 0
    x[1, :, 5] *= 40  # an outlier channel
    kw, xd = _transformed_fp64(x.reshape(14, k), transform, k)
    q, s = ops.quantize_act(x, bits, clip_ratio=clip, **kw)
    q = (F.unpack_a4(q) if bits == 4 else q).int()
    absmax = xd.abs().amax(1)
    s_ref = F.fp32_value(clip) * absmax / qmax
    assert float(((s.double() - s_ref).abs() / s_ref.clamp_min(1e-300)).max()) < 1e-6
    assert float(s[2]) == 0.0 and int(q[2].abs().max()) == 0
    q_ref = torch.round(xd / s_ref.clamp_min(1e-300)[:, None]).clamp(-qmax, qmax).int()
    diff = (q - q_ref).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01
    beyond = xd.abs() > s_ref[:, None] * (qmax + 0.5) * (1 + 1e-5)
    assert int(beyond.sum()) > 10  # the clip ratio saturates something on this input
    assert torch.equal(q[beyond], (torch.sign(xd[beyond]) * qmax).int())
    assert int(q.abs().max()) == qmax


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", [None, "hadamard", "kron"])
def test_quantize_act_clip_ratio_one_is_the_plain_absmax(bits, dtype, transform):
    """clip_ratio = 1.0 (the default) is bit-identical to the unclipped quantizer: inv = qmax /
    absmax, q = clamp(rint(x' * inv)), scale = absmax / qmax, written out here in fp32."""
    k, qmax = 64, 2 ** (bits - 1) - 1
    x = torch.randn(9, k, dtype=dtype)
    x[4] = 0
    kw, _ = _transformed_fp64(x, transform, k)
    xt = ops.reference.transformed_fp32(x, **kw)
    absmax = xt.abs().amax(1)
    inv = torch.where(absmax > 0, qmax / torch.where(absmax > 0, absmax, torch.ones_like(absmax)), 0.0)
    q_old = torch.round(xt * inv[:, None]).clamp(-qmax, qmax).to(torch.int8)
    for args in ({}, {"clip_ratio": 1.0}, {"clip_ratio": 1}):
        q, s = ops.quantize_act(x, bits, **kw, **args)
        assert torch.equal(s, absmax / qmax)
        assert torch.equal(F.unpack_a4(q) if bits == 4 else q, q_old)


def test_quantize_act_clip_ratio_validation_names_the_argument():
    x = torch.randn(2, 64, dtype=torch.float16)
    for bad in (0.0, -0.5, 1.0001, 2, float("nan"), float("inf"), 1e-50):
        with pytest.raises(ValueError, match=r"clip_ratio: expected a float in \(0, 1\]"):
            ops.quantize_act(x, 8, clip_ratio=bad)
    for bad in (True, torch.tensor(0.5), "0.5", None):
        with pytest.raises(TypeError, match="clip_ratio: expected a float"):
            ops.quantize_act(x, 8, clip_ratio=bad)
    with pytest.raises(ValueError, match="clip_ratio"):
        F.quantize_act_sym(x.float(), 4, clip_ratio=1.5)


def test_quantize_act_clip_ratio_traces_as_a_constant():
    x = torch.randn(5, 64)
    fn = torch.compile(lambda t: ops.quantize_act(t, 4, clip_ratio=0.7), fullgraph=True, backend="aot_eager")
    q, s = fn(x)
    q_ref, s_ref = ops.quantize_act(x, 4, clip_ratio=0.7)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


@pytest.mark.parametrize("name,abits,wbits", [("w4a8_gemm", 8, 4), ("w4a4_gemm", 4, 4), ("w8a8_gemm", 8, 8)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 16, 64), (9, 31, 130)])
def test_int_gemm_matches_dequantized_matmul(name, abits, wbits, dtype, m, n, k):
    x = torch.randn(m, k, dtype=dtype)
    xq, xs = ops.quantize_act(x, abits)
    wq, ws = F.quantize_weight_sym(torch.randn(n, k), wbits)
    packed = F.pack_w8(wq) if wbits == 8 else F.pack_w4_sym(wq)
    bias = torch.randn(n, dtype=dtype)
    y = getattr(ops, name)(xq, xs, packed, ws, bias, out_dtype=dtype)
    xi = F.unpack_a4(xq) if abits == 4 else xq
    ref = (xi.double() * xs.double()[:, None]) @ (wq.double() * ws.double()[:, None]).t() + bias.double()
    assert y.shape == (m, n) and y.dtype == dtype and rel_err(y, ref) < 1e-2


@pytest.mark.parametrize("name,abits,wbits", [("w4a8_gemm", 8, 4), ("w4a4_gemm", 4, 4), ("w8a8_gemm", 8, 8)])
@pytest.mark.parametrize("transform", [None, "smooth", "hadamard", "kron"])
def test_int_linear_equals_quantize_act_then_gemm(name, abits, wbits, transform):
    x = torch.randn(2, 3, 128, dtype=torch.bfloat16)
    x[..., 5] *= 50
    kw = {"smooth": torch.rand(128) + 0.5} if transform == "smooth" else \
        {"hadamard_signs": torch.ones(128).index_fill_(0, torch.arange(0, 128, 3), -1.0)} if transform == "hadamard" \
        else {"kron_left": torch.randn(8, 8), "kron_right": torch.randn(16, 16)} if transform == "kron" else {}
    wq, ws = F.quantize_weight_sym(torch.randn(24, 128), wbits)
    packed = F.pack_w8(wq) if wbits == 8 else F.pack_w4_sym(wq)
    bias = torch.randn(24)
    y = ops.int_linear(x, packed, ws, bias, a_bits=abits, w_bits=wbits, clip_ratio=0.9, **kw)
    xq, xs = ops.quantize_act(x, abits, clip_ratio=0.9, **kw)
    ref = getattr(ops, name)(xq, xs, packed, ws, bias, out_dtype=x.dtype)
    assert y.shape == (2, 3, 24) and y.dtype == x.dtype and torch.equal(y.reshape(6, 24), ref)


def test_int_linear_validation_errors_name_the_argument():
    x = torch.randn(2, 128, dtype=torch.float16)
    w4, ws = torch.zeros(8, 64, dtype=torch.uint8), torch.ones(8)
    with pytest.raises(ValueError, match="a_bits / w_bits: expected"):
        ops.int_linear(x, w4, ws, a_bits=8, w_bits=3)
    with pytest.raises(ValueError, match="qweight: expected 512 elements"):
        ops.int_linear(x, w4[:4], ws, a_bits=8, w_bits=4)
    with pytest.raises(TypeError, match="qweight: expected dtype int8"):
        ops.int_linear(x, w4, ws, a_bits=8, w_bits=8)
    with pytest.raises(ValueError, match="smooth: expected shape"):
        ops.int_linear(x, w4, ws, a_bits=4, w_bits=4, smooth=torch.ones(5))
    with pytest.raises(ValueError, match="bias: expected shape"):
        ops.int_linear(x, w4, ws, torch.zeros(3), a_bits=8, w_bits=4)
    with pytest.raises(ValueError, match="clip_ratio"):
        ops.int_linear(x, w4, ws, a_bits=8, w_bits=4, clip_ratio=0.0)


def test_int_gemm_zero_and_nan_rows():
    x = torch.randn(3, 32, dtype=torch.float16)
    x[0] = 0
    x[2, 1] = float("nan")
    xq, xs = ops.quantize_act(x, 8)
    wq, ws = F.quantize_weight_sym(torch.randn(5, 32), 8)
    y = ops.w8a8_gemm(xq, xs, F.pack_w8(wq), ws)
    assert bool((y[0] == 0).all()) and bool(torch.isfinite(y[1]).all()) and bool(torch.isnan(y[2]).all())


def test_non_contiguous_activations_are_accepted():
    packed, w = woq_weight(4, 8, 128, 128)
    x = torch.randn(128, 6, dtype=torch.float16).t()  # [6, 128], transposed view
    y = ops.w4a16_gemm(x, *packed, 8, 128)
    assert rel_err(y, x.double() @ w.double().t()) < 1e-2


def test_validation_errors_name_the_argument():
    packed, _ = woq_weight(4, 8, 128, 128)
    x = torch.randn(2, 128, dtype=torch.float16)
    with pytest.raises(TypeError, match="x: expected dtype"):
        ops.w4a16_gemm(x.int(), *packed, 8, 128)
    with pytest.raises(ValueError, match="group_size"):
        ops.w4a16_gemm(torch.randn(2, 96, dtype=torch.float16), *packed, 8, 64)
    with pytest.raises(ValueError, match="divisible by group_size"):
        ops.w4a16_gemm(torch.randn(2, 96, dtype=torch.float16), *packed, 8, 128)
    with pytest.raises(ValueError, match="qweight: expected"):
        ops.w4a16_gemm(x, packed.qweight[:4], packed.scales, packed.zeros, 8, 128)
    with pytest.raises(ValueError, match="qweight: expected a contiguous"):
        ops.w4a16_gemm(x, packed.qweight.t().contiguous().t(), packed.scales, packed.zeros, 8, 128)
    with pytest.raises(ValueError, match="scales: expected a tensor on meta"):
        ops.w4a16_gemm(x.to("meta"), packed.qweight.to("meta"), packed.scales, packed.zeros, 8, 128)
    with pytest.raises(ValueError, match="bias: expected shape"):
        ops.w4a16_gemm(x, *packed, 8, 128, torch.zeros(3, dtype=torch.float16))
    with pytest.raises(ValueError, match="bits"):
        ops.quantize_act(x, 3)
    with pytest.raises(ValueError, match="smooth: expected shape"):
        ops.quantize_act(x, 8, torch.ones(5))
    with pytest.raises(ValueError, match="no Hadamard"):
        ops.quantize_act(torch.randn(2, 4304), 8, hadamard_signs=torch.ones(4304))
    with pytest.raises(ValueError, match="must equal in_features"):
        ops.kron_transform(x, torch.eye(8), torch.eye(8))
    with pytest.raises(ValueError, match="both Kronecker"):
        ops.quantize_act(x, 8, kron_left=torch.eye(8))
    xq, xs = ops.quantize_act(x, 8)
    with pytest.raises(TypeError, match="xq: expected dtype int8"):
        ops.w4a8_gemm(xq.float(), xs, torch.zeros(8, 64, dtype=torch.uint8), torch.ones(8))
    with pytest.raises(ValueError, match="x_scale: expected shape"):
        ops.w8a8_gemm(xq, xs[:1], torch.zeros(8, 128, dtype=torch.int8), torch.ones(8))
    with pytest.raises(TypeError, match="out_dtype"):
        ops.w8a8_gemm(xq, xs, torch.zeros(8, 128, dtype=torch.int8), torch.ones(8), out_dtype=torch.int32)


def test_backends_report_every_op():
    report = ops.backends()
    assert set(report) == {"quantize_act", "hadamard_transform", "kron_transform", "w3a16_gemm",
                           "w4a16_gemm", "w4a8_gemm", "w4a4_gemm", "w8a8_gemm", "int_linear"}
    if not torch.cuda.is_available():
        assert all(v.startswith("reference") for v in report.values())


def test_fake_impls_give_output_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    packed, _ = woq_weight(3, 8, 128, 128)
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(5, 128, dtype=torch.bfloat16)
        assert ops.w3a16_gemm(x, *packed, 8, 128).shape == (5, 8)
        q, s = ops.quantize_act(x, 4)
        assert q.shape == (5, 64) and q.dtype == torch.uint8 and s.shape == (5,)
        y = ops.w4a4_gemm(q, s, torch.empty(8, 64, dtype=torch.uint8), torch.empty(8), None, torch.bfloat16)
        assert y.shape == (5, 8) and y.dtype == torch.bfloat16
        y = ops.int_linear(x, torch.empty(8, 64, dtype=torch.uint8), torch.empty(8), a_bits=8, w_bits=4)
        assert y.shape == (5, 8) and y.dtype == torch.bfloat16
