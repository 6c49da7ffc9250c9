"""Every op through its public wrapper on CUDA (whatever backend `backends()` picks) against the
CPU reference on the same inputs; modules under CUDA-graph capture and torch.compile."""
import pytest
import torch

from modaq import formats as F
from modaq import ops
from modaq.hadamard import random_signs
from modaq.nn import QUANT_LINEARS, Rotation

pytestmark = pytest.mark.gpu
DTYPES = [torch.float16, torch.bfloat16]


def rel_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


@pytest.fixture(autouse=True)
def poison_allocator():
    """Fill the caching allocator's free blocks with NaN so an unwritten output element shows."""
    junk = torch.full((64 << 20,), float("nan"), device="cuda")
    del junk
    yield


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k,g", [(1, 72, 256, 128), (3, 200, 640, 64), (16, 333, 384, 128), (300, 96, 512, 128)])
def test_weight_only_gemm(bits, dtype, m, n, k, g):
    q, s, z = F.quantize_weight_asym(torch.randn(n, k), bits, g)
    packed = (F.pack_w3 if bits == 3 else F.pack_w4)(q, s, z)
    x = torch.randn(m, k, dtype=dtype)
    bias = torch.randn(n, dtype=dtype)
    op = ops.w3a16_gemm if bits == 3 else ops.w4a16_gemm
    y = op(x.cuda(), *(t.cuda() for t in packed), n, g, bias.cuda())
    ref = op(x, *packed, n, g, bias)
    assert y.is_cuda and y.dtype == dtype and rel_err(y, ref) < 2e-2


@pytest.mark.parametrize("clip", [1.0, 0.75])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", [None, "smooth", "hadamard", "kron"])
def test_quantize_act(bits, dtype, transform, clip):
    m, k = 37, 28 * 16
    x = torch.randn(m, k, dtype=dtype)
    x[3] = 0
    x[5, :4] *= 100
    kw = {}
    if transform == "smooth":
        kw["smooth"] = torch.rand(k) + 0.5
    elif transform == "hadamard":
        kw["hadamard_signs"] = random_signs(k, seed=4)
    elif transform == "kron":
        kw["kron_left"], kw["kron_right"] = torch.randn(28, 28), torch.randn(16, 16)
    q, s = ops.quantize_act(x.cuda(), bits, clip_ratio=clip, **{a: t.cuda() for a, t in kw.items()})
    q_ref, s_ref = ops.quantize_act(x, bits, clip_ratio=clip, **kw)
    assert torch.allclose(s.cpu(), s_ref, rtol=1e-5, atol=0)
    unpack = F.unpack_a4 if bits == 4 else (lambda t: t)
    diff = (unpack(q.cpu()).int() - unpack(q_ref).int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3


def test_quantize_act_nan_row_gives_nan_scale():
    x = torch.randn(4, 256, dtype=torch.float16, device="cuda")
    x[2, 9] = float("nan")
    _, s = ops.quantize_act(x, 8)
    assert bool(torch.isnan(s[2])) and bool(torch.isfinite(s[[0, 1, 3]]).all())


@pytest.mark.parametrize("name,abits,wbits", [("w4a8_gemm", 8, 4), ("w4a4_gemm", 4, 4), ("w8a8_gemm", 8, 8)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 256, 512), (16, 120, 384), (257, 320, 1152), (1024, 512, 256)])
def test_int_gemm(name, abits, wbits, dtype, m, n, k):
    xq, xs = ops.quantize_act(torch.randn(m, k, dtype=dtype), abits)
    wq, ws = F.quantize_weight_sym(torch.randn(n, k), wbits)
    packed = F.pack_w8(wq) if wbits == 8 else F.pack_w4_sym(wq)
    bias = torch.randn(n, dtype=dtype)
    op = getattr(ops, name)
    y = op(xq.cuda(), xs.cuda(), packed.cuda(), ws.cuda(), bias.cuda(), out_dtype=dtype)
    ref = op(xq, xs, packed, ws, bias, out_dtype=dtype)
    assert rel_err(y, ref) < 1e-2


@pytest.mark.parametrize("fmt,clip", [(f, 1.0) for f in sorted(QUANT_LINEARS)] +
                         [("w4a4", 0.8), ("w4a8", 0.9), ("w8a8", 0.85)])
def test_module_under_cuda_graph_and_compile(fmt, clip):
    lin = torch.nn.Linear(512, 384, dtype=torch.bfloat16)
    rot = Rotation.random_hadamard(512, seed=0) if fmt in ("w4a4", "w4a8") else None
    mod = QUANT_LINEARS[fmt].from_linear(lin, rotation=rot, act_clip_ratio=clip)
    x_cpu = torch.randn(8, 512, dtype=torch.bfloat16)
    ref = mod(x_cpu)
    mod = mod.cuda()
    x = x_cpu.cuda()
    assert rel_err(mod(x), ref) < 2e-2
    static_in = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        mod(static_in)  # warm-up outside capture (lazy init, autotuning)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = mod(static_in)
    static_in.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(static_out, mod(static_in)) < 1e-5
    compiled = torch.compile(mod, fullgraph=True)
    assert rel_err(compiled(x), mod(x)) < 1e-3
