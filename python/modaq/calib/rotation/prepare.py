"""Computation-invariant preparation of a VLM's residual streams (QuaRot / SliceGPT style).

For each stream the adapter describes (adapters/streams.py), in this order:

  1. fold layer scales       InternViT's y = lambda * (W h + b): W <- diag(lambda) W, b <- lambda b
  2. fold norm affines       norm(x) = n(x) * g + b read by W, c:  W <- W diag(g), c <- c + W b;
                             the norm keeps a unit weight and a zero bias
  3. LayerNorm -> RMSNorm    (streams read through LayerNorms) n(x) = (x - mean x) / std x equals
                             x / rms(x) when the stream is mean-free, so every writer is centered,
                             W <- C W, b <- C b with C = I - 1 1^T / d (the stream x becomes C x,
                             which no norm can tell apart), and the LayerNorms become RMSNorms
  4. rotate                  x -> x Q, Q orthogonal: writers W <- Q^T W, b <- b Q (embeddings,
                             position vectors E <- E Q); readers W <- W (I_tile (x) Q), raw
                             readers too.  A unit RMSNorm commutes with Q, so every Linear sees
                             what it saw before.

A stream whose channel means are read (ResidualStream.centerable = False: a Linear reads the
raw stream, or a LayerNorm normalizes several tokens together) cannot be centered: step 3 is
skipped and Q is made mean-preserving, Q = Q0 G with G the Householder reflection taking
u Q0 back to u = 1 / sqrt(d), so that u Q = u; a unit LayerNorm, (x - mean x) / std x, then
commutes with Q as well (the mean and the centered part rotate separately).

The decoder stream's embedding and lm_head are untied first (they fold different matrices).
Each step keeps the FP model's outputs (tests/test_rotation_prepare.py checks each one).
Math in fp64, results cast back to each parameter's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ... import hadamard
from ...nn import RMSNorm, Rotation
from ..adapters.base import Adapter
from ..adapters.streams import ResidualStream, Writer

StreamRotation = Rotation | torch.Tensor  # a Rotation, or an orthogonal matrix [d, d]


@dataclass
class PreparedModel:
    """What prepare_model did: which streams were rotated, which Linears now read a rotated
    normalized stream (they need no online transform), which LayerNorms became RMSNorms."""

    rotated: dict[str, bool] = field(default_factory=dict)
    reader_linears: set[str] = field(default_factory=set)
    converted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def norm_kind(norm: nn.Module) -> str:
    """'layer' (subtracts the mean) or 'rms'; anything else is refused."""
    if isinstance(norm, nn.LayerNorm):
        return "layer"
    if isinstance(norm, RMSNorm) or type(norm).__name__.endswith("RMSNorm"):
        return "rms"
    raise ValueError(f"norm: {type(norm).__name__} is neither a LayerNorm nor an RMSNorm")


def norm_width(norm: nn.Module, default: int) -> int:
    """Number of channels a norm normalizes over."""
    w = getattr(norm, "weight", None)
    if w is not None:
        return int(w.numel())
    shape = getattr(norm, "normalized_shape", None)
    return int(shape[-1]) if shape else default


def _right(x: torch.Tensor, q: StreamRotation) -> torch.Tensor:
    """x @ Q over the last dim, fp64."""
    if isinstance(q, Rotation):
        return q.apply(x.double())
    return x.double() @ q.to(device=x.device, dtype=torch.float64)


_CHUNK = 4096  # rows per fp64 update: bounded memory for 150k-row embedding tables


def _update_rows_(t: torch.Tensor, fn) -> None:
    """t[i] <- fn(t[i] in fp64) for the rows of the 2-D view t, chunk by chunk, in place."""
    for a in range(0, t.shape[0], _CHUNK):
        rows = t[a:a + _CHUNK]
        rows.copy_(fn(rows.double()).to(t.dtype))


def _stream_vectors(model: nn.Module, w: Writer) -> list[torch.Tensor]:
    """2-D views [m, d] of what the writer adds to the stream, one stream vector per row: a
    Linear's / conv's weight (outputs first) transposed and its bias; embedding rows; vectors."""
    if w.kind == "vector":
        p = model.get_parameter(w.name)
        return [p.view(-1, p.shape[-1])]
    mod = model.get_submodule(w.name)
    if w.kind == "embedding":
        return [mod.weight]
    views = [mod.weight.view(mod.weight.shape[0], -1).t()]
    if getattr(mod, "bias", None) is not None:
        views.append(mod.bias.view(1, -1))
    return views


@torch.no_grad()
def fold_layer_scales(model: nn.Module, stream: ResidualStream) -> None:
    for w in stream.writers:
        if w.layer_scale is None:
            continue
        lam = model.get_parameter(w.layer_scale)
        for view in _stream_vectors(model, w):
            _update_rows_(view, lambda x: x * lam.double())
        lam.fill_(1.0)


def _add_bias(lin: nn.Linear, value: torch.Tensor) -> None:
    if lin.bias is None:
        lin.bias = nn.Parameter(value.to(lin.weight.dtype), requires_grad=lin.weight.requires_grad)
    else:
        lin.bias.copy_((lin.bias.double() + value).to(lin.bias.dtype))


@torch.no_grad()
def fold_norms(model: nn.Module, stream: ResidualStream) -> None:
    for r in stream.readers:
        norm = model.get_submodule(r.norm)
        norm_kind(norm)
        g = getattr(norm, "weight", None)
        b = getattr(norm, "bias", None)
        for name in r.linears:
            lin = model.get_submodule(name)
            reps = lin.in_features // norm_width(norm, stream.dim)  # a norm over d (tiled) or over tile * d
            if b is not None and bool(b.any()):
                bias = b.double().repeat(reps)
                _add_bias(lin, torch.cat([rows.double() @ bias for rows in lin.weight.split(_CHUNK)]))
            if g is not None:
                gain = g.double().repeat(reps)
                _update_rows_(lin.weight, lambda x: x * gain)
        if g is not None:
            g.fill_(1.0)
        if b is not None:
            b.zero_()


@torch.no_grad()
def center_writers(model: nn.Module, stream: ResidualStream) -> None:
    """x -> C x: every writer's output loses its mean over the stream's channels."""
    for w in stream.writers:
        for view in _stream_vectors(model, w):
            _update_rows_(view, lambda x: x - x.mean(-1, keepdim=True))


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def convert_layernorms(model: nn.Module, stream: ResidualStream) -> list[str]:
    """Center the stream and swap its (folded, unit) LayerNorms for RMSNorms; returns their names.
    A stream read through RMSNorms only is left as it is."""
    layer_norms = [r.norm for r in stream.readers if norm_kind(model.get_submodule(r.norm)) == "layer"]
    if not layer_norms:
        return []
    center_writers(model, stream)
    for name in layer_norms:
        ln = model.get_submodule(name)
        if ln.weight is not None and not bool((ln.weight == 1).all()) or ln.bias is not None and bool(ln.bias.any()):
            raise ValueError(f"norm: {name} still has an affine; fold_norms must run first")
        dtype = ln.weight.dtype if ln.weight is not None else torch.float32
        _replace(model, name, RMSNorm(int(ln.normalized_shape[-1]), float(ln.eps), dtype=dtype,
                                      device=ln.weight.device if ln.weight is not None else None))
    return layer_norms


def preserves_mean(q: StreamRotation, dim: int) -> bool:
    """u Q = u for u = 1 / sqrt(d) (to fp64 rounding)?"""
    ones = torch.ones(1, dim, dtype=torch.float64)
    return bool(torch.allclose(_right(ones, q), ones, atol=1e-9))


def _check_commutes(model: nn.Module, stream: ResidualStream, q: StreamRotation) -> None:
    mean_ok = None
    for r in stream.readers:
        norm = model.get_submodule(r.norm)
        w, b = getattr(norm, "weight", None), getattr(norm, "bias", None)
        if w is not None and not bool((w == 1).all()) or b is not None and bool(b.any()):
            raise ValueError(f"norm: {r.norm} still has an affine; run fold_norms first")
        if norm_kind(norm) == "layer":
            mean_ok = preserves_mean(q, stream.dim) if mean_ok is None else mean_ok
            if not mean_ok:
                raise ValueError(f"q: {r.norm} is a LayerNorm: only a mean-preserving rotation (Q 1 = 1) "
                                 "commutes with it (stream_rotation(..., mean_preserving=True), keep_mean)")


@torch.no_grad()
def rotate_stream(model: nn.Module, stream: ResidualStream, q: StreamRotation) -> None:
    """x -> x Q (see module docstring).  The stream's norms must have unit weights (fold_norms)
    and be RMSNorms, or LayerNorms with a mean-preserving Q."""
    _check_commutes(model, stream, q)
    for w in stream.writers:
        for view in _stream_vectors(model, w):
            _update_rows_(view, lambda x: _right(x, q))
    readers = [name for r in stream.readers for name in r.linears] + list(stream.raw_readers)
    for name in readers:  # W <- W (I_tile (x) Q): each row is tile stream vectors
        weight = model.get_submodule(name).weight
        _update_rows_(weight, lambda x: _right(x.reshape(x.shape[0], -1, stream.dim), q).reshape(x.shape))


def untie_lm_head(model: nn.Module) -> bool:
    """Give lm_head its own weight when it shares the input embedding's (True when it did)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight is not embed.weight:
        return False
    head.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=embed.weight.requires_grad)
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False
    return True


def random_orthogonal(dim: int, seed: int) -> torch.Tensor:
    """Haar-random orthogonal matrix [dim, dim] (QR of a Gaussian with sign fix), fp64."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def keep_mean(q: StreamRotation, dim: int) -> torch.Tensor:
    """Q G (dense fp64) with G the Householder reflection taking u Q back to u = 1 / sqrt(d)."""
    dense = _right(torch.eye(dim, dtype=torch.float64), q)
    u = torch.full((dim,), dim ** -0.5, dtype=torch.float64)
    w = u @ dense - u
    if float(w.norm()) < 1e-12:
        return dense
    return dense - 2.0 * torch.outer(dense @ w, w) / float(w @ w)


def stream_rotation(dim: int, seed: int, mean_preserving: bool = False) -> StreamRotation:
    """A randomized Hadamard of `dim` (QuaRot) or, for sizes without one, a random orthogonal
    matrix: folded offline, so any orthogonal Q keeps the model.  mean_preserving: times the
    Householder reflection that makes u Q = u (streams that keep LayerNorms)."""
    q = Rotation.random_hadamard(dim, seed) if hadamard.is_hadamard_size(dim) else random_orthogonal(dim, seed)
    return keep_mean(q, dim) if mean_preserving else q


def prepare_model(model: nn.Module, adapter: Adapter, *, streams: tuple[str, ...] = ("vision", "language"),
                  rotate: bool = True, seed: int = 0, rotations: dict[str, StreamRotation] | None = None
                  ) -> PreparedModel:
    """Steps 1-4 of the module docstring on each stream in `streams` ('vision', 'language');
    rotate=False stops after the conversion.  `rotations` overrides the per-stream Q (default:
    stream_rotation(d, seed + i), mean-preserving where LayerNorms stay).  A vision stream the
    adapter cannot rotate is left alone (noted)."""
    info = PreparedModel()
    for i, kind in enumerate(streams):
        if kind not in ("vision", "language"):
            raise ValueError(f"streams: expected 'vision' / 'language', got {kind!r}")
        stream = adapter.language_stream() if kind == "language" else adapter.vision_stream()
        if stream is None:
            info.rotated[kind] = False
            info.notes.append(f"{kind} stream kept as is: {adapter.stream_limitation}")
            continue
        if kind == "language":
            untie_lm_head(model)
        fold_layer_scales(model, stream)
        fold_norms(model, stream)
        if stream.centerable:
            info.converted += convert_layernorms(model, stream)
        layer_norms = any(norm_kind(model.get_submodule(r.norm)) == "layer" for r in stream.readers)
        if layer_norms:
            info.notes.append(f"{kind} stream keeps its LayerNorms (its channel means are read): "
                              "mean-preserving rotation")
        info.rotated[kind] = rotate
        if rotate:
            q = (rotations or {}).get(kind)
            q = q if q is not None else stream_rotation(stream.dim, seed + i, mean_preserving=layer_norms)
            rotate_stream(model, stream, q)
            info.reader_linears |= stream.reader_linears()
    return info
