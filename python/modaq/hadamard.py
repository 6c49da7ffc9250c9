"""Hadamard matrices for rotation-based quantization (QuaRot / SpinQuant / FlatQuant style).

A Hadamard matrix H of order n has entries +-1 and H @ H.T == n * I, so H / sqrt(n) is
orthogonal.  We build H_n for every n = m * 2^k with m in ``SUPPORTED_M`` as

    H_n = kron(H_m, S_{2^k}),   S_1 = [[1]],  S_{2j} = [[S_j, S_j], [S_j, -S_j]]  (Sylvester)

with the power-of-two factor as the inner (right) factor.  Writing a row vector x of length n
as X = x.reshape(m, 2^k) (row-major), x @ H_n == (H_m.T @ X @ S_{2^k}).reshape(n): a kernel
runs the fast Walsh-Hadamard transform over the contiguous inner 2^k elements and a small
m x m matmul over the outer dim.  (S is symmetric; H_m in general is not, hence the .T.)

Constructions of the core H_m (q a prime power, chi the quadratic character of GF(q):
chi(0) = 0, chi(x) = 1 for nonzero squares, -1 otherwise; Q[a, b] = chi(a - b), the
Jacobsthal matrix, with Q @ Q.T = q I - J and Q @ 1 = 0):

* Paley I, q = 3 (mod 4), order q + 1: Q is skew, S = [[0, 1^T], [-1, Q]] has S.T = -S and
  S @ S.T = q I, so H = I + S.  Used for 12 (q=11), 20 (19), 28 (27 = 3^3), 60 (59),
  108 (107), 140 (139).
* Paley II, q = 1 (mod 4), order 2(q + 1): Q is symmetric, C = [[0, 1^T], [1, Q]] is a
  symmetric conference matrix (C @ C.T = q I) and H = kron(C, [[1, 1], [1, -1]]) +
  kron(I, [[1, -1], [-1, -1]]).  Used for 36 (q=17), 52 (25 = 5^2), 148 (73).
* Sylvester doubling [[H, H], [H, -H]]: 40 = 2 x 20.
* Williamson, order 4w: symmetric circulant +-1 matrices A, B, C, D with
  A^2 + B^2 + C^2 + D^2 = 4w I (circulants commute) give
  H = [[A, B, C, D], [-B, A, -D, C], [-C, D, A, -B], [-D, -C, B, A]].
  Used for 156 (w=39) and 172 (w=43), neither of which has a Paley route.

GF(p^e) is implemented directly (elements as base-p digit vectors, multiplication modulo a
monic irreducible polynomial found by search), so prime-power q such as 25 and 27 work.
"""
from __future__ import annotations

import functools
import math
import operator

import torch

SUPPORTED_M = (1, 12, 20, 28, 36, 40, 52, 60, 108, 140, 148, 156, 172)

# First rows of symmetric circulant Williamson matrices A, B, C, D ('+' = +1, '-' = -1).
# Read off the first row of the had.156.will / had.172.will matrices of N. J. A. Sloane's
# Hadamard library (which are in Williamson-array form); the tests check H @ H.T == n I.
_WILLIAMSON = {
    39: ("+++--+-+-----+--++----++--+-----+-+--++",
         "++++---+--++----+-+--+-+----++--+---+++",
         "+++--++-+---+-+--+----+--+-+---+-++--++",
         "+---++-+-+-----+++-++-+++-----+-+-++---"),
    43: ("+---++--++++-+-+++-++--++-+++-+-++++--++---",
         "++-++++++----+-+--++-++-++--+-+----++++++-+",
         "+++-+-++--+-+-++++-+----+-++++-+-+--++-+-++",
         "++---++++-+--+--++--------++--+--+-++++---+"),
}


def _as_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected an integer, got {type(value).__name__}") from None


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


# ----------------------------------------------------------------------------------------
# Finite fields GF(p^e); elements are ints 0..q-1 whose base-p digits are the coefficients.

def _prime_power(q: int) -> tuple[int, int] | None:
    """(p, e) with q == p**e and p prime, or None."""
    if q < 2:
        return None
    p = next(d for d in range(2, q + 1) if q % d == 0)  # smallest factor is prime
    e = 0
    while q % p == 0:
        q //= p
        e += 1
    return (p, e) if q == 1 else None


def _digits(x: int, p: int, e: int) -> list[int]:
    return [(x // p ** i) % p for i in range(e)]


def _poly_mulmod(a: list[int], b: list[int], f: list[int], p: int) -> list[int]:
    """a * b mod (monic f of degree e, given as its e low coefficients) over GF(p)."""
    e = len(f)
    prod = [0] * (2 * e - 1)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            prod[i + j] = (prod[i + j] + ai * bj) % p
    for d in range(len(prod) - 1, e - 1, -1):  # x^e == -f(x) + x^e
        c = prod[d]
        if c:
            for i in range(e):
                prod[d - e + i] = (prod[d - e + i] - c * f[i]) % p
    return prod[:e]


def _squares(p: int, e: int) -> set[int]:
    """Nonzero squares of GF(p^e), found with the first irreducible modulus that works."""
    q = p ** e
    elems = [_digits(x, p, e) for x in range(q)]

    def encode(d):
        return sum(c * p ** i for i, c in enumerate(d))

    for code in range(p ** e):  # candidate monic moduli x^e + f(x)
        f = _digits(code, p, e)
        mul = {(a, b): encode(_poly_mulmod(elems[a], elems[b], f, p))
               for a in range(1, q) for b in range(a, q)}
        if all(v != 0 for v in mul.values()):  # no zero divisors <=> f irreducible
            return {mul[(a, a)] for a in range(1, q)}
    raise AssertionError(f"no irreducible polynomial of degree {e} over GF({p})")


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[a, b] = chi(a - b) over GF(q), as an int8 [q, q] tensor."""
    p, e = _prime_power(q)
    squares = _squares(p, e)
    digits = torch.tensor([_digits(x, p, e) for x in range(q)])
    weights = torch.tensor([p ** i for i in range(e)])
    diff = ((digits[:, None, :] - digits[None, :, :]) % p * weights).sum(-1)  # codes of a - b
    chi = torch.full((q,), -1, dtype=torch.int8)
    chi[0] = 0
    chi[list(squares)] = 1
    return chi[diff]


# ----------------------------------------------------------------------------------------
# Core constructions (int8 tensors).

def _paley1(q: int) -> torch.Tensor:
    Q = _jacobsthal(q)
    S = torch.zeros(q + 1, q + 1, dtype=torch.int8)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = Q
    return S + torch.eye(q + 1, dtype=torch.int8)


def _paley2(q: int) -> torch.Tensor:
    C = torch.zeros(q + 1, q + 1, dtype=torch.int8)
    C[0, 1:] = 1
    C[1:, 0] = 1
    C[1:, 1:] = _jacobsthal(q)
    plus = torch.tensor([[1, 1], [1, -1]], dtype=torch.int8)
    minus = torch.tensor([[1, -1], [-1, -1]], dtype=torch.int8)
    return torch.kron(C, plus) + torch.kron(torch.eye(q + 1, dtype=torch.int8), minus)


def _circulant(row: str) -> torch.Tensor:
    r = torch.tensor([1 if c == "+" else -1 for c in row], dtype=torch.int8)
    n = r.numel()
    idx = (torch.arange(n)[None, :] - torch.arange(n)[:, None]) % n
    return r[idx]


def _williamson(w: int) -> torch.Tensor:
    A, B, C, D = (_circulant(r) for r in _WILLIAMSON[w])
    return torch.cat([
        torch.cat([A, B, C, D], 1),
        torch.cat([-B, A, -D, C], 1),
        torch.cat([-C, D, A, -B], 1),
        torch.cat([-D, -C, B, A], 1),
    ], 0)


def _sylvester(n: int) -> torch.Tensor:
    H = torch.ones(1, 1, dtype=torch.int8)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


@functools.lru_cache(maxsize=None)
def _core(m: int) -> torch.Tensor:
    """H_m for m in SUPPORTED_M (int8, CPU); tries the constructions in the docstring."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.int8)
    if m // 4 in _WILLIAMSON and m % 4 == 0:
        return _williamson(m // 4)
    pe = _prime_power(m - 1)
    if pe is not None and (m - 1) % 4 == 3:
        return _paley1(m - 1)
    if m % 2 == 0:
        q = m // 2 - 1
        if _prime_power(q) is not None and q % 4 == 1:
            return _paley2(q)
        if m // 2 in SUPPORTED_M:
            return torch.kron(_sylvester(2), _core(m // 2))
    raise AssertionError(f"no construction for Hadamard core of order {m}")


# ----------------------------------------------------------------------------------------
# Public API.

def hadamard_factors(n: int) -> tuple[int, int]:
    """(m, 2^k) with n == m * 2^k and m the smallest supported core (m = 1 when n is a power
    of two).  Raises ValueError naming ``n`` when n has no such form."""
    n = _as_int("n", n)
    if n >= 1:
        for m in SUPPORTED_M:
            if n % m == 0 and _is_pow2(n // m):
                return m, n // m
    raise ValueError(f"n: no Hadamard matrix of order {n}; supported orders are m * 2^k with "
                     f"m in {SUPPORTED_M} and k >= 0")


def is_hadamard_size(n) -> bool:
    """True when hadamard_matrix(n) is supported."""
    try:
        hadamard_factors(n)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=4)  # n = 18944 is 359 MB in int8; keep only a few around
def _hadamard_int8(n: int) -> torch.Tensor:
    m, p2 = hadamard_factors(n)
    core = _core(m)
    return core.clone() if p2 == 1 else torch.kron(core, _sylvester(p2))


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Unnormalized Hadamard matrix [n, n] (entries +-1, H @ H.T == n I) for n = m * 2^k,
    m in SUPPORTED_M.  H = kron(H_m, S_{2^k}) with the Sylvester factor inner, so for a row
    vector x: x @ H == (H_m.T @ x.reshape(m, 2^k) @ S_{2^k}).reshape(n), where
    (m, 2^k) = hadamard_factors(n).  Divide by sqrt(n) for the orthogonal rotation.
    Always returns a fresh tensor (the cached int8 copy is never handed out)."""
    H = _hadamard_int8(_as_int("n", n))
    return H.to(device=device, dtype=dtype, copy=True)


def random_signs(n: int, seed: int, device=None) -> torch.Tensor:
    """float32 [n] of +-1 drawn from a CPU torch.Generator seeded with ``seed`` (the same
    signs on every device).  diag(signs) @ H / sqrt(n) is a randomized Hadamard rotation."""
    n = _as_int("n", n)
    seed = _as_int("seed", seed)
    if n < 0:
        raise ValueError(f"n: expected a non-negative length, got {n}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    bits = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int64)
    return (bits * 2 - 1).to(device=device, dtype=torch.float32)


def kron_factors(n: int, multiple_of: int = 1) -> tuple[int, int]:
    """Split n = n1 * n2 for a Kronecker-factored transform (FlatQuant: x @ kron(P1, P2)).

    Default (multiple_of=1): n1 is the largest divisor of n with n1 <= sqrt(n), so
    n1 <= n2 and the pair is as balanced as possible; a prime n gives (1, n).

    multiple_of > 1 (a kernel may want the inner factor n2 to be a multiple of 16): n2 is
    chosen among the divisors of n that are multiples of ``multiple_of`` so as to minimize
    max(n1, n2) (the most balanced such pair; ties go to n2 >= n1).  n1 may then exceed n2,
    e.g. 4304 = 269 * 16 -> (269, 16).  When no divisor is a multiple of it, the default
    split is returned.
    """
    n = _as_int("n", n)
    multiple_of = _as_int("multiple_of", multiple_of)
    if n < 1:
        raise ValueError(f"n: expected a positive integer, got {n}")
    if multiple_of < 1:
        raise ValueError(f"multiple_of: expected a positive integer, got {multiple_of}")
    n1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    if multiple_of == 1:
        return n1, n // n1
    cands = [d for d in range(multiple_of, n + 1, multiple_of) if n % d == 0]
    if not cands:
        return n1, n // n1
    n2 = min(cands, key=lambda d: (max(d, n // d), d < n // d))
    return n // n2, n2
