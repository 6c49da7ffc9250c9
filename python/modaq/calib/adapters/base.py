"""The adapter interface: what the calibrator needs to know about one VLM family.

An adapter names, for a Hugging Face model, the three stages the engine walks in order

    vision   the vision-tower transformer blocks (every position is a vision token)
    projector   the vision -> language connector, treated as one block (vision tokens only)
    language    the decoder blocks; positions holding the image token are vision, the rest text

and, for each block, its `LinearGroup`s: the Linears that read the same input tensor (q/k/v;
gate/up) plus the module that produces that input, into which a per-channel equalization scale
s can be folded (x -> x / s) so that the quantized model has no extra op:

    norm producer    LayerNorm / RMSNorm: weight /= s (and bias /= s)
    linear producer  previous Linear whose output rows are the input channels: rows /= s

A group without a foldable producer keeps s in the quantized module's `smooth` buffer.
Everything family-specific lives in the subclasses (one file per family).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .streams import ResidualStream, llama_language_stream

STAGE_KINDS = ("vision", "projector", "language")


@dataclass(frozen=True)
class LinearGroup:
    """Linears (names relative to the block) that share one input, and that input's producer.

    producer_kind is 'norm' or 'linear' (see module docstring), or None when no module can
    absorb a scale.  `no_clip` names members whose weight clipping search is skipped (q / k:
    their error is squashed by the softmax, as in AWQ).
    """

    linears: tuple[str, ...]
    producer: str | None = None
    producer_kind: str | None = None
    no_clip: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.linears:
            raise ValueError("linears: a LinearGroup needs at least one Linear")
        if (self.producer is None) != (self.producer_kind is None):
            raise ValueError("producer / producer_kind: give both or neither")
        if self.producer_kind not in (None, "norm", "linear"):
            raise ValueError(f"producer_kind: expected 'norm', 'linear' or None, got {self.producer_kind!r}")


@dataclass
class Stage:
    """One sequential stage: its blocks (in execution order) and their full module names."""

    kind: str  # one of STAGE_KINDS
    blocks: list[nn.Module]
    names: list[str]
    all_vision: bool = field(default=False)

    def __post_init__(self):
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"kind: expected one of {STAGE_KINDS}, got {self.kind!r}")
        if len(self.blocks) != len(self.names):
            raise ValueError("blocks / names: expected the same length")


class Adapter:
    """Base adapter; subclasses set `families` (config.model_type values) and the hooks below."""

    families: tuple[str, ...] = ()

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # ----------------------------------------------------------------- required hooks

    def vision_blocks(self) -> tuple[str, nn.ModuleList]:
        raise NotImplementedError

    def projector(self) -> tuple[str, nn.Module]:
        raise NotImplementedError

    def language_blocks(self) -> tuple[str, nn.ModuleList]:
        raise NotImplementedError

    def vision_groups(self, block: nn.Module) -> list[LinearGroup]:
        raise NotImplementedError

    def projector_groups(self, block: nn.Module) -> list[LinearGroup]:
        raise NotImplementedError

    @property
    def image_token_id(self) -> int:
        """Id of the placeholder token whose positions the processor fills with vision features."""
        for key in ("image_token_id", "image_token_index"):
            value = getattr(self.config, key, None)
            if value is not None:
                return int(value)
        raise ValueError(f"config: {type(self.config).__name__} names no image token id")

    # ------------------------------------------------------------------- shared logic

    def language_groups(self, block: nn.Module) -> list[LinearGroup]:
        """Llama / Qwen2-style decoder layer (all supported families use one)."""
        return llama_style_groups(block)

    def stages(self) -> list[Stage]:
        """vision, projector, language stages in execution order."""
        vname, vblocks = self.vision_blocks()
        pname, proj = self.projector()
        lname, lblocks = self.language_blocks()
        return [
            Stage("vision", list(vblocks), [f"{vname}.{i}" for i in range(len(vblocks))], all_vision=True),
            Stage("projector", [proj], [pname], all_vision=True),
            Stage("language", list(lblocks), [f"{lname}.{i}" for i in range(len(lblocks))]),
        ]

    def groups(self, stage: Stage, block: nn.Module) -> list[LinearGroup]:
        """The block's LinearGroups; every nn.Linear of the block lands in exactly one group."""
        fn = {"vision": self.vision_groups, "projector": self.projector_groups,
              "language": self.language_groups}[stage.kind]
        groups = fn(block)
        return complete_groups(block, groups)

    def modality_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """bool [B, S]: True where the decoder position holds a vision token."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("input_ids: expected a 2-D LongTensor [batch, seq]")
        return input_ids == self.image_token_id

    def lm_head(self) -> nn.Module:
        head = self.model.get_output_embeddings()
        if head is None:
            raise ValueError(f"model: {type(self.model).__name__} has no output embeddings (lm_head)")
        return head

    # ------------------------------------------------------------ residual streams

    stream_limitation: str = ""  # why vision_stream() is None, for messages

    def vision_stream(self) -> ResidualStream | None:
        """The vision tower's residual stream, or None when it cannot be rotated offline."""
        return None

    def language_stream_vectors(self) -> tuple[str, ...]:
        """Parameters written into the decoder stream besides embeddings and projector output."""
        return ()

    def language_stream(self) -> ResidualStream:
        """The decoder's residual stream (Llama / Qwen2-style decoder layers)."""
        lname, layers = self.language_blocks()
        final_norm = f"{lname.rsplit('.', 1)[0]}.norm"
        get_submodule(self.model, final_norm)
        pname, proj = self.projector()
        last = [n for n, m in proj.named_modules() if isinstance(m, nn.Linear)][-1]
        return llama_language_stream(int(self.config.get_text_config().hidden_size),
                                     module_name(self.model, self.model.get_input_embeddings()), lname,
                                     len(layers), final_norm, module_name(self.model, self.lm_head()),
                                     f"{pname}.{last}", self.language_stream_vectors())

    def text_only(self, sample):
        """The sample without its image: the image-token positions removed, no pixel inputs
        (the decoder then sees the prompt and answer as plain text)."""
        from ..data import CalibSample

        keep = ~self.modality_mask(sample.input_ids)[0]
        ids = sample.input_ids[:, keep]
        return CalibSample({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, sample.labels[:, keep])


# --------------------------------------------------------------------------- helpers

def module_name(root: nn.Module, module: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is module:
            return name
    raise ValueError(f"model: {type(module).__name__} is not a submodule of {type(root).__name__}")


def get_submodule(root: nn.Module, name: str) -> nn.Module:
    try:
        return root.get_submodule(name)
    except AttributeError:
        raise ValueError(f"model: expected a submodule {name!r} in {type(root).__name__}; "
                         "is this the model family the adapter expects?") from None


def has_submodule(root: nn.Module, name: str) -> bool:
    try:
        root.get_submodule(name)
        return True
    except AttributeError:
        return False


def llama_style_groups(block: nn.Module) -> list[LinearGroup]:
    """q/k/v <- input_layernorm; o <- v (when shapes allow); gate/up <- post_attention_layernorm;
    down <- up.  o_proj folds into v_proj only without grouped-query attention, where the
    v output channel j is exactly o_proj input channel j."""
    attn, mlp = "self_attn", "mlp"
    groups = [LinearGroup((f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"),
                          "input_layernorm", "norm", no_clip=(f"{attn}.q_proj", f"{attn}.k_proj"))]
    v, o = block.get_submodule(f"{attn}.v_proj"), block.get_submodule(f"{attn}.o_proj")
    if v.out_features == o.in_features:
        groups.append(LinearGroup((f"{attn}.o_proj",), f"{attn}.v_proj", "linear"))
    else:
        groups.append(LinearGroup((f"{attn}.o_proj",)))
    groups.append(LinearGroup((f"{mlp}.gate_proj", f"{mlp}.up_proj"), "post_attention_layernorm", "norm"))
    groups.append(LinearGroup((f"{mlp}.down_proj",), f"{mlp}.up_proj", "linear"))
    return groups


def vit_groups(block: nn.Module, attn: str, qkv: tuple[str, str, str], out: str, norm1: str,
               norm2: str, mlp: str = "mlp") -> list[LinearGroup]:
    """A pre-norm ViT layer with separate q/k/v (CLIP, SigLIP, InternViT)."""
    q, k, v = (f"{attn}.{n}" for n in qkv)
    out_name = f"{attn}.{out}"
    groups = [LinearGroup((q, k, v), norm1, "norm", no_clip=(q, k))]
    if block.get_submodule(v).out_features == block.get_submodule(out_name).in_features:
        groups.append(LinearGroup((out_name,), v, "linear"))
    else:
        groups.append(LinearGroup((out_name,)))
    groups += [LinearGroup((f"{mlp}.fc1",), norm2, "norm"), LinearGroup((f"{mlp}.fc2",))]
    return groups


def complete_groups(block: nn.Module, groups: list[LinearGroup]) -> list[LinearGroup]:
    """Check the named Linears / producers exist and cover each Linear once; Linears the
    adapter did not name become single-member groups without a producer."""
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    seen: set[str] = set()
    producers = [g.producer for g in groups if g.producer is not None]
    if len(producers) != len(set(producers)):
        raise ValueError(f"adapter: a producer feeds two LinearGroups ({producers}); a scale folds into it once")
    for g in groups:
        for name in g.linears:
            if name not in linears:
                raise ValueError(f"adapter: {name!r} is not an nn.Linear of {type(block).__name__} "
                                 f"(Linears: {sorted(linears)})")
            if name in seen:
                raise ValueError(f"adapter: {name!r} appears in two LinearGroups")
            seen.add(name)
        if g.producer is not None:
            _check_producer(block, g)
    rest = [LinearGroup((n,)) for n in linears if n not in seen]
    return list(groups) + rest


def _check_producer(block: nn.Module, g: LinearGroup) -> None:
    prod = get_submodule(block, g.producer)
    k = block.get_submodule(g.linears[0]).in_features
    if g.producer_kind == "norm":
        w = getattr(prod, "weight", None)
        if not isinstance(w, torch.Tensor) or w.shape != (k,):
            raise ValueError(f"adapter: producer {g.producer!r} needs a weight of shape ({k},) to absorb scales")
    elif not isinstance(prod, nn.Linear) or prod.out_features != k:
        raise ValueError(f"adapter: producer {g.producer!r} must be an nn.Linear with {k} outputs")
