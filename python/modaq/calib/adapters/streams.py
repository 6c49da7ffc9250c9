"""Residual streams: which modules write a stream and which read it (for computation-invariant
rotation, calib/rotation/).  Names are full module / parameter names in the model.

A transformer's residual stream x [tokens, d] is the sum of what its writers add to it
(embeddings, attention output projections, MLP output projections, the projector's last Linear
for the decoder's vision tokens); every reader sees it through a norm followed by Linears.
Rotating the stream, x -> x Q (Q orthogonal), is then computation-invariant when each writer's
output is rotated (rows of a writer Linear: W -> Q^T W, b -> b Q) and each reader undoes it
(W -> W Q after the norm), provided the norm commutes with Q: RMSNorm with a unit weight does,
LayerNorm does not (its mean subtraction), which is why LayerNorm streams are first centered and
converted (calib/rotation/prepare.py), or, where the stream's means are read (raw readers),
rotated only by mean-preserving Q (Q 1 = 1), which commutes with a unit LayerNorm.

An adapter returns `None` for a stream that cannot be rotated offline (CLIP's pre_layrnorm
writes the stream through its affine), with the reason in `stream_limitation`.
"""
from __future__ import annotations

from dataclasses import dataclass

WRITER_KINDS = ("linear", "conv", "embedding", "vector")


@dataclass(frozen=True)
class Writer:
    """Something whose output is added to (or starts) the stream.

    kind: 'linear' (nn.Linear: output rows + bias), 'conv' (patch embedding: output channels
    + bias), 'embedding' (nn.Embedding: each row is a stream vector), 'vector' (a parameter whose
    last dim is the stream: CLS token, position embeddings, LLaVA-OneVision's image_newline).
    layer_scale: a per-channel parameter that multiplies the output (InternViT's lambda), folded
    into the writer first.
    """

    name: str
    kind: str
    layer_scale: str | None = None

    def __post_init__(self):
        if self.kind not in WRITER_KINDS:
            raise ValueError(f"kind: expected one of {WRITER_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class NormReader:
    """A norm of the stream and the Linears that read its output.  tile > 1: the Linears read
    `tile` consecutive normalized tokens concatenated (Qwen2-VL's patch merger: 4 patches;
    InternVL's pixel shuffle: 4 tokens), so their input channels are tile copies of the stream."""

    norm: str
    linears: tuple[str, ...]
    tile: int = 1

    def __post_init__(self):
        if not self.linears:
            raise ValueError(f"linears: the norm {self.norm!r} needs at least one reading Linear")
        if self.tile < 1:
            raise ValueError(f"tile: expected a positive int, got {self.tile!r}")


@dataclass(frozen=True)
class ResidualStream:
    """Every writer and every reader of one residual stream ('vision' or 'language').

    raw_readers: Linears that read the stream itself, without a norm (LLaVA-OneVision's
    projector).  centerable: False when something sees the tokens' channel means, so the stream
    cannot be centered (a raw reader, or InternVL's projector LayerNorm over 4 concatenated
    tokens); its LayerNorms then stay and only mean-preserving rotations (Q 1 = 1) fold.
    """

    kind: str
    dim: int
    writers: tuple[Writer, ...]
    readers: tuple[NormReader, ...]
    raw_readers: tuple[str, ...] = ()
    centerable: bool = True

    def __post_init__(self):
        if self.raw_readers and self.centerable:
            raise ValueError("centerable: a stream with raw readers sees its channel means; set centerable=False")

    def reader_linears(self) -> set[str]:
        """Full names of the Linears that read the stream (through a norm or raw)."""
        return {name for r in self.readers for name in r.linears} | set(self.raw_readers)


def llama_language_stream(dim: int, embed: str, layers: str, n_layers: int, final_norm: str, lm_head: str,
                          projector_out: str, vectors: tuple[str, ...] = ()) -> ResidualStream:
    """The decoder stream of a Llama / Qwen2-style decoder fed by a projector."""
    writers = [Writer(embed, "embedding"), Writer(projector_out, "linear")]
    writers += [Writer(v, "vector") for v in vectors]
    readers = []
    for i in range(n_layers):
        p = f"{layers}.{i}"
        writers += [Writer(f"{p}.self_attn.o_proj", "linear"), Writer(f"{p}.mlp.down_proj", "linear")]
        readers += [NormReader(f"{p}.input_layernorm", tuple(f"{p}.self_attn.{n}_proj" for n in "qkv")),
                    NormReader(f"{p}.post_attention_layernorm", (f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"))]
    readers.append(NormReader(final_norm, (lm_head,)))
    return ResidualStream("language", dim, tuple(writers), tuple(readers))
