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


@pytest.mark.gpu
def test_tuner_times_graph_replays_and_falls_back_to_eager_launches():
    """_graph_timer: a capturable candidate is captured once and its replays timed; one that
    raises while being captured is timed eagerly, and the stream stays usable.  Elementwise work
    only, warmed up eagerly first as _choose does (a first cuBLAS call cannot be captured)."""
    from modaq.triton_kernels import int_gemm as tk
    x = torch.randn(256, 256, device="cuda")
    calls = {"graph": 0, "sync": 0}

    def run(cfg):
        calls[cfg["name"]] += 1
        x.mul_(1.0)
        if cfg["name"] == "sync" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("this candidate cannot be captured")

    graph_cfg, sync_cfg = {"name": "graph"}, {"name": "sync"}
    run(graph_cfg), run(sync_cfg)  # warm-up
    timer = tk._graph_timer()
    times = [timer(run, graph_cfg) for _ in range(3)] + [timer(run, sync_cfg) for _ in range(2)]
    assert all(t > 0 for t in times)
    assert calls["graph"] == 1 + 3  # warm-up, captured once (3 launches), then only replays
    assert calls["sync"] == 1 + 1 + 2 * 3  # warm-up, the failed capture, two eager samples of 3 launches
    x.mul_(2.0)
    torch.cuda.synchronize()
    assert bool(torch.isfinite(x).all())


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
    tma = dict(BM=32, BN=32, BK=128, GROUP_M=2, num_warps=4, num_stages=1, tma=True)
    for (m, n, k) in [(70, 40, 256), (5, 33, 1152)]:  # the persistent TMA kernel (int_gemm_tma.py)
        for name, (ab, wb) in {"w4a8_gemm": (8, 4), "w4a4_gemm": (4, 4), "w8a8_gemm": (8, 8)}.items():
            for cfg in ((tma,) if wb == 8 else (dict(tma, expand=True),)):
                xq, xs = R.quantize_act(torch.randn(m, k), ab)
                wq, ws = F.quantize_weight_sym(torch.randn(n, k), wb)
                pw = F.pack_w8(wq) if wb == 8 else F.pack_w4_sym(wq)
                b = torch.randn(n)
                y = int_gemm(xq, xs, pw, ws, b, torch.float32, ab, wb, cfg)
                assert torch.equal(y, getattr(R, name)(xq, xs, pw, ws, b, torch.float32)), (m, n, k, name, cfg)
    xq, xs = R.quantize_act(torch.randn(3, 200), 8)
    wq, ws = F.quantize_weight_sym(torch.randn(8, 200), 8)
    try:  # K % 16 != 0 (rows not 16-byte aligned): refused, and the tuner then skips the candidate
        int_gemm(xq, xs, F.pack_w8(wq), ws, None, torch.float32, 8, 8, tma)
        raise AssertionError("K = 200 TMA config was not refused")
    except ValueError as e:
        assert "TMA" in str(e)
    print("interpreter ok")
""")


def test_triton_int_gemm_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0 and "interpreter ok" in res.stdout, res.stdout + res.stderr


# ---------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GEMMS))
@pytest.mark.parametrize("m,n,k", [(300, 264, 1152), (129, 4304, 3584), (1030, 1152, 4352)])
def test_tma_tile_candidates_match_the_reference(name, m, n, k):
    """Every persistent-TMA candidate the tuner may pick (forced here), with M / N tails."""
    from modaq.triton_kernels.int_gemm import candidates, int_gemm
    ab, wb = GEMMS[name]
    xq, xs, pw, ws, b = _problem(name, m, n, k, torch.float16)
    ref = getattr(R, name)(xq, xs, pw, ws, b, torch.float16).float()
    args = [t.cuda() for t in (xq, xs, pw, ws, b)]
    tried = 0
    for cfg in (c for c in candidates(m, n, k, wb) if c.get("tma")):
        torch.full((64 << 20,), float("nan"), device="cuda")
        y = int_gemm(*args, torch.float16, ab, wb, cfg).float().cpu()
        assert bool(torch.isfinite(y).all()), cfg
        assert torch.allclose(y, ref, rtol=1e-2, atol=1e-4 * float(ref.abs().max())), cfg
        tried += 1
    assert tried >= 2


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


def _mismatch(y, ref):
    """Where y and ref differ: (count, first (row, col) positions, largest difference)."""
    bad = (y.isnan() != ref.isnan()) | (y.nan_to_num(0.0) != ref.nan_to_num(0.0))
    idx = bad.nonzero()[:5].tolist()
    return int(bad.sum()), idx, float((y.float() - ref.float()).nan_to_num(0.0).abs().max())


def _same_bits(y, ref):
    """Equal bit for bit, NaN where the other is NaN."""
    return torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.nan_to_num(0.0), ref.nan_to_num(0.0))


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GEMMS))
@pytest.mark.parametrize("m,n,k", [s for s in _GEMV_SHAPES if s[0] * s[2] <= 32768] + [(2, 96, 16384), (16, 48, 2048)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_int_gemv_fused_is_bit_identical_to_reference(name, m, n, k, dtype):
    """quantize_act fused into the decode GEMV (int_gemv_fused): every CTA quantizes x into
    shared memory with quantize_act's fp32 operations, so each output bit equals the reference
    quantize_act + GEMM, for every warp split, with smoothing, clipping, outlier channels, a
    row of zeros and a row holding NaN (NaN out)."""
    from modaq.ops import fast_int_gemm
    ab, wb = GEMMS[name]
    g = torch.Generator().manual_seed(m * 7 + k)
    x = torch.randn(m, k, generator=g)
    x[:, 1] *= 100.0
    x[m // 2] = 0.0
    if m > 2:
        x[m - 1, k // 3] = float("nan")
    x = x.to(dtype)
    smooth = torch.rand(k, generator=g) + 0.5
    wq, ws = F.quantize_weight_sym(torch.randn(n, k, generator=g), wb)
    pw = F.pack_w8(wq) if wb == 8 else F.pack_w4_sym(wq)
    b = torch.randn(n, generator=g)
    for sm, clip, bias in ((None, 1.0, None), (smooth, 0.8, b)):
        ref = R.int_linear(x, pw, ws, bias, ab, wb, sm, None, None, None, clip)
        args = [t.cuda() if t is not None else None for t in (x, pw, ws, bias, sm)]
        for warps in (0, 1, 3, 16):
            torch.full((64 << 20,), float("nan"), device="cuda")  # poison the allocator's free blocks
            y = fast_int_gemm.int_gemv_fused(args[0], args[1], args[2], args[3], ab, wb, args[4], clip, warps).cpu()
            assert y.dtype == dtype and _same_bits(y, ref), (warps, clip, _mismatch(y, ref))


@pytest.mark.gpu
def test_int_linear_takes_the_fused_kernel_at_decode_sizes(monkeypatch):
    """int_linear runs int_gemv_fused when x fits (no transform, M <= 16, M * K <= 32 KB,
    aligned, ceil(CTAs / SMs) * M * K <= 16384), and quantize_act + GEMM otherwise; both give
    the reference's bits."""
    from modaq.ops import fast_int_gemm
    calls = []
    fused = fast_int_gemm.int_gemv_fused
    monkeypatch.setattr(fast_int_gemm, "int_gemv_fused", lambda *a, **kw: calls.append(1) or fused(*a, **kw))
    k = 2048
    wq, ws = F.quantize_weight_sym(torch.randn(64, k), 4)
    pw, ws = F.pack_w4_sym(wq).cuda(), ws.cuda()
    signs = torch.ones(k, device="cuda")
    for m, kw, want in ((8, {}, 1), (9, {}, 0), (4, {"hadamard_signs": signs}, 0)):
        x = torch.randn(m, k, dtype=torch.float16, device="cuda")
        calls.clear()
        y = ops.int_linear(x, pw, ws, a_bits=8, w_bits=4, **kw)
        ref = R.int_linear(x.cpu(), pw.cpu(), ws.cpu(), None, 8, 4, None,
                           signs.cpu() if kw else None, None, None, 1.0)
        assert len(calls) == want and _same_bits(y.cpu(), ref), (m, kw)
    x = torch.randn(2 * k + 4, dtype=torch.float16, device="cuda")[4:].view(2, k)  # 8 bytes off 16-byte alignment
    assert fast_int_gemm.fused_fits(x.clone(), None, pw, 64) and not fast_int_gemm.fused_fits(x, None, pw, 64)
    assert not fast_int_gemm.fused_fits(torch.zeros(1, 16384, dtype=torch.float16, device="cuda"), None, pw,
                                        torch.cuda.get_device_properties(0).multi_processor_count * 16 + 1)
    with pytest.raises(ValueError, match="M \\* K must be at most 32768"):  # the binding checks what it is given
        fast_int_gemm.int_gemv_fused(torch.zeros(9, 4096, dtype=torch.float16, device="cuda"), pw, ws, None, 8, 4,
                                     None, 1.0)


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
    assert names["quantize_act"] == names["int_linear"] == "cuda"


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
    x_decode = torch.randn(1, 2, k, dtype=torch.bfloat16)  # the fused GEMV without a rotation
    ref, ref_decode = mod(x), mod(x_decode)
    y = mod.cuda()(x.cuda())
    assert y.shape == (3, 5, n) and _rel_err(y, ref) < 2e-2
    assert _rel_err(mod(x_decode.cuda()), ref_decode) < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("m,rotation", [(16, "hadamard"), (4, None)])
def test_w4a8_linear_cuda_graph_capture(m, rotation, monkeypatch):
    """Both module paths capture: quantize_act + GEMM (rotation) and the fused GEMV (M = 4)."""
    monkeypatch.setenv("MODAQ_INT_GEMM_TUNE", "0")
    k, n = 3584, 1024
    lin = torch.nn.Linear(k, n, dtype=torch.float16)
    rot = Rotation.random_hadamard(k, seed=1) if rotation else None
    mod = W4A8Linear.from_linear(lin, rotation=rot, smooth=torch.rand(k) + 0.5).cuda()
    static_in = torch.randn(m, k, dtype=torch.float16, device="cuda")
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
