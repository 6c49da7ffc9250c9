"""Drop-in quantized replacements for nn.Linear.

    W3A16Linear, W4A16Linear   weight-only, group-asymmetric; x stays fp16 / bf16
    W4A8Linear, W4A4Linear, W8A8Linear   per-token dynamic activation quantization fused with
                                         optional smoothing and online rotation, integer GEMM

Every module computes y ~= x W^T + b for the FP Linear it came from: with a smoothing vector
s and an online transform P it stores Q(W diag(s) P^{-T}) and feeds Q((x / s) P) to the GEMM.
The activation quantizers take an optional clip ratio (`act_clip_ratio` in (0, 1], default 1:
each token's range is act_clip_ratio * absmax, learned by FlatQuant's LAC); it is a Python
float, kept in quant_config() rather than in the state dict.
Buffers hold the packed weights (formats.packed_shapes), so state_dict() round-trips and
`quant_config()` + `from_config()` rebuild an empty module to load it into.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .. import formats, ops
from .rotation import Rotation


class QuantLinear(nn.Module):
    """Shared state of the quantized Linears: shapes, bias, smoothing vector, online rotation."""

    format_name: ClassVar[str]

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 group_size: int | None = None, smooth: bool = False, rotation: str | None = None,
                 kron_shape: tuple[int, int] | None = None, dtype: torch.dtype = torch.float16,
                 device=None, act_clip_ratio: float = 1.0):
        super().__init__()
        self.fmt = formats.get_format(self.format_name)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.group_size = group_size or self.fmt.default_group_size
        self._check_shapes()
        self.act_clip_ratio = formats.check_clip_ratio(act_clip_ratio, "act_clip_ratio")
        if self.fmt.weight_only and self.act_clip_ratio != 1.0:
            raise ValueError(f"act_clip_ratio: {self.format_name} does not quantize activations; expected 1.0, "
                             f"got {act_clip_ratio!r}")
        for name, (shape, dt) in formats.packed_shapes(self.fmt, out_features, in_features, self.group_size).items():
            self.register_buffer(name, torch.zeros(shape, dtype=dt, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        k = self.in_features
        self.register_buffer("smooth", torch.ones(k, device=device) if smooth else None)
        self.rotation_kind = rotation
        self.register_buffer("hadamard_signs", torch.ones(k, device=device) if rotation == "hadamard" else None)
        if rotation == "kron":
            if kron_shape is None or kron_shape[0] * kron_shape[1] != k:
                raise ValueError(f"kron_shape: expected (n1, n2) with n1 * n2 = in_features = {k}, got {kron_shape}")
            self.register_buffer("kron_left", torch.eye(kron_shape[0], device=device))
            self.register_buffer("kron_right", torch.eye(kron_shape[1], device=device))
        elif rotation not in (None, "hadamard"):
            raise ValueError(f"rotation: expected None, 'hadamard' or 'kron', got {rotation!r}")
        else:
            self.register_buffer("kron_left", None)
            self.register_buffer("kron_right", None)

    def _check_shapes(self):
        k = self.in_features
        if self.fmt.weight_only:
            if self.group_size not in ops.weight_only.GROUP_SIZES:
                raise ValueError(f"group_size: expected one of {ops.weight_only.GROUP_SIZES}, got {self.group_size}")
            if k % self.group_size:
                raise ValueError(f"in_features: {k} must be divisible by group_size = {self.group_size}")
        elif self.group_size is not None:
            raise ValueError(f"group_size: {self.format_name} uses per-channel weight scales; got {self.group_size}")
        if self.fmt.weight_bits in (3,) and k % 8:
            raise ValueError(f"in_features: {k} must be a multiple of 8 for 3-bit packing")
        if 4 in (self.fmt.weight_bits, self.fmt.act_bits) and k % 2:
            raise ValueError(f"in_features: {k} must be even for 4-bit packing")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, group_size: int | None = None,
                    smooth: torch.Tensor | None = None, rotation: Rotation | None = None,
                    act_clip_ratio: float = 1.0) -> "QuantLinear":
        """Round-to-nearest quantization of `linear` (optionally smoothed by `smooth` [K] and
        rotated by `rotation`; activations clipped to act_clip_ratio * absmax per token); the
        result computes ~ linear(x)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected torch.nn.Linear, got {type(linear).__name__}")
        w = prepare_weight(linear.weight, smooth, rotation)
        fmt = formats.get_format(cls.format_name)
        g = group_size or fmt.default_group_size
        if fmt.weight_symmetric:
            qw = formats.quantize_weight_sym(w, fmt.weight_bits)
        else:
            if w.shape[1] % (g or 1):
                raise ValueError(f"linear: in_features = {w.shape[1]} must be divisible by group_size = {g}")
            qw = formats.quantize_weight_asym(w, fmt.weight_bits, g)
        return cls.from_quantized(qw, linear.bias, group_size=group_size, smooth=smooth,
                                  rotation=rotation, dtype=_float_dtype(linear.weight),
                                  act_clip_ratio=act_clip_ratio)

    @classmethod
    def from_quantized(cls, weight: formats.AsymWeight | formats.SymWeight, bias: torch.Tensor | None = None, *,
                       group_size: int | None = None, smooth: torch.Tensor | None = None,
                       rotation: Rotation | None = None, dtype: torch.dtype = torch.float16,
                       act_clip_ratio: float = 1.0) -> "QuantLinear":
        """Wrap logical quantized weights (already in the smoothed / rotated basis), e.g. from GPTQ."""
        n, k = weight.q.shape
        mod = cls(k, n, bias is not None, group_size=group_size, smooth=smooth is not None,
                  rotation=rotation.kind if rotation else None,
                  kron_shape=(rotation.left.shape[0], rotation.right.shape[0]) if rotation and rotation.kind == "kron" else None,
                  dtype=dtype, device=weight.q.device, act_clip_ratio=act_clip_ratio)
        mod._load_weight(weight)
        if bias is not None:
            mod.bias.copy_(bias.detach())
        if smooth is not None:
            mod.smooth.copy_(smooth.detach().float())
        if rotation is not None:
            for name, t in rotation.buffers().items():
                getattr(mod, name).copy_(t)
        return mod

    def _load_weight(self, weight):
        raise NotImplementedError

    def rotation(self) -> Rotation | None:
        return Rotation.from_buffers(self.hadamard_signs, self.kron_left, self.kron_right)

    # ------------------------------------------------------------------ config / repr

    def quant_config(self) -> dict:
        """JSON-able constructor arguments (what load_quantized needs to rebuild the module)."""
        cfg = {"format": self.format_name, "in_features": self.in_features, "out_features": self.out_features,
               "bias": self.bias is not None, "group_size": self.group_size, "smooth": self.smooth is not None,
               "rotation": self.rotation_kind}
        if self.rotation_kind == "kron":
            cfg["kron_shape"] = [self.kron_left.shape[0], self.kron_right.shape[0]]
        if not self.fmt.weight_only:
            cfg["act_clip_ratio"] = self.act_clip_ratio
        return cfg

    def extra_repr(self) -> str:
        parts = [f"in_features={self.in_features}", f"out_features={self.out_features}",
                 f"bias={self.bias is not None}", f"format={self.format_name}"]
        if self.group_size:
            parts.append(f"group_size={self.group_size}")
        if self.smooth is not None:
            parts.append("smooth=True")
        if self.rotation_kind:
            parts.append(f"rotation={self.rotation_kind}")
        if self.act_clip_ratio != 1.0:
            parts.append(f"act_clip_ratio={self.act_clip_ratio:.6g}")
        return ", ".join(parts)


def prepare_weight(weight: torch.Tensor, smooth: torch.Tensor | None, rotation: Rotation | None) -> torch.Tensor:
    """W diag(s) P^{-T} in fp32: the weight a smoothed / rotated module quantizes."""
    w = weight.detach().double()
    if smooth is not None:
        if smooth.shape != (w.shape[1],):
            raise ValueError(f"smooth: expected shape ({w.shape[1]},), got {tuple(smooth.shape)}")
        w = w * smooth.double()
    if rotation is not None:
        if rotation.size != w.shape[1]:
            raise ValueError(f"rotation: size {rotation.size} does not match in_features {w.shape[1]}")
        w = rotation.fold_into_weight(w)
    return w.float()


def _float_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32


class _WeightOnlyLinear(QuantLinear):
    def _load_weight(self, weight: formats.AsymWeight):
        packed = self._pack(*weight)
        self.qweight.copy_(packed.qweight)
        self.scales.copy_(packed.scales)
        self.zeros.copy_(packed.zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x / self.smooth.to(x.dtype)
        if self.hadamard_signs is not None:
            x = ops.hadamard_transform(x, self.hadamard_signs)
        elif self.kron_left is not None:
            x = ops.kron_transform(x, self.kron_left, self.kron_right)
        return self._gemm(x, self.qweight, self.scales, self.zeros, self.out_features, self.group_size, self.bias)


class W3A16Linear(_WeightOnlyLinear):
    """3-bit weights in groups along K (scale + zero per group), fp16 / bf16 activations."""

    format_name = "w3a16"
    _pack = staticmethod(formats.pack_w3)
    _gemm = staticmethod(ops.w3a16_gemm)


class W4A16Linear(_WeightOnlyLinear):
    """4-bit weights in groups along K (scale + zero per group), fp16 / bf16 activations."""

    format_name = "w4a16"
    _pack = staticmethod(formats.pack_w4)
    _gemm = staticmethod(ops.w4a16_gemm)


class _ActQuantLinear(QuantLinear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("w_scale", torch.ones(self.out_features, device=self.qweight.device))

    def _load_weight(self, weight: formats.SymWeight):
        self.qweight.copy_(self._pack(weight.q))
        self.w_scale.copy_(weight.scale.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.int_linear(x, self.qweight, self.w_scale, self.bias, a_bits=self.fmt.act_bits,
                              w_bits=self.fmt.weight_bits, smooth=self.smooth, hadamard_signs=self.hadamard_signs,
                              kron_left=self.kron_left, kron_right=self.kron_right, clip_ratio=self.act_clip_ratio)


class W4A8Linear(_ActQuantLinear):
    """int4 per-channel weights x int8 per-token activations."""

    format_name = "w4a8"
    _pack = staticmethod(formats.pack_w4_sym)


class W4A4Linear(_ActQuantLinear):
    """int4 per-channel weights x int4 per-token activations (use with an online rotation)."""

    format_name = "w4a4"
    _pack = staticmethod(formats.pack_w4_sym)


class W8A8Linear(_ActQuantLinear):
    """int8 per-channel weights x int8 per-token activations."""

    format_name = "w8a8"
    _pack = staticmethod(formats.pack_w8)


QUANT_LINEARS: dict[str, type[QuantLinear]] = {
    c.format_name: c for c in (W3A16Linear, W4A16Linear, W4A8Linear, W4A4Linear, W8A8Linear)}


def from_config(cfg: dict, dtype: torch.dtype = torch.float16, device=None) -> QuantLinear:
    """Empty module from QuantLinear.quant_config(), ready for load_state_dict.

    A config without "act_clip_ratio" (saved before activation clipping existed) gives 1.0."""
    cls = QUANT_LINEARS[formats.get_format(cfg["format"]).name]
    return cls(cfg["in_features"], cfg["out_features"], cfg["bias"], group_size=cfg.get("group_size"),
               smooth=cfg.get("smooth", False), rotation=cfg.get("rotation"),
               kron_shape=tuple(cfg["kron_shape"]) if cfg.get("kron_shape") else None, dtype=dtype, device=device,
               act_clip_ratio=cfg.get("act_clip_ratio", 1.0))
