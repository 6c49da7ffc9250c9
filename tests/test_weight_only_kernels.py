"""W3A16 / W4A16 kernels: packed layout (CPU), Triton kernel under the interpreter (CPU,
subprocess), CUDA GEMV / dequant / Triton / op dispatch against the reference (GPU)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from modaq import formats, ops, weight_only_layout
from modaq.nn.quant_linear import W3A16Linear, W4A16Linear
from modaq.ops import reference

PACK = {3: formats.pack_w3, 4: formats.pack_w4}
UNPACK = {3: formats.unpack_w3, 4: formats.unpack_w4}
REF = {3: reference.w3a16_gemm, 4: reference.w4a16_gemm}
OP = {3: ops.w3a16_gemm, 4: ops.w4a16_gemm}


def logical(bits, n, k, group, device="cpu"):
    """Random logical weight (q, scale, zero) with a full range of codes and zero points."""
    q = torch.randint(0, 2 ** bits, (n, k), dtype=torch.uint8, device=device)
    scale = (torch.rand(n, k // group, device=device) * 0.02 + 1e-3).half()
    zero = torch.randint(0, 2 ** bits, (n, k // group), dtype=torch.uint8, device=device)
    return q, scale, zero


# ------------------------------------------------------------------------------ layout (CPU)

@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("n,k,group", [(1, 64, 64), (17, 320, 64), (37, 384, 128), (48, 1408, 128), (5, 256, 64)])
def test_pack_unpack_round_trip_bit_exact(bits, n, k, group):
    q, scale, zero = logical(bits, n, k, group)
    scale[0, 0] = float("-0.0")  # sign of zero survives (bit-exact, not just equal)
    packed = PACK[bits](q, scale, zero)
    q2, s2, z2 = UNPACK[bits](*packed, n, k)
    assert torch.equal(q2, q) and torch.equal(z2, zero)
    assert torch.equal(s2.view(torch.int16), scale.view(torch.int16))


@pytest.mark.parametrize("fmt", ["w3a16", "w4a16"])
@pytest.mark.parametrize("n,k,group", [(17, 320, 64), (40, 640, 128), (256, 4096, 128)])
def test_packed_shapes_match_pack(fmt, n, k, group):
    bits = formats.get_format(fmt).weight_bits
    packed = PACK[bits](*logical(bits, n, k, group))._asdict()
    shapes = formats.packed_shapes(fmt, n, k, group)
    for name, (shape, dtype) in shapes.items():
        assert tuple(packed[name].shape) == shape and packed[name].dtype == dtype, name
    mod = (W3A16Linear if bits == 3 else W4A16Linear)(k, n, group_size=group)
    assert all(getattr(mod, name).shape == shape for name, (shape, _) in shapes.items())


def test_pack_rejects_bad_input():
    q, scale, zero = logical(3, 8, 128, 64)
    with pytest.raises(ValueError, match="q / zero"):
        formats.pack_w3(q + 8, scale, zero)
    with pytest.raises(ValueError, match="group_size"):
        formats.pack_w4(*logical(4, 8, 256, 32))
    with pytest.raises(TypeError, match="q"):
        formats.pack_w4(q.int(), scale, zero)


def test_op_rejects_wrong_packed_tensors():
    q, scale, zero = logical(3, 16, 256, 128)
    qw, sc, ze = formats.pack_w3(q, scale, zero)
    x = torch.randn(2, 256)
    with pytest.raises(ValueError, match="qweight"):
        ops.w3a16_gemm(x, qw[:, :-4].contiguous(), sc, ze, 16, 128)
    with pytest.raises(ValueError, match="scales"):
        ops.w3a16_gemm(x, qw, sc, ze, 16, 64)  # scales are laid out for group 128
    with pytest.raises(TypeError, match="zeros"):
        ops.w3a16_gemm(x, qw, sc, ze.int(), 16, 128)


def _half_bits_to_float(bits16, dtype):
    if dtype == "fp16":
        return bits16.astype(np.uint16).view(np.float16).astype(np.float64)
    return (bits16.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _emulate_decode(words, zeros_rh, field_offset, dtype, width):
    """Mirror of weight_only.cuh decode_field on numpy uint32 words: (lo, hi) of v - z, or None
    if the magic-number arithmetic would not be exact."""
    mantissa, magic_f, magic = (10, 1024.0, 0x6400) if dtype == "fp16" else (7, 128.0, 0x4300)
    s = (mantissa // width) * width
    b = field_offset % s
    mask = ((1 << width) - 1) * 0x00010001
    h = ((words >> np.uint32(field_offset - b)) & np.uint32(mask << b)) | np.uint32(magic * 0x00010001)
    lo, hi = _half_bits_to_float(h & 0xFFFF, dtype), _half_bits_to_float(h >> 16, dtype)
    c = -(magic_f / 2 ** b + zeros_rh)
    return lo / 2 ** b + c, hi / 2 ** b + c


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_kernel_decode_contract(bits, group, dtype):
    """Read one packed block the way csrc/weight_only.cuh does (byte offsets, unit words, LOP3 +
    magic-number fields, mma A-fragment positions) and check every lane recovers q - zero and
    the scale of its rows: the executable contract between pack_w* and the CUDA kernel."""
    n, k = 40, 640
    q, scale, zero = logical(bits, n, k, group)
    qw, sc, ze = (t.numpy() for t in PACK[bits](q, scale, zero))
    tiles, ktiles = -(-n // 16), -(-k // 256)
    gt = 256 // group
    lanes = np.arange(32)
    g, t = lanes // 4, lanes % 4
    for tile in range(tiles):
        for kt in range(ktiles):
            block = tile * ktiles + kt
            words = qw.reshape(-1).view(np.uint32)[block * (bits * 128):(block + 1) * (bits * 128)]
            vec = np.stack([words[v * 128 + lanes * 4 + c] for v in range(bits) for c in range(4)], 1)
            vec = vec.reshape(32, bits, 4)  # lane, 16-byte vector, component
            sz = block * 16 * gt + g[:, None] * 2 * gt + np.arange(2 * gt)[None, :]
            s_pairs = sc.reshape(-1)[sz].astype(np.float64).reshape(32, gt, 2)
            z_pairs = ze.reshape(-1)[sz].astype(np.float64).reshape(32, gt, 2)
            for u in range(4):
                j = u * 64 // group
                w = vec[:, :, u] if bits == 3 else vec[:, u, :]  # unit_words
                for i in range(16):
                    rh, kh, s = i & 1, (i >> 1) & 1, i >> 2
                    zr = z_pairs[:, j, rh]
                    if bits == 4:
                        lo, hi = _emulate_decode(w[:, i // 4], zr, 4 * (i % 4), dtype, 4)
                    elif i < 15:
                        lo, hi = _emulate_decode(w[:, i // 5], zr, 3 * (i % 5), dtype, 3)
                    else:
                        spill = ((w[:, 0] >> 15) & 0x10001) | ((w[:, 1] >> 14) & 0x20002) | ((w[:, 2] >> 13) & 0x40004)
                        lo, hi = _emulate_decode(spill, zr, 0, dtype, 3)
                    rows = tile * 16 + g + 8 * rh
                    cols = kt * 256 + u * 64 + 16 * s + 8 * kh + 2 * t
                    valid = (rows < n) & (cols < k)
                    r, c = rows[valid], cols[valid]
                    want_lo = q.numpy()[r, c].astype(np.float64) - zero.numpy()[r, c // group]
                    want_hi = q.numpy()[r, c + 1].astype(np.float64) - zero.numpy()[r, c // group]
                    assert np.array_equal(lo[valid], want_lo) and np.array_equal(hi[valid], want_hi), (tile, kt, u, i)
                    assert np.array_equal(s_pairs[valid, j, rh], scale.numpy()[r, c // group].astype(np.float64))


# --------------------------------------------------------------- Triton kernel (interpreter)

_INTERPRETER_CHECK = textwrap.dedent("""
    import torch
    from modaq import formats
    from modaq.ops import reference
    from modaq.triton_kernels.weight_only_gemm import weight_only_gemm
    torch.manual_seed(0)
    worst = 0.0
    for bits in (3, 4):
        for m, n, k, group in ((1, 40, 320, 64), (20, 24, 384, 128), (33, 17, 640, 128)):
            q = torch.randint(0, 2 ** bits, (n, k), dtype=torch.uint8)
            scale = (torch.rand(n, k // group) * 0.02 + 1e-3).half()
            zero = torch.randint(0, 2 ** bits, (n, k // group), dtype=torch.uint8)
            packed = (formats.pack_w3 if bits == 3 else formats.pack_w4)(q, scale, zero)
            x = torch.randn(m, k).half()
            bias = torch.randn(n)
            y = weight_only_gemm(x, *packed, bits, n, group, bias, {"block_m": 16, "block_n": 32})
            ref = (reference.w3a16_gemm if bits == 3 else reference.w4a16_gemm)(x, *packed, n, group, bias)
            err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
            assert y.dtype == x.dtype and y.shape == (m, n) and err == err, (bits, m, n, k, group, err)
            worst = max(worst, err)
    print("WORST", worst)
""")


def test_triton_kernel_interpreter():
    """fp16 only: the CPU interpreter of Triton mis-converts int -> bf16 (bf16 runs on GPU)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", _INTERPRETER_CHECK], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    worst = float(out.stdout.split("WORST")[-1])
    assert worst < 1e-3, worst


# ------------------------------------------------------------------------------- GPU (CUDA)

def _cuda_ext():
    from modaq.ops import _cuda
    return _cuda if _cuda.available() else None


needs_ext = pytest.mark.skipif(not torch.cuda.is_available() or _cuda_ext() is None,
                               reason="needs a CUDA device and the modaq._C extension")
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _rel_err(y, ref):
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


def _gpu_case(bits, n, k, group, m, dtype, seed):
    torch.manual_seed(seed)
    packed = PACK[bits](*logical(bits, n, k, group, "cuda"))
    x = torch.randn(m, k, device="cuda").to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype if seed % 2 else torch.float32)
    return packed, x, bias


def _gemv_poisoned(bits, x, packed, n, group, bias, splits=0, kernel=0):
    """Call the C entry point on a NaN-poisoned output: every element must be written."""
    cu = _cuda_ext()
    y = torch.full((x.shape[0], n), float("nan"), dtype=x.dtype, device=x.device)
    dev, stream = cu.launch_args(x)
    cu._C.weight_only_gemv(cu.ptr(x), cu.ptr(packed.qweight), cu.ptr(packed.scales), cu.ptr(packed.zeros),
                           cu.ptr(bias), cu.DTYPE_CODE[bias.dtype] if bias is not None else 0, cu.ptr(y),
                           x.shape[0], n, x.shape[1], bits, group, cu.DTYPE_CODE[x.dtype], splits, dev, stream,
                           kernel)
    return y


@pytest.mark.gpu
@needs_ext
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group", [64, 128])
def test_gemv_matches_reference(bits, dtype, group):
    seed = 0
    for n, k_groups in ((17, 5), (203, 11), (1000, 33)):  # K, N not multiples of 256
        for m in (1, 3, 8, 9, 16):
            seed += 1
            packed, x, bias = _gpu_case(bits, n, group * k_groups, group, m, dtype, seed)
            y = _gemv_poisoned(bits, x, packed, n, group, bias if seed % 3 else None)
            ref = REF[bits](x, *packed, n, group, bias if seed % 3 else None)
            assert not y.isnan().any(), (n, m)
            assert _rel_err(y, ref) < TOL[dtype], (n, group * k_groups, m, _rel_err(y, ref))


@pytest.mark.gpu
@needs_ext
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemv_both_kernels_match_reference(bits, dtype):
    """Shared-memory (kernel=1; kernel=3 forces its shallow ring at every M) and register
    (kernel=2) pipelined GEMVs, and the automatic choice on both sides of its N > 4096 / M > 4
    switch; N = 17000 gives >= 2 CTAs per SM (<= 132 SMs), where the shared-memory kernel runs
    its shallow ring at M <= 8."""
    seed = 100
    for n, k, group in ((4200, 640, 128), (300, 1408, 64), (17000, 640, 64)):
        for m in (1, 5, 12):
            seed += 1
            packed, x, bias = _gpu_case(bits, n, k, group, m, dtype, seed)
            ref = REF[bits](x, *packed, n, group, bias)
            for kernel in (0, 1, 2, 3):
                y = _gemv_poisoned(bits, x, packed, n, group, bias, kernel=kernel)
                assert not y.isnan().any() and _rel_err(y, ref) < TOL[dtype], (n, k, m, kernel, _rel_err(y, ref))


@pytest.mark.gpu
@needs_ext
@pytest.mark.parametrize("bits", [3, 4])
def test_gemv_cluster_splits_agree(bits):
    """K split over 1..8 CTAs of a cluster (sm_90; others fall back to 1) gives the same result,
    with one and two token tiles."""
    n, k = 100, 128 * 40
    for m in (5, 12):
        packed, x, bias = _gpu_case(bits, n, k, 128, m, torch.bfloat16, 7 + m)
        ref = REF[bits](x, *packed, n, 128, bias)
        for splits in (1, 2, 3, 5, 8):
            for kernel in (1, 2, 3):
                y = _gemv_poisoned(bits, x, packed, n, 128, bias, splits, kernel)
                assert not y.isnan().any() and _rel_err(y, ref) < TOL[torch.bfloat16], (m, splits, kernel)


@pytest.mark.gpu
@needs_ext
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dequantize_bit_exact(bits, dtype):
    from modaq.ops.fast_weight_only import dequantize
    for n, k, group in ((45, 320, 64), (130, 1408, 128)):
        q, scale, zero = logical(bits, n, k, group, "cuda")
        packed = PACK[bits](q, scale, zero)
        w = dequantize(bits, *packed, n, k, group, dtype)
        want = formats.dequantize_weight_asym(q, scale, zero, group).to(dtype)
        assert torch.equal(w, want)


@pytest.mark.gpu
@needs_ext
@pytest.mark.parametrize("bits", [3, 4])
def test_prefill_paths_match_reference(bits):
    """Chunked GEMV (M > 16) and dequantize + cuBLAS in row chunks (last chunk partial)."""
    from modaq.ops.fast_weight_only import run_dequant_cublas, run_gemv
    n, k, group = 333, 1152, 64
    for m, dtype in ((40, torch.float16), (97, torch.bfloat16)):
        packed, x, bias = _gpu_case(bits, n, k, group, m, dtype, m)
        for b in (bias, None):
            ref = REF[bits](x, *packed, n, group, b)
            outs = {"gemv": run_gemv(bits, x, *packed, n, group, b),
                    "dq_chunked": run_dequant_cublas(bits, x, *packed, n, group, b, chunk_bytes=64 * k * 2),
                    "dq_full": run_dequant_cublas(bits, x, *packed, n, group, b, chunk_bytes=0)}
            for name, y in outs.items():
                assert not y.isnan().any() and _rel_err(y, ref) < TOL[dtype], (name, m, _rel_err(y, ref))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_gemm_matches_reference(bits, dtype):
    from modaq.ops.fast_weight_only import run_triton
    for m, n, k, group in ((17, 203, 640, 128), (40, 96, 320, 64), (100, 300, 1408, 128)):
        packed, x, bias = _gpu_case(bits, n, k, group, m, dtype, m)
        y = run_triton(bits, x, *packed, n, group, bias)
        ref = REF[bits](x, *packed, n, group, bias)
        assert not y.isnan().any() and _rel_err(y, ref) < TOL[dtype], (m, n, k, _rel_err(y, ref))


@pytest.mark.gpu
@needs_ext
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_op_dispatch_all_m(bits, dtype):
    """The public op on CUDA (every M regime, 3-D input, misaligned x) vs the CPU reference."""
    n, k, group = 333, 1152, 128
    q, scale, zero = logical(bits, n, k, group)
    packed = PACK[bits](q, scale, zero)
    packed_gpu = [t.cuda() for t in packed]
    for m in (1, 16, 17, 64, 300):
        x = torch.randn(m, k).to(dtype)
        buf = torch.empty(m * k + 1, dtype=dtype, device="cuda")
        x_gpu = buf[1:].view(m, k)  # contiguous, 2 bytes off 16-byte alignment
        x_gpu.copy_(x)
        y = OP[bits](x_gpu.reshape(1, m, k), *packed_gpu, n, group)
        ref = REF[bits](x, *packed, n, group)
        assert y.shape == (1, m, n) and _rel_err(y.cpu().reshape(m, n), ref) < TOL[dtype], m


@pytest.mark.gpu
@needs_ext
def test_modules_and_cuda_graph():
    lin = torch.nn.Linear(640, 200).to(torch.bfloat16)
    for cls in (W3A16Linear, W4A16Linear):
        mod = cls.from_linear(lin, group_size=64)
        x = torch.randn(4, 640).to(torch.bfloat16)
        ref = mod(x)
        gmod = mod.cuda()
        xg = x.cuda()
        assert _rel_err(gmod(xg).cpu(), ref) < TOL[torch.bfloat16]
        graph = torch.cuda.CUDAGraph()
        gmod(xg)  # warm-up outside capture
        with torch.cuda.graph(graph):
            out = gmod(xg)
        x2 = torch.randn(4, 640).to(torch.bfloat16)
        xg.copy_(x2)
        graph.replay()
        assert _rel_err(out.cpu(), mod.cpu()(x2)) < TOL[torch.bfloat16]
