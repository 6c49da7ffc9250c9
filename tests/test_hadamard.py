"""Tests for modaq.hadamard: exact H @ H.T == n I for every supported core, Kronecker layout,
size/factor helpers, random signs and the Kronecker-transform factorization."""
import pytest
import torch

from modaq import hadamard as had


def _assert_hadamard(H: torch.Tensor, n: int) -> None:
    assert H.shape == (n, n)
    assert bool(((H == 1) | (H == -1)).all())
    H = H.to(torch.float64)
    assert torch.equal(H @ H.T, n * torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("m", had.SUPPORTED_M)
def test_every_core_times_power_of_two(m, k):
    n = m << k
    H = had.hadamard_matrix(n)
    assert H.dtype == torch.float64
    _assert_hadamard(H, n)


@pytest.mark.parametrize("n", [1152, 1280, 3584])
def test_larger_sizes_exact(n):
    _assert_hadamard(had.hadamard_matrix(n), n)


def _rows_orthogonal(H: torch.Tensor, rows: torch.Tensor) -> bool:
    # float32 sums of +-1 are exact below 2^24; chunk the columns to bound memory.
    n = H.shape[0]
    top = H[rows].to(torch.float32)
    for start in range(0, n, 2048):
        got = top @ H[start:start + 2048].to(torch.float32).T
        want = torch.zeros_like(got)
        sel = (rows >= start) & (rows < start + 2048)
        want[sel.nonzero().squeeze(1), rows[sel] - start] = n
        if not torch.equal(got, want):
            return False
    return True


@pytest.mark.parametrize("n,m", [(14336, 28), (18944, 148)])
def test_model_sized(n, m):
    # Full n^3 products are too slow here; check the Kronecker structure (a Kronecker
    # product of Hadamard matrices is Hadamard) plus a sample of rows directly.
    H = had.hadamard_matrix(n, dtype=torch.int8)
    assert H.shape == (n, n) and H.dtype == torch.int8
    assert bool(((H == 1) | (H == -1)).all())
    p2 = n // m
    core, syl = had.hadamard_matrix(m, dtype=torch.int8), had.hadamard_matrix(p2, dtype=torch.int8)
    _assert_hadamard(core, m)
    _assert_hadamard(syl, p2)
    assert torch.equal(H, torch.kron(core, syl))
    gen = torch.Generator().manual_seed(0)
    rows = torch.cat([torch.tensor([0, 1, p2, n - 1]), torch.randint(0, n, (12,), generator=gen)])
    assert _rows_orthogonal(H, rows.unique())


@pytest.mark.parametrize("n", [3584, 624, 1376, 4096, 12])
def test_kernel_layout(n):
    # x @ H_n == (H_m.T @ X @ S_{2^k}).reshape(n) with X = x.reshape(m, 2^k).
    m, p2 = had.hadamard_factors(n)
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    ref = x @ had.hadamard_matrix(n)
    X = x.reshape(m, p2)
    got = (had.hadamard_matrix(m).T @ X @ had.hadamard_matrix(p2)).reshape(n)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-9)


def test_factors():
    assert had.hadamard_factors(1) == (1, 1)
    assert had.hadamard_factors(4096) == (1, 4096)
    assert had.hadamard_factors(12) == (12, 1)
    assert had.hadamard_factors(40) == (20, 2)  # smallest core wins
    assert had.hadamard_factors(3584) == (28, 128)
    assert had.hadamard_factors(18944) == (148, 128)
    assert had.hadamard_factors(1152) == (36, 32)
    assert had.is_hadamard_size(14336) and had.is_hadamard_size(1)
    assert not had.is_hadamard_size(4304) and not had.is_hadamard_size(0)
    assert not had.is_hadamard_size(3.0)


@pytest.mark.parametrize("n", [4304, 6, 3420, 0, -8, 88])
def test_unsupported_sizes_raise(n):
    for fn in (had.hadamard_factors, had.hadamard_matrix):
        with pytest.raises(ValueError, match=rf"^n: .*{n}") as info:
            fn(n)
        assert "172" in str(info.value)  # lists the supported cores


def test_non_integer_n_raises():
    for bad in (12.0, "12", True):
        with pytest.raises(ValueError, match="^n: "):
            had.hadamard_matrix(bad)


def test_dtype_device_and_fresh_copy():
    H = had.hadamard_matrix(20, dtype=torch.float32, device="cpu")
    assert H.dtype == torch.float32 and H.device.type == "cpu"
    H8 = had.hadamard_matrix(20, dtype=torch.int8)
    H8.zero_()  # must not corrupt the cache
    _assert_hadamard(had.hadamard_matrix(20, dtype=torch.int8), 20)


def test_random_signs():
    a = had.random_signs(1000, seed=7)
    assert a.dtype == torch.float32 and a.shape == (1000,)
    assert bool(((a == 1) | (a == -1)).all())
    assert torch.equal(a, had.random_signs(1000, seed=7))
    assert not torch.equal(a, had.random_signs(1000, seed=8))
    assert 400 < int((a > 0).sum()) < 600
    # randomized Hadamard rotation is orthogonal
    R = torch.diag(a[:52].double()) @ had.hadamard_matrix(52) / 52 ** 0.5
    torch.testing.assert_close(R @ R.T, torch.eye(52, dtype=torch.float64))
    with pytest.raises(ValueError, match="^n: "):
        had.random_signs(-1, seed=0)
    with pytest.raises(ValueError, match="^seed: "):
        had.random_signs(4, seed=1.5)


def test_kron_factors_pinned():
    assert had.kron_factors(4096) == (64, 64)
    assert had.kron_factors(18944) == (128, 148)
    assert had.kron_factors(4304) == (16, 269)
    assert had.kron_factors(3584) == (56, 64)
    assert had.kron_factors(1152) == (32, 36)
    assert had.kron_factors(97) == (1, 97)
    assert had.kron_factors(1) == (1, 1)
    # n2 restricted to multiples of 16 (most balanced such pair; n1 may exceed n2)
    assert had.kron_factors(4096, multiple_of=16) == (64, 64)
    assert had.kron_factors(18944, multiple_of=16) == (148, 128)
    assert had.kron_factors(4304, multiple_of=16) == (269, 16)
    assert had.kron_factors(3584, multiple_of=16) == (56, 64)
    assert had.kron_factors(1152, multiple_of=16) == (36, 32)
    assert had.kron_factors(2048, multiple_of=16) == (32, 64)  # tie -> n2 >= n1
    assert had.kron_factors(100, multiple_of=16) == (10, 10)  # no multiple: fall back


def test_kron_factors_invariants():
    for n in range(1, 600):
        n1, n2 = had.kron_factors(n)
        assert n1 * n2 == n and n1 <= n2
        assert not any(n % d == 0 for d in range(n1 + 1, n2))  # n1 is the closest to sqrt
        for mult in (2, 16):
            a, b = had.kron_factors(n, multiple_of=mult)
            assert a * b == n
            if n % mult == 0:
                assert b % mult == 0
    with pytest.raises(ValueError, match="^n: "):
        had.kron_factors(0)
    with pytest.raises(ValueError, match="^multiple_of: "):
        had.kron_factors(64, multiple_of=0)
