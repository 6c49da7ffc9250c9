"""QuantConfig: every calibration choice in one frozen dataclass (the CLI is a thin layer over it).

Defaults follow the papers: group size 128 for weight-only formats, 128 calibration samples,
MAE reconstruction loss for MBQ (MSE for the others), a 20-point equalization grid (AWQ), beta = 0.1
for the scale-ratio weighting; FlatQuant's 15 epochs, AdamW lr 5e-3 (transforms) / 5e-2
(clipping), 4 samples per step, SmoothQuant-style scale init with alpha 0.3, RTN weights;
QuaRot's GPTQ after the rotation.  Modality weighting 'auto': MBQ's gradients for mbq, the scale
ratio x beta for flatquant (the modality-aware rotation paper), none otherwise (MBQ(Rot) is
quarot with modality='mbq').  Per-component formats: `format` is the language decoder's,
`vision_format` the vision tower's (default: `format`), `projector_format` the projector's
(default: `vision_format`); "none" keeps a component in floating point.  MQuant's setting is
format="w4a8", vision_format="w8a8".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .. import formats
from ..ops.weight_only import GROUP_SIZES
from .modality import WEIGHTING_KINDS, ModalityWeights

METHODS = ("rtn", "gptq", "awq", "smoothquant", "mbq", "quarot", "flatquant")
COMPONENTS = ("vision", "projector", "language")
LOSSES = ("mae", "mse")
KEEP_FP = "none"
ROTATION_WEIGHTS = ("auto", "gptq", "rtn")
LANGUAGE_CALIBRATION = ("multimodal", "text")


def _check_format(name: str, value) -> None:
    if value is None or value == KEEP_FP:
        return
    try:
        formats.get_format(value)
    except ValueError:
        raise ValueError(f"{name}: expected one of {sorted(formats.FORMATS)} or {KEEP_FP!r}, got {value!r}") from None


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.  See the module docstring for the per-component formats."""

    method: str = "mbq"
    format: str = "w4a8"
    vision_format: str | None = None
    projector_format: str | None = None
    group_size: int = 128
    samples: int = 128
    visual_token_budget: int | None = None
    modality: str = "auto"  # auto: 'mbq' for the mbq method, 'none' otherwise
    loss: str = "auto"  # auto: 'mae' for mbq, 'mse' otherwise
    beta: float = 0.1
    fixed_weights: tuple[float, float] = (0.1, 1.0)  # (vision, text) for modality='fixed'
    grid: int = 20
    clip: bool | None = None  # None: on for awq / mbq with weight-only formats
    clip_grid: int = 20
    clip_min_ratio: float = 0.5
    clip_tokens: int = 512
    max_search_tokens: int = 4096
    gptq_damp: float = 0.01
    gptq_block_size: int = 128
    rotation_weights: str = "auto"  # weights after quarot / flatquant transforms: auto = gptq / rtn (the papers')
    flat_epochs: int = 15  # FlatQuant: epochs over the calibration set per block
    flat_lr: float = 5e-3  # AdamW lr of the Kronecker factors and per-channel scales
    flat_clip_lr: float = 5e-2  # AdamW lr of the weight clipping factors (10x, as FlatQuant)
    flat_batch: int = 4  # samples per optimizer step
    flat_diag_alpha: float = 0.3  # SmoothQuant-style init of the per-channel scales
    flat_weight_clip: bool = True  # learnable per-row weight clipping (FlatQuant's LWC)
    flat_act_clip: bool = True  # learnable per-Linear activation clip ratio (FlatQuant's LAC), lr flat_clip_lr
    language_calibration: str = "multimodal"  # "text": the decoder calibrates on the samples without images
    device: str = "auto"
    offload_activations: bool = False
    offload_weights: bool = False  # MBQ's gradient pass with weights on the CPU (accelerate hooks)
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.format == KEEP_FP:
            raise ValueError("format: the language decoder format must be a quantized format")
        _check_format("format", self.format)
        _check_format("vision_format", self.vision_format)
        _check_format("projector_format", self.projector_format)
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"group_size: expected one of {GROUP_SIZES}, got {self.group_size!r}")
        for name in ("samples", "grid", "clip_grid", "clip_tokens", "max_search_tokens", "gptq_block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.visual_token_budget is not None and (not isinstance(self.visual_token_budget, int)
                                                     or self.visual_token_budget <= 0):
            raise ValueError(f"visual_token_budget: expected a positive int or None, got {self.visual_token_budget!r}")
        if self.modality not in ("auto", *WEIGHTING_KINDS):
            raise ValueError(f"modality: expected one of {('auto', *WEIGHTING_KINDS)}, got {self.modality!r}")
        if self.loss not in ("auto", *LOSSES):
            raise ValueError(f"loss: expected one of {('auto', *LOSSES)}, got {self.loss!r}")
        if not 0 < self.clip_min_ratio < 1:
            raise ValueError(f"clip_min_ratio: expected a value in (0, 1), got {self.clip_min_ratio!r}")
        if not self.gptq_damp > 0:
            raise ValueError(f"gptq_damp: expected a positive float, got {self.gptq_damp!r}")
        self._check_rotation_options()
        if len(self.fixed_weights) != 2:
            raise ValueError(f"fixed_weights: expected (vision, text), got {self.fixed_weights!r}")
        self.modality_weights()  # validates beta and the fixed weights
        self.torch_device()

    def _check_rotation_options(self) -> None:
        if self.rotation_weights not in ROTATION_WEIGHTS:
            raise ValueError(f"rotation_weights: expected one of {ROTATION_WEIGHTS}, got {self.rotation_weights!r}")
        if self.language_calibration not in LANGUAGE_CALIBRATION:
            raise ValueError(f"language_calibration: expected one of {LANGUAGE_CALIBRATION}, "
                             f"got {self.language_calibration!r}")
        for name in ("flat_epochs", "flat_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name in ("flat_lr", "flat_clip_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a positive float, got {getattr(self, name)!r}")
        if not 0 <= self.flat_diag_alpha <= 1:
            raise ValueError(f"flat_diag_alpha: expected a value in [0, 1], got {self.flat_diag_alpha!r}")
        if self.method == "flatquant":
            for c in COMPONENTS:
                fmt = self.format_for(c)
                if fmt is not None and fmt.weight_only:
                    raise ValueError(f"format: flatquant learns transforms for activation quantization; the {c} "
                                     f"format {fmt.name} is weight-only (use w4a8 / w4a4 / w8a8, or gptq / awq)")

    # ------------------------------------------------------------------ derived choices

    def format_for(self, component: str) -> formats.QuantFormat | None:
        """The format of a component ('vision', 'projector', 'language'); None keeps it FP."""
        if component not in COMPONENTS:
            raise ValueError(f"component: expected one of {COMPONENTS}, got {component!r}")
        name = {"language": self.format, "vision": self.vision_format or self.format}.get(component)
        if component == "projector":
            name = self.projector_format or self.vision_format or self.format
        return None if name == KEEP_FP else formats.get_format(name)

    def group_size_for(self, fmt: formats.QuantFormat) -> int | None:
        return self.group_size if fmt.weight_only else None

    def modality_weights(self) -> ModalityWeights:
        auto = {"mbq": "mbq", "flatquant": "scale_ratio"}.get(self.method, "none")
        kind = self.modality if self.modality != "auto" else auto
        return ModalityWeights(kind, beta=self.beta, vision=float(self.fixed_weights[0]),
                               text=float(self.fixed_weights[1]))

    def rotation_weight_quantizer(self) -> str:
        """'gptq' or 'rtn': how quarot / flatquant quantize the transformed weights."""
        if self.rotation_weights != "auto":
            return self.rotation_weights
        return "gptq" if self.method == "quarot" else "rtn"

    def loss_kind(self) -> str:
        return self.loss if self.loss != "auto" else ("mae" if self.method == "mbq" else "mse")

    def clip_for(self, fmt: formats.QuantFormat) -> bool:
        if self.clip is not None:
            return bool(self.clip)
        return self.method in ("awq", "mbq") and fmt.weight_only

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {self.device!r} requested but CUDA is not available")
        return dev

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("progress")
        d["fixed_weights"] = list(self.fixed_weights)
        return d
