"""Online input transforms of quantized Linears: a randomized Hadamard or a Kronecker matrix.

A transform P acts on the input row vector: x' = x @ P.  The Linear keeps y = x W^T by storing
W' = W P^{-T} (so x' W'^T = x P P^{-1} W^T); for the orthogonal Hadamard P^{-T} = P.

  hadamard:  P = diag(signs) H_K / sqrt(K)          (modaq.hadamard, K = 2^k * m)
  kron:      P = P1 (x) P2, x' = P1^T X_r P2         (K = n1 * n2, FlatQuant)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import hadamard
from ..ops import reference


@dataclass(frozen=True)
class Rotation:
    """An online transform: kind 'hadamard' (signs [K]) or 'kron' (left [n1, n1], right [n2, n2])."""

    kind: str
    signs: torch.Tensor | None = None
    left: torch.Tensor | None = None
    right: torch.Tensor | None = None

    def __post_init__(self):
        if self.kind == "hadamard":
            if self.signs is None or self.signs.dim() != 1:
                raise ValueError("signs: a Hadamard rotation needs a 1-D tensor of +-1 signs")
        elif self.kind == "kron":
            for name, t in (("left", self.left), ("right", self.right)):
                if t is None or t.dim() != 2 or t.shape[0] != t.shape[1]:
                    raise ValueError(f"{name}: a Kronecker rotation needs a square 2-D matrix")
        else:
            raise ValueError(f"kind: expected 'hadamard' or 'kron', got {self.kind!r}")

    @property
    def size(self) -> int:
        return self.signs.numel() if self.kind == "hadamard" else self.left.shape[0] * self.right.shape[0]

    def buffers(self) -> dict[str, torch.Tensor]:
        """The float32 module buffers that carry this transform."""
        if self.kind == "hadamard":
            return {"hadamard_signs": self.signs.float().contiguous()}
        return {"kron_left": self.left.float().contiguous(), "kron_right": self.right.float().contiguous()}

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x @ P in fp32 (reference math; modules use the fused ops)."""
        if self.kind == "hadamard":
            return reference.hadamard_rows(x, self.signs)
        return reference.kron_rows(x, self.left, self.right)

    def fold_into_weight(self, w: torch.Tensor) -> torch.Tensor:
        """W P^{-T} for W [N, K], in fp64 (the weight the Linear stores, before quantization)."""
        if self.kind == "hadamard":  # orthogonal: P^{-T} = P
            return reference.hadamard_rows(w.double(), self.signs)
        # (P1 (x) P2)^{-T} = P1^{-T} (x) P2^{-T}
        left_inv_t = torch.linalg.inv(self.left.double()).t()
        right_inv_t = torch.linalg.inv(self.right.double()).t()
        return reference.kron_rows(w.double(), left_inv_t, right_inv_t)

    @classmethod
    def random_hadamard(cls, size: int, seed: int = 0) -> "Rotation":
        """Randomized Hadamard of `size` (= 2^k * m) with +-1 signs drawn from `seed`."""
        hadamard.hadamard_factors(size)  # raises naming the size if unsupported
        return cls("hadamard", signs=hadamard.random_signs(size, seed))

    @classmethod
    def kron(cls, left: torch.Tensor, right: torch.Tensor) -> "Rotation":
        return cls("kron", left=left, right=right)

    @classmethod
    def from_buffers(cls, signs=None, left=None, right=None) -> "Rotation | None":
        if signs is not None:
            return cls("hadamard", signs=signs)
        if left is not None:
            return cls("kron", left=left, right=right)
        return None

