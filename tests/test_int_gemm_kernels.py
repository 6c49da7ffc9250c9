"""Integer GEMM kernels (W8A8, W4A8, W4A4) and the 4-bit half-block-paired layouts.

CPU: pack / unpack round trips of the paired layout (incl. a short last block), and the
Triton kernel under TRITON_INTERPRET=1 in a subprocess (so the interpreter does not leak into
other tests).  GPU: every backend against the reference on random shapes (odd sizes, M = 1,
fp16 / bf16 / fp32 out, bias or not, poisoned outputs), module outputs, CUDA-graph capture.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from modaq import formats as F
from modaq import ops
from modaq.nn import Rotation, W4A4Linear, W4A8Linear, W8A8Linear
from modaq.ops import reference as R

GEMMS = {"w4a8_gemm": (8, 4), "w4a4_gemm": (4, 4), "w8a8_gemm": (8, 8)}


# ------------------------------------------------------------------- CPU: layouts

@pytest.mark.parametrize("k", [2, 64, 128, 130, 200, 384, 4304])
def test_paired_layout_round_trip_and_pairing(k):
    q = torch.randint(-8, 8, (5, k), dtype=torch.int8)
    packed = F.pack_a4(q)
    assert packed.shape == (5, k // 2) and packed.dtype == torch.uint8
    assert torch.equal(F.unpack_a4(packed), q)
    w = torch.randint(-7, 8, (3, k), dtype=torch.int8)
    assert torch.equal(F.unpack_w4_sym(F.pack_w4_sym(w), 3, k), w)
    lo, hi = F.pair_indices(k)
    # byte j of a full block holds values j and j + 64; the short last block pairs j, j + L/2
    tail = k % 128
    assert int(hi[0] - lo[0]) == (64 if k >= 128 else tail // 2)
    if tail and k > 128:
        assert int(hi[-1] - lo[-1]) == tail // 2
    nib = packed.view(torch.int8)
    assert torch.equal((nib << 4) >> 4, q[:, lo]) and torch.equal(nib >> 4, q[:, hi])


def test_paired_layout_rejects_bad_input():
    with pytest.raises(ValueError, match="q"):
        F.pack_w4_sym(torch.zeros(2, 3, dtype=torch.int8))
    with pytest.raises(ValueError, match="q"):
        F.pack_a4(torch.full((1, 4), 9, dtype=torch.int8))
    with pytest.raises(TypeError, match="q"):
        F.pack_a4(torch.zeros(1, 4, dtype=torch.int32))


def test_tile_choice_takes_the_lowest_median_and_skips_configs_that_fail(monkeypatch):
    """The tuner's decision on fake timings: one early lucky sample must not win."""
    from modaq.triton_kernels import int_gemm as tk
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    ran = []

    def run(cfg):
        if cfg["name"] == "broken":
            raise RuntimeError("does not build")
        ran.append(cfg["name"])

    samples = {"lucky": iter([1.0, 3.0, 3.1, 2.9, 3.0]), "steady": iter([2.0, 1.5, 1.4, 1.6, 1.5])}
    key = ("test-key", id(samples))
    cands = [{"name": "broken"}, {"name": "lucky"}, {"name": "steady"}]
    try:
        best = tk._choose(key, cands, run, None, timer=lambda run_, cfg: next(samples[cfg["name"]]))
        assert best["name"] == "steady" and tk._CHOSEN[key] is best
        assert ran == ["lucky", "steady"]  # each built candidate warmed up once; the fake timer runs nothing
        assert tk._choose(key, cands, run, None) is best  # cached: no timing
        with pytest.raises(RuntimeError, match="no tile config"):
            tk._choose(("test-key-2",), [{"name": "broken"}], run, None)
    finally:
        tk._CHOSEN.pop(key, None)


_INTERPRETER_SCRIPT = textwrap.dedent("""
    import torch
    from modaq import formats as F
    from modaq.ops import reference as R
    from modaq.triton_kernels.int_gemm import int_gemm
    torch.manual_seed(0)
    small = dict(BM=16, BN=16, BK=256, GROUP_M=1, num_warps=4, num_stages=1)
    wide = dict(BM=32, BN=32, BK=128, GROUP_M=2, num_warps=4, num_stages=1)
    swapped = dict(small, BN=32, SWAP=True)
    expanded = dict(wide, expand=True)
    for (m, n, k) in [(1, 24, 200), (5, 40, 256), (17, 33, 1076), (70, 20, 130), (3, 17, 6)]:
        for name, (ab, wb) in {"w4a8_gemm": (8, 4), "w4a4_gemm": (4, 4), "w8a8_gemm": (8, 8)}.items():
            for cfg, out_dtype, bias in ((small, torch.float32, True), (wide, torch.float16, False),
                                         (None, torch.bfloat16, True), (swapped, torch.float32, False),
                                         (expanded, torch.float32, True)):
                xq, xs = R.quantize_act(torch.randn(m, k), ab)
                wq, ws = F.quantize_weight_sym(torch.randn(n, k), wb)
                pw = F.pack_w8(wq) if wb == 8 else F.pack_w4_sym(wq)
                b = torch.randn(n) if bias else None
                y = int_gemm(xq, xs, pw, ws, b, out_dtype, ab, wb, cfg)
                ref = getattr(R, name)(xq, xs, pw, ws, b, out_dtype)
                err = float((y.float() - ref.float()).abs().max())
                tol = 0.0 if out_dtype == torch.float32 else 1e-2 * float(ref.float().abs().max())
                assert y.dtype == out_dtype and err <= tol, (m, n, k, name, cfg, err)
    print("interpreter ok")
""")


def test_triton_int_gemm_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0 and "interpreter ok" in res.stdout, res.stdout + res.stderr


# ---------------------------------------------------------------------------- GPU

def _problem(name, m, n, k, dtype, bias=True, seed=0):
    ab, wb = GEMMS[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x[:, :2] *= 100.0  # outlier channels
    xq, xs = R.quantize_act(x.to(dtype) if dtype != torch.float32 else x, ab)
    wq, ws = F.quantize_weight_sym(torch.randn(n, k, generator=g), wb)
    pw = F.pack_w8(wq) if wb == 8 else F.pack_w4_sym(wq)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    return xq, xs, pw, ws, b


def _check_gemm(name, m, n, k, out_dtype, bias):
    xq, xs, pw, ws, b = _problem(name, m, n, k, out_dtype, bias=bias)
    torch.full((64 << 20,), float("nan"), device="cuda")  # poison the allocator's free blocks
    op = getattr(ops, name)
    y = op(*(t.cuda() if t is not None else None for t in (xq, xs, pw, ws, b)), out_dtype=out_dtype).cpu()
    ref = getattr(R, name)(xq, xs, pw, ws, b, out_dtype)
    assert y.dtype == out_dtype and bool(torch.isfinite(y).all())
    rtol = 1e-5 if out_dtype == torch.float32 else 1e-2
    assert torch.allclose(y.float(), ref.float(), rtol=rtol, atol=rtol * float(ref.float().abs().max()) * 1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GEMMS))
@pytest.mark.parametrize("m,n,k", [(1, 256, 512), (1, 1152, 4304), (7, 333, 1076), (16, 120, 384), (33, 96, 1152),
                                   (257, 320, 1152), (300, 4304, 1152), (1024, 512, 3584), (2048, 1152, 4304)])
def test_gemm_matches_reference(name, m, n, k):
    """fp16 out, no bias: the problems the benchmark times (every tile candidate is timed, so
    every candidate of each M regime runs here)."""
    _check_gemm(name, m, n, k, torch.float16, False)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GEMMS))
@pytest.mark.parametrize("m,out_dtype", [(5, torch.bfloat16), (5, torch.float32), (600, torch.bfloat16)])
def test_gemm_out_dtypes_and_bias(name, m, out_dtype, monkeypatch):
    monkeypatch.setenv("MODAQ_INT_GEMM_TUNE", "0")
    _check_gemm(name, m, 200, 640, out_dtype, True)


_GEMV_SHAPES = [(1, 256, 512), (1, 1152, 4304), (3, 333, 1152), (8, 100, 208), (9, 64, 4096), (16, 520, 3584),
                (16, 17, 16), (5, 40, 144), (12, 4304, 1152)]


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GEMMS))
@pytest.mark.parametrize("m,n,k", _GEMV_SHAPES)
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_int_gemv_is_bit_identical_to_reference(name, m, n, k, out_dtype):
    """The decode GEMV (csrc/int_gemv.cu) does the reference's exact int32 sums and its fp32
    epilogue in the same order, so every output bit matches, for every warp split (short last
    blocks, rows past a 16-row tile, 8- and 16-token tiles, fp32 bias on fp16 out)."""
    from modaq.ops import fast_int_gemm
    ab, wb = GEMMS[name]
    xq, xs, pw, ws, b = _problem(name, m, n, k, torch.float32, bias=out_dtype != torch.float16, seed=m + n)
    args = [t.cuda() if t is not None else None for t in (xq, xs, pw, ws, b)]
    assert fast_int_gemm.gemv_fits(args[0], args[2], k)
    ref = getattr(R, name)(xq, xs, pw, ws, b, out_dtype)
    for warps in (0, 1, 3, 16):
        torch.full((64 << 20,), float("nan"), device="cuda")  # poison the allocator's free blocks
        y = fast_int_gemm.int_gemv(ab, wb, *args, out_dtype, warps=warps).cpu()
        assert y.dtype == out_dtype and torch.equal(y, ref), (warps, float((y.float() - ref.float()).abs().max()))


@pytest.mark.gpu
def test_int_gemv_runs_the_decode_ops():
    """The int GEMM ops take the GEMV at M <= 16 and K % 16 == 0, the Triton GEMM otherwise."""
    from modaq.ops import fast_int_gemm
    xq = torch.zeros(16, 1152, dtype=torch.int8, device="cuda")
    w = torch.zeros(8, 576, dtype=torch.uint8, device="cuda")
    assert fast_int_gemm.gemv_fits(xq, w, 1152)
    with pytest.raises(ValueError, match="K must be"):  # the binding checks what it is given
        fast_int_gemm.int_gemv(8, 4, xq[:, :8], torch.ones(16, device="cuda"), w[:, :4],
                               torch.ones(8, device="cuda"), None, torch.float16)
    assert not fast_int_gemm.gemv_fits(torch.zeros(17, 1152, dtype=torch.int8, device="cuda"), w, 1152)
    assert not fast_int_gemm.gemv_fits(xq[:, :1076], w, 1076)
    assert not fast_int_gemm.gemv_fits(xq.view(-1)[8:8 + 16 * 1024].view(16, 1024), w, 1024)  # misaligned


@pytest.mark.gpu
def test_gemm_propagates_nan_scale():
    xq, xs, pw, ws, b = _problem("w4a8_gemm", 4, 64, 256, torch.float16)
    xs[1] = float("nan")
    y = ops.w4a8_gemm(xq.cuda(), xs.cuda(), pw.cuda(), ws.cuda(), None).cpu()
    assert bool(torch.isnan(y[1]).all()) and bool(torch.isfinite(y[[0, 2, 3]]).all())


@pytest.mark.gpu
def test_backends_are_fast_paths():
    names = ops.backends()
    assert names["w4a8_gemm"] == names["w4a4_gemm"] == names["w8a8_gemm"] == "triton"
    assert names["quantize_act"] == "cuda"


def _rel_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [W4A8Linear, W4A4Linear, W8A8Linear])
@pytest.mark.parametrize("rotation", [None, "hadamard", "kron"])
def test_module_matches_cpu_module(cls, rotation, monkeypatch):
    monkeypatch.setenv("MODAQ_INT_GEMM_TUNE", "0")
    k, n = 3584, 512
    lin = torch.nn.Linear(k, n, dtype=torch.bfloat16)
    rot = None
    if rotation == "hadamard":
        rot = Rotation.random_hadamard(k, seed=0)
    elif rotation == "kron":
        q1, _ = torch.linalg.qr(torch.randn(28, 28))
        q2, _ = torch.linalg.qr(torch.randn(128, 128))
        rot = Rotation.kron(q1, q2)
    mod = cls.from_linear(lin, rotation=rot)
    x = torch.randn(3, 5, k, dtype=torch.bfloat16)
    ref = mod(x)
    y = mod.cuda()(x.cuda())
    assert y.shape == (3, 5, n) and _rel_err(y, ref) < 2e-2


@pytest.mark.gpu
def test_w4a8_linear_cuda_graph_capture(monkeypatch):
    monkeypatch.setenv("MODAQ_INT_GEMM_TUNE", "0")
    k, n = 3584, 1024
    lin = torch.nn.Linear(k, n, dtype=torch.float16)
    mod = W4A8Linear.from_linear(lin, rotation=Rotation.random_hadamard(k, seed=1)).cuda()
    static_in = torch.randn(16, k, dtype=torch.float16, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        mod(static_in)  # compile / cache outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = mod(static_in)
    for _ in range(2):
        static_in.copy_(torch.randn_like(static_in))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out, mod(static_in))
