"""quantize_act kernels (plain, randomized Hadamard, Kronecker) against the fp32 CPU reference.

CPU: the mma fragment layouts of the transform operands decode (with the PTX ISA's own
index formulas) back to the matrices.  GPU: the _C kernels on many shapes, both dtypes, both
bit widths, with smoothing, activation clip ratios (1 and < 1: saturating values), outlier
channels, zero rows, NaN rows and poisoned outputs.
"""
import pytest
import torch

from modaq import formats as F
from modaq import ops
from modaq.hadamard import SUPPORTED_M, random_signs
from modaq.ops import mma_fragments as mf
from modaq.ops import reference as R

DTYPES = [torch.float16, torch.bfloat16]


# ------------------------------------------------------------------ CPU: fragment layouts

def _decode_a(frags: torch.Tensor, dtype=torch.bfloat16) -> torch.Tensor:
    """int32 [rt, ks, terms, 32, 4] -> fp32 [16 rt, 16 ks] (sum of terms), PTX m16n8k16 A."""
    rt, ks, terms = frags.shape[:3]
    halves = frags.contiguous().view(dtype).float()  # [rt, ks, terms, 32, 8]
    out = torch.zeros(rt * 16, ks * 16)
    for lane in range(32):
        g, c = lane // 4, lane % 4
        for i in range(8):  # a0..a7
            row = g if (i < 2 or 4 <= i < 6) else g + 8
            col = 2 * c + (i & 1) + (8 if i >= 4 else 0)
            for r in range(rt):
                for s in range(ks):
                    out[r * 16 + row, s * 16 + col] += halves[r, s, :, lane, i].sum()
    return out


def _decode_b(frags: torch.Tensor, dtype=torch.bfloat16) -> torch.Tensor:
    """int32 [nt, ks, terms, 32, 2] -> fp32 [16 ks, 8 nt], PTX m16n8k16 B."""
    nt, ks, terms = frags.shape[:3]
    halves = frags.contiguous().view(dtype).float()  # [nt, ks, terms, 32, 4]
    out = torch.zeros(ks * 16, nt * 8)
    for lane in range(32):
        g, c = lane // 4, lane % 4
        for i in range(4):  # b0..b3
            row = 2 * c + (i & 1) + (8 if i >= 2 else 0)
            for n in range(nt):
                for s in range(ks):
                    out[s * 16 + row, n * 8 + g] += halves[n, s, :, lane, i].sum()
    return out


@pytest.mark.parametrize("rows,k", [(16, 16), (28, 28), (37, 20)])
def test_a_fragments_decode_to_the_matrix(rows, k):
    a = torch.randn(rows, k)
    frags = mf.a_fragments(a, 3)
    assert frags.dtype == torch.int32 and frags.shape == (-(-rows // 16), -(-k // 16), 3, 32, 4)
    dec = _decode_a(frags)
    assert torch.allclose(dec[:rows, :k], a, rtol=1e-6, atol=0)
    assert float(dec[rows:].abs().sum() + dec[:, k:].abs().sum()) == 0.0  # zero padding


@pytest.mark.parametrize("rows,k", [(16, 8), (28, 28), (37, 20)])
def test_tf32_a_fragments_decode_to_the_matrix(rows, k):
    a = torch.randint(-1, 2, (rows, k)).float()
    frags = mf.a_fragments_tf32(a)
    assert frags.shape == (-(-rows // 16), -(-k // 8), 32, 4)
    vals = frags.view(torch.float32)
    dec = torch.zeros(frags.shape[0] * 16, frags.shape[1] * 8)
    for lane in range(32):
        g, c = lane // 4, lane % 4
        for i in range(4):  # PTX m16n8k8 .tf32 A: a0 (g, c), a1 (g+8, c), a2 (g, c+4), a3 (g+8, c+4)
            row, col = g + 8 * (i % 2), c + 4 * (i // 2)
            for r in range(frags.shape[0]):
                for s in range(frags.shape[1]):
                    dec[r * 16 + row, s * 8 + col] = vals[r, s, lane, i]
    assert torch.equal(dec[:rows, :k], a) and float(dec.abs().sum()) == float(a.abs().sum())
    with pytest.raises(ValueError, match="exact in tf32"):
        mf.a_fragments_tf32(torch.tensor([[1.0 + 2 ** -20]]))


@pytest.mark.parametrize("k,n", [(16, 8), (16, 16), (20, 13)])
def test_b_fragments_decode_to_the_matrix(k, n):
    b = torch.randn(k, n)
    frags = mf.b_fragments(b, 3)
    assert frags.shape == (-(-n // 8), -(-k // 16), 3, 32, 2)
    dec = _decode_b(frags)
    assert torch.allclose(dec[:k, :n], b, rtol=1e-6, atol=0)


def _kron_terms(left, right):
    """kron_operands decoded: ([P1''^T hi, lo], [P2'' hi, lo]) as float64, and the consts."""
    a, b, consts = mf.kron_operands(left, right)
    b = b.permute(0, 1, 3, 2, 4)  # back to [nt, ks, terms, 32, 2]
    lt = [_decode_a(a[:, :, t:t + 1], torch.float16).double() for t in range(2)]
    r = [_decode_b(b[:, :, t:t + 1], torch.float16).double() for t in range(2)]
    return lt, r, consts


def _split_f16(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hi = v.half()
    return hi.double(), (v - hi.float()).half().double()


@pytest.mark.parametrize("n1,n2", [(28, 16), (36, 32), (7, 9), (20, 48)])
def test_kron_operands_emulated_match_the_reference(n1, n2):
    """The kernel's arithmetic, emulated: tokens scaled by powers of two into [-2^14, 2^14],
    every operand split into fp16 hi + lo, three term pairs per product; matches the fp32
    reference to ~2^-20 of each token's range, and every split operand stays within 2^14."""
    g = torch.Generator().manual_seed(n1 * n2)
    left, right = torch.randn(n1, n1, generator=g) * 3e-3, torch.randn(n2, n2, generator=g) * 40.0
    x = torch.randn(6, n1 * n2, generator=g) * torch.tensor([1e-6, 1.0, 3e4, 1e-3, 7.0, 1e5])[:, None]
    x[:, 5] *= 100.0  # an outlier channel
    lt, r, consts = _kron_terms(left, right)
    n1p, n2p = lt[0].shape[0], r[0].shape[0]
    assert (n1p, n2p) == (-(-n1 // 16) * 16, -(-n2 // 16) * 16) and lt[0].shape[1] == n1p and r[0].shape[1] == n2p
    assert float(max(t.abs().max() for t in lt + r)) <= 2 ** 14
    amax = x.abs().amax(1)
    s = torch.ldexp(torch.ones(6), mf.DATA_MAX_EXP - mf._exponent_bound(amax))  # the kernel's data_scale
    xs = torch.zeros(6, n1p, n2p)
    xs[:, :n1, :n2] = (x * s[:, None]).view(6, n1, n2)
    assert float(xs.abs().max()) <= 2 ** 14
    xh, xl = _split_f16(xs)
    z = (xh @ r[0] + xh @ r[1] + xl @ r[0]).float() * consts[0]
    assert float(z.abs().max()) <= 2 ** 14
    zh, zl = _split_f16(z)
    y = (lt[0] @ zh + lt[0] @ zl + lt[1] @ zh).float() * (consts[1] / s)[:, None, None]
    y = y[:, :n1, :n2].reshape(6, -1)
    ref = R.kron_rows(x, left, right)
    err = (y.double() - ref.double()).abs().amax(1) / ref.double().abs().amax(1)
    assert float(err.max()) < 2 ** -20, err


@pytest.mark.parametrize("k", [128, 384, 1152, 1280, 3584, 4096, 14336, 18944])
def test_mix_first_order_equals_the_reference_transform(k):
    """The algebra of csrc/quantize_act_hadamard_mix.cu, in fp64: with p' = min(p, 128) and
    m' = K / p', (x * signs) @ H_K / sqrt(K) == H_m'^T (x * signs)_r S_p' / sqrt(K), where
    H_m' = hadamard_matrix(m') (the kernel's A operand, ops.fast_activation._hadamard_mix_left)
    and the mix comes before the p'-point FWHT."""
    from modaq.hadamard import hadamard_factors, hadamard_matrix
    _, p = hadamard_factors(k)
    p2 = min(p, 128)
    rows = k // p2
    x = torch.randn(3, k, dtype=torch.float64)
    signs = random_signs(k, seed=k).double()
    xr = (x * signs).reshape(3, rows, p2)
    mixed = hadamard_matrix(rows).t() @ xr  # [3, m', p']
    y = (mixed @ hadamard_matrix(p2)).reshape(3, k) / k ** 0.5  # S_p' = hadamard_matrix(p'), p' a power of 2
    assert torch.allclose(y, R.hadamard_rows(x, signs), rtol=0, atol=1e-12)


def test_version_cache_follows_in_place_updates_and_drops_freed_tensors():
    """fast_activation.VersionCache (the Kronecker fragments, the +-1 check of Hadamard signs)."""
    import gc

    from modaq.ops.fast_activation import VersionCache
    cache = VersionCache(limit=2)
    a, b = torch.ones(4), torch.ones(4)
    assert cache.lookup((a, b)) == (False, None)
    assert cache.store((a, b), "v1") == "v1" and cache.lookup((a, b)) == (True, "v1")
    assert cache.lookup((a,)) == (False, None)  # another tuple of tensors
    assert cache.lookup((a, torch.ones(4)))[0] is False  # another second tensor
    b.mul_(2.0)  # in place: a new version
    assert cache.lookup((a, b)) == (False, None)
    cache.store((a, b), "v2")
    assert cache.lookup((a, b)) == (True, "v2")
    for _ in range(3):
        cache.store((torch.ones(1),), "gone")  # freed at once
    gc.collect()
    cache.store((torch.zeros(2),), "new")  # over the limit: entries of freed tensors dropped
    assert len(cache._entries) <= 3 and cache.lookup((a, b)) == (True, "v2")


def test_three_bf16_terms_carry_fp32_precision():
    x = torch.randn(4096) * torch.logspace(-6, 6, 4096)
    t = mf.split_terms(x, 3)
    back = sum(p.double() for p in t)
    assert float(((back - x.double()).abs() / x.double().abs()).max()) < 2 ** -22
    assert torch.equal(mf.split_terms(torch.tensor([1.0, -1.0]), 1)[0].float(), torch.tensor([1.0, -1.0]))


# --------------------------------------------------------------------------- GPU tests

def _inputs(m, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x[:, torch.randperm(k, generator=g)[:3]] *= 100.0  # outlier channels
    if m > 2:
        x[1] = 0.0  # a zero row
    return x.to(dtype)


def _compare(x, bits, kw, exact, max_flip=1e-3, clip=1.0):
    """CUDA op vs CPU reference on the same inputs; poisoned allocator memory catches holes."""
    junk = torch.full((32 << 20,), 0x7F, dtype=torch.uint8, device="cuda")
    del junk
    q, s = ops.quantize_act(x.cuda(), bits, clip_ratio=clip, **{a: t.cuda() for a, t in kw.items()})
    q_ref, s_ref = R.quantize_act(x, bits, **kw, clip_ratio=clip)
    q, s = q.cpu(), s.cpu()
    assert q.dtype == q_ref.dtype and q.shape == q_ref.shape
    unpack = F.unpack_a4 if bits == 4 else (lambda t: t)
    diff = (unpack(q).int() - unpack(q_ref).int()).abs()
    if exact:
        assert torch.equal(s, s_ref) and int(diff.max()) == 0
    else:
        assert torch.allclose(s, s_ref, rtol=1e-5, atol=0), float(((s - s_ref).abs() / s_ref.clamp_min(1e-30)).max())
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < max_flip
    return q, s


@pytest.mark.gpu
@pytest.mark.parametrize("clip", [1.0, 0.7])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 8), (3, 200), (5, 130), (37, 1152), (9, 3584), (4, 4304), (2, 18944), (3, 40000)])
def test_plain_is_bit_exact(bits, dtype, m, k, clip):
    x = _inputs(m, k, dtype)
    q, _ = _compare(x, bits, {}, exact=True, clip=clip)
    if clip < 1:  # the outlier channels lie beyond the clipped range: they saturate, not wrap
        assert int((F.unpack_a4(q) if bits == 4 else q).int().abs().max()) == 2 ** (bits - 1) - 1
    _compare(x, bits, {"smooth": torch.rand(k) + 0.5}, exact=True, clip=clip)


@pytest.mark.gpu
def test_plain_odd_k_and_unaligned_input():
    x = _inputs(6, 7, torch.float16)
    _compare(x, 8, {}, exact=True)
    _compare(x, 8, {}, exact=True, clip=0.6)
    x = _inputs(4, 256, torch.bfloat16)
    storage = torch.empty(x.numel() + 1, dtype=x.dtype, device="cuda")
    unaligned = storage[1:].view(4, 256)  # contiguous, but 2 bytes off a 16-byte boundary
    unaligned.copy_(x)
    for bits in (8, 4):
        for clip in (1.0, 0.6):  # the one-block-per-row fallback kernel
            q, s = ops.quantize_act(unaligned, bits, clip_ratio=clip)
            q_ref, s_ref = R.quantize_act(x, bits, clip_ratio=clip)
            assert torch.equal(q.cpu(), q_ref) and torch.equal(s.cpu(), s_ref)


@pytest.mark.gpu
@pytest.mark.parametrize("clip", [1.0, 0.8])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("core", SUPPORTED_M)
def test_hadamard_every_core(bits, core, clip):
    for p, dtype in ((16, torch.float16), (128, torch.bfloat16), (2, torch.float16)):
        k = core * p
        x = _inputs(5, k, dtype, seed=core + p)
        _compare(x, bits, {"hadamard_signs": random_signs(k, seed=p)}, exact=core == 1, clip=clip)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [64, 4096, 3584, 14336, 18944, 1152])
def test_hadamard_model_sizes(dtype, k):
    x = _inputs(17, k, dtype, seed=k)
    kw = {"hadamard_signs": random_signs(k, seed=1), "smooth": torch.rand(k) + 0.5}
    _compare(x, 8, kw, exact=False, max_flip=1e-4)
    _compare(x, 4, kw, exact=False, max_flip=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("k", [12 * 1024, 20 * 1024, 12 * 2048, 172 * 128])
def test_hadamard_wide_rows_with_a_core(k):
    """p >= 1024 with m > 1: the two FWHT passes over padded rows feeding the tensor-core mix
    (and 172 * 128, the largest core, with every prefetch register in use)."""
    x = _inputs(9, k, torch.bfloat16, seed=k)
    kw = {"hadamard_signs": random_signs(k, seed=4), "smooth": torch.rand(k) + 0.5}
    _compare(x, 8, kw, exact=False, max_flip=1e-4)
    _compare(x, 4, kw, exact=False, max_flip=1e-4, clip=0.9)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("k", [3584, 14336, 18944, 172 * 128, 12 * 2048])
@pytest.mark.parametrize("m", [1, 3, 16])
def test_hadamard_small_m_cluster_kernel(m, k, bits, monkeypatch):
    """A few tokens take the cluster kernel (8 CTAs per token, quantize_act_hadamard_small.cu);
    the persistent kernel, forced with SMALL_M_MAX = 0, gives the same result within the
    transform's rounding; smoothing, clipping, a zero row and a NaN row."""
    from modaq.ops import fast_activation
    calls = []
    small = fast_activation._cuda._C.quantize_act_hadamard_small
    monkeypatch.setattr(fast_activation._cuda._C, "quantize_act_hadamard_small",
                        lambda *a: calls.append(1) or small(*a))
    monkeypatch.setattr(fast_activation, "SMALL_MIN_K", 0)  # every K here
    x = _inputs(m, k, torch.bfloat16, seed=k + m)
    if m == 3:
        x[1] = 0.0
        x[2, 5] = float("nan")
    kw = {"hadamard_signs": random_signs(k, seed=6), "smooth": torch.rand(k) + 0.5}
    if m == 3:
        q, s = ops.quantize_act(x.cuda(), bits, clip_ratio=0.9, **{a: t.cuda() for a, t in kw.items()})
        assert bool(torch.isnan(s[2])) and float(s[1]) == 0.0 and int(q[1].abs().max()) == 0
        x = x[:1]
    _compare(x, bits, kw, exact=False, max_flip=1e-3, clip=0.9)
    assert calls, "the cluster kernel did not run"
    calls.clear()
    monkeypatch.setattr(fast_activation, "SMALL_M_MAX", 0)
    _compare(x, bits, kw, exact=False, max_flip=1e-3, clip=0.9)
    assert not calls


def _count_calls(monkeypatch, name):
    """Count the calls of _C.<name> (still running it)."""
    from modaq.ops import fast_activation
    calls = []
    fn = getattr(fast_activation._cuda._C, name)
    monkeypatch.setattr(fast_activation._cuda._C, name, lambda *a: calls.append(1) or fn(*a))
    return calls


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,smooth,signs,kernel", [
    (1, 18944, True, 1.0, "quantize_act_hadamard_small"), (16, 14336, True, 1.0, "quantize_act_hadamard_small"),
    (1, 18944, False, 1.0, "quantize_act_hadamard_mix"), (17, 18944, False, 1.0, "quantize_act_hadamard_mix"),
    (1, 3584, False, 1.0, "quantize_act_hadamard_mix"), (1, 4096, False, 1.0, "quantize_act_hadamard"),
    (17, 18944, True, 1.0, "quantize_act_hadamard"), (64, 3584, False, 2.0, "quantize_act_hadamard")])
def test_hadamard_routing_between_the_kernels(m, k, smooth, signs, kernel, monkeypatch):
    """The default rule (fp16): the mix-first kernel for unsmoothed tokens with +-1 signs except a
    few tokens of a power-of-two K; the cluster kernel for a few smoothed tokens of a long K; the
    persistent kernel for the rest: a few tokens of K = 4096, smoothed tokens, and signs that are
    not +-1 (here 2 x +-1: the reference multiplies by them)."""
    calls = _count_calls(monkeypatch, kernel)
    kw = {"hadamard_signs": random_signs(k, seed=2) * signs}
    if smooth:
        kw["smooth"] = torch.rand(k) + 0.5
    _compare(_inputs(m, k, torch.float16, seed=m), 4, kw, exact=False)
    assert calls, f"{kernel} did not run"


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [128, 12 * 32, 20 * 64, 1152, 3584, 4096, 14336, 18944, 172 * 128])
def test_hadamard_mix_first_kernel(k, dtype, bits, monkeypatch):
    """quantize_act_hadamard_mix (H_m' on the exact input, then the FWHT in registers) against the
    reference: p' = 32 / 64 / 128, cores folded with Sylvester factors (4096 = 32 x 128, 14336 =
    112 x 128), the largest core, several tokens per CTA and a partly filled last group, a zero
    row and a NaN row, clipping; m' = 1 (K = 128) is bit-exact."""
    from modaq.ops import fast_activation
    monkeypatch.setattr(fast_activation, "FORCE_HADAMARD", "mix")
    calls = _count_calls(monkeypatch, "quantize_act_hadamard_mix")
    signs = random_signs(k, seed=k)
    for m, clip in ((1, 1.0), (37, 1.0), (301, 0.8)):
        x = _inputs(m, k, dtype, seed=k + m)
        _compare(x, bits, {"hadamard_signs": signs}, exact=k == 128, max_flip=1e-4, clip=clip)
    x = _inputs(6, k, dtype, seed=1)
    x[3, 5] = float("nan")
    q, s = ops.quantize_act(x.cuda(), bits, hadamard_signs=signs.cuda())
    assert bool(torch.isnan(s[3])) and float(s[1]) == 0.0 and int(q[1].abs().max()) == 0
    assert int(q[3].abs().max()) == 0 and bool(torch.isfinite(s[[0, 1, 2, 4, 5]]).all())
    assert len(calls) == 4


@pytest.mark.gpu
def test_hadamard_mix_first_kernel_in_a_cuda_graph():
    """The +-1 check runs once per signs tensor (outside the capture); the captured call replays
    the mix-first kernel and follows new inputs."""
    k = 3584
    signs = random_signs(k, seed=9).cuda()
    x = _inputs(40, k, torch.bfloat16, seed=3).cuda()
    ops.quantize_act(x, 4, hadamard_signs=signs)  # warm-up: checks the signs, builds the fragments
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q, s = ops.quantize_act(x, 4, hadamard_signs=signs)
    x.copy_(_inputs(40, k, torch.bfloat16, seed=4).cuda())
    graph.replay()
    q_ref, s_ref = R.quantize_act(x.cpu(), 4, hadamard_signs=signs.cpu())
    diff = (F.unpack_a4(q.cpu()).int() - F.unpack_a4(q_ref).int()).abs()
    assert torch.allclose(s.cpu(), s_ref, rtol=1e-5, atol=0) and int(diff.max()) <= 1


@pytest.mark.gpu
@pytest.mark.parametrize("k", [4096, 3584])
def test_hadamard_unaligned_input_takes_the_fallback_kernel(k):
    x = _inputs(5, k, torch.float16, seed=k)
    storage = torch.empty(x.numel() + 1, dtype=x.dtype, device="cuda")
    unaligned = storage[1:].view(5, k)  # contiguous, 2 bytes off a 16-byte boundary
    unaligned.copy_(x)
    signs = random_signs(k, seed=5)
    for bits in (8, 4):
        q, s = ops.quantize_act(unaligned, bits, hadamard_signs=signs.cuda())
        q_ref, s_ref = R.quantize_act(x, bits, hadamard_signs=signs)
        unpack = F.unpack_a4 if bits == 4 else (lambda t: t)
        diff = (unpack(q.cpu()).int() - unpack(q_ref).int()).abs()
        assert torch.allclose(s.cpu(), s_ref, rtol=1e-5, atol=0) and int(diff.max()) <= 1
        assert float((diff > 0).float().mean()) < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("k", [4096, 1152, 512])
def test_hadamard_many_tokens_per_launch(k, monkeypatch):
    """Hundreds of tokens: many CTAs, several tokens per CTA and a partly filled last CTA; the
    persistent kernel (forced) is bit-exact for m = 1, the default (mix-first) kernel within
    rounding."""
    from modaq.ops import fast_activation
    x = _inputs(301, k, torch.bfloat16, seed=k)
    kw = {"hadamard_signs": random_signs(k, seed=2)}
    _compare(x, 4, kw, exact=False, max_flip=1e-4)
    monkeypatch.setattr(fast_activation, "FORCE_HADAMARD", "persistent")
    _compare(x, 4, kw, exact=k != 1152, max_flip=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("clip", [1.0, 0.65])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n1,n2", [(28, 16), (148, 128), (269, 16), (16, 269), (7, 9), (1, 64), (64, 64), (3, 1)])
def test_kron_factorizations(bits, dtype, n1, n2, clip):
    k = n1 * n2
    if bits == 4 and k % 2:
        pytest.skip("4-bit needs even K")
    x = _inputs(11, k, dtype, seed=n1 * 7 + n2)
    g = torch.Generator().manual_seed(n1 + n2)
    kw = {"kron_left": torch.randn(n1, n1, generator=g), "kron_right": torch.randn(n2, n2, generator=g)}
    _compare(x, bits, kw, exact=False, clip=clip)
    kw["smooth"] = torch.rand(k, generator=g) + 0.5
    _compare(x, bits, kw, exact=False, clip=clip)


@pytest.mark.gpu
@pytest.mark.parametrize("m,n1,n2", [(3001, 64, 64), (302, 36, 32), (40, 148, 128), (77, 269, 16)])
def test_kron_many_tokens_per_launch(m, n1, n2):
    """More token groups than resident CTAs (the persistent loop), a partly filled last group,
    and an input 2 bytes off a 16-byte boundary (the scalar load path)."""
    k = n1 * n2
    x = _inputs(m, k, torch.bfloat16, seed=k)
    g = torch.Generator().manual_seed(k)
    kw = {"kron_left": torch.randn(n1, n1, generator=g), "kron_right": torch.randn(n2, n2, generator=g),
          "smooth": torch.rand(k, generator=g) + 0.5}
    _compare(x, 4, kw, exact=False, max_flip=1e-4)
    _compare(x, 8, kw, exact=False, max_flip=1e-4, clip=0.9)
    storage = torch.empty(x.numel() + 1, dtype=x.dtype, device="cuda")
    unaligned = storage[1:].view(m, k)
    unaligned.copy_(x)
    q, s = ops.quantize_act(unaligned, 8, **{a: t.cuda() for a, t in kw.items()})
    q_ref, s_ref = R.quantize_act(x, 8, **kw)
    assert torch.allclose(s.cpu(), s_ref, rtol=1e-5, atol=0)
    diff = (q.cpu().int() - q_ref.int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("clip", [1.0, 0.5])
@pytest.mark.parametrize("transform", [None, "hadamard", "kron"])
def test_nan_and_zero_rows(transform, clip):
    k = 28 * 128
    x = _inputs(6, k, torch.float16)
    x[2, 77] = float("nan")
    kw = {}
    if transform == "hadamard":
        kw["hadamard_signs"] = random_signs(k, seed=3).cuda()
    elif transform == "kron":
        kw["kron_left"], kw["kron_right"] = torch.randn(28, 28).cuda(), torch.randn(128, 128).cuda()
    q, s = ops.quantize_act(x.cuda(), 8, clip_ratio=clip, **kw)
    assert bool(torch.isnan(s[2])) and bool(torch.isfinite(s[[0, 1, 3, 4, 5]]).all())
    assert float(s[1]) == 0.0 and int(q[1].abs().max()) == 0


@pytest.mark.gpu
def test_kron_fragments_follow_in_place_updates():
    k1, k2 = 12, 32
    left, right = torch.randn(k1, k1).cuda(), torch.randn(k2, k2).cuda()
    x = torch.randn(4, k1 * k2, dtype=torch.float16).cuda()
    _, s1 = ops.quantize_act(x, 8, kron_left=left, kron_right=right)
    right.mul_(2.0)  # new version: cached fragments must be rebuilt
    _, s2 = ops.quantize_act(x, 8, kron_left=left, kron_right=right)
    assert torch.allclose(s2, 2 * s1, rtol=1e-5)
