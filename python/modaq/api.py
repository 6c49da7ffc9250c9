"""Public API: quantize a Hugging Face VLM, save it, load it back without calibrating.

    model = quantize(model, processor, QuantConfig(method="mbq", format="w4a8", vision_format="w8a8"),
                     "coco:captions_train2017.json,train2017")
    save_quantized(model, "out/", processor)
    model = load_quantized("out/")          # Linears are modaq modules; model.generate() works
    quantize_rtn_(model, "w3a16", vision_format="w8a8")   # RTN module swap, no calibration data

A saved directory holds `modaq_model.safetensors` (the whole state dict: packed weights, scales,
smoothing vectors, online-transform buffers, FP tensors, plus the non-persistent buffers such as
rotary tables), `quant_config.json` (format per component, method, group size, the full
QuantConfig, every quantized Linear's module config and every LayerNorm a rotation method turned
into an RMSNorm), the Hugging Face `config.json` / `generation_config.json`,
and the processor files when a processor is given.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch
from torch import nn

from . import __version__
from .calib import QuantConfig, calibrate, get_adapter, load_calibration
from .calib.config import COMPONENTS
from .calib.data import CalibSample, read_json
from .calib.methods.common import supported_reason
from .calib.report import CalibrationResult, kl_text_positions
from .formats import FORMATS, get_format
from .hadamard import hadamard_factors
from .nn import QUANT_LINEARS, QuantLinear, RMSNorm, Rotation, from_config
from .ops.weight_only import GROUP_SIZES

WEIGHTS_NAME = "modaq_model.safetensors"
CONFIG_NAME = "quant_config.json"
_BUFFER_PREFIX = "modaq.nonpersistent."


def quantize(model: nn.Module, processor=None, config: QuantConfig | None = None,
             calib_data: str | list[CalibSample] = "synthetic", *, return_result: bool = False):
    """Calibrate and quantize `model` in place; its Linears become modaq modules.

    calib_data: a source spec (see modaq.calib.data: 'synthetic', 'coco:ANN,IMAGES', ...; needs
    `processor`) or a list of CalibSample.  Returns the model, or (model, CalibrationResult) with
    return_result=True.
    """
    config = config or QuantConfig()
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config: expected a modaq QuantConfig, got {type(config).__name__}")
    adapter = get_adapter(model)
    if isinstance(calib_data, str):
        if processor is None:
            raise ValueError("processor: needed to turn calib_data into model inputs")
        samples = load_calibration(calib_data, processor, config.samples, seed=config.seed,
                                   visual_token_budget=config.visual_token_budget,
                                   image_token_id=adapter.image_token_id)
    elif isinstance(calib_data, (list, tuple)) and calib_data and all(isinstance(s, CalibSample) for s in calib_data):
        samples = list(calib_data)
    else:
        raise TypeError("calib_data: expected a source spec string or a non-empty list of CalibSample")
    result: CalibrationResult = calibrate(model, samples, config, adapter)
    model.modaq_info = {"config": config.to_dict(), "skipped": dict(result.skipped),
                        "family": model.config.model_type, "formats": component_formats(config)}
    return (model, result) if return_result else model


ONLINE_ROTATIONS = ("hadamard",)


def quantize_rtn_(model: nn.Module, format: str | None = "w4a16", *, vision_format: str | None = None,
                  projector_format: str | None = None, group_size: int = 128, rotation: str | None = None,
                  rotation_layers: tuple[str, ...] | None = None, seed: int = 0) -> dict[str, str]:
    """Swap the Linears of `model`'s vision tower, projector and language decoder for modaq
    modules by round-to-nearest, in place, without calibration data (torchao `quantize_` style;
    for latency / memory measurements and quick baselines).  lm_head and embeddings stay FP.

    format, vision_format, projector_format: the decoder's, the vision tower's and the
    projector's format (a modaq.formats name: w3a16, w4a16, w4a8, w4a4, w8a8); None or 'none'
    keeps that component in floating point.  group_size: weight-only group size (64 or 128).
    rotation: None, or 'hadamard': each swapped Linear whose module name ends with one of
    `rotation_layers` (None: every swapped Linear) gets an online randomized Hadamard of its
    input (signs from `seed`), folded into its weight and, for activation-quantized formats,
    fused into the activation quantization; its in_features must have a Hadamard order
    (modaq.hadamard).  Linears a format cannot take (e.g. K not divisible by the group) stay FP
    and are listed in `model.modaq_info['skipped']`.  Returns {module name: format name} of
    the swapped Linears; the module weights are moved to modaq buffers on the Linear's device.
    """
    wanted = {c: _component_format(arg, value) for c, arg, value in (
        ("vision", "vision_format", vision_format), ("projector", "projector_format", projector_format),
        ("language", "format", format))}
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size: expected one of {GROUP_SIZES}, got {group_size!r}")
    if rotation not in (None, *ONLINE_ROTATIONS):
        raise ValueError(f"rotation: expected None or one of {ONLINE_ROTATIONS}, got {rotation!r}")
    if rotation_layers is not None and (isinstance(rotation_layers, str) or not all(
            isinstance(s, str) for s in rotation_layers)):
        raise TypeError("rotation_layers: expected a tuple of module-name suffixes, e.g. ('o_proj', 'down_proj')")
    plan, skipped = _rtn_plan(get_adapter(model), wanted, group_size, rotation, rotation_layers)
    swapped = {}
    for block, name, full, fmt, gs, rotate in plan:
        module = _rtn_module(block.get_submodule(name), fmt, gs, rotate, seed)
        parent, _, child = name.rpartition(".")
        setattr(block.get_submodule(parent) if parent else block, child, module)
        swapped[full] = fmt.name
    model.modaq_info = {"config": {"method": "rtn", "format": wanted["language"] and wanted["language"].name,
                                   "group_size": group_size, "rotation": rotation},
                        "skipped": skipped, "family": model.config.model_type,
                        "formats": {c: f.name if f else "none" for c, f in wanted.items()}}
    return swapped


def _component_format(arg: str, value):
    if value is None or value == "none":
        return None
    try:
        return get_format(value)
    except ValueError:
        raise ValueError(f"{arg}: expected one of {sorted(FORMATS)} or 'none', got {value!r}") from None


def _rtn_plan(adapter, wanted: dict, group_size: int, rotation: str | None, rotation_layers):
    """([(block, name in block, full name, format, group size, rotate?)], {skipped: reason}),
    checked before anything is swapped so that a bad argument leaves the model untouched."""
    plan, skipped = [], {}
    for stage in adapter.stages():
        fmt = wanted[stage.kind]
        if fmt is None:
            continue
        gs = group_size if fmt.weight_only else None
        for block_name, block in zip(stage.names, stage.blocks):
            for name, linear in block.named_modules():
                if not isinstance(linear, nn.Linear):
                    continue
                full = f"{block_name}.{name}"
                why = supported_reason(linear, fmt, gs)
                if why is not None:
                    skipped[full] = why
                    continue
                rotate = rotation is not None and (rotation_layers is None or full.endswith(tuple(rotation_layers)))
                if rotate:
                    try:
                        hadamard_factors(linear.in_features)
                    except ValueError as e:
                        raise ValueError(f"rotation: {full} (in_features {linear.in_features}): {e}") from None
                plan.append((block, name, full, fmt, gs, rotate))
    return plan, skipped


def _rtn_module(linear: nn.Linear, fmt, group_size: int | None, rotate: bool, seed: int) -> QuantLinear:
    """RTN module of `fmt` for `linear`, with an online random Hadamard when `rotate`."""
    rotation = None
    if rotate:
        signs = Rotation.random_hadamard(linear.in_features, seed=seed).signs
        rotation = Rotation("hadamard", signs=signs.to(linear.weight.device))
    return QUANT_LINEARS[fmt.name].from_linear(linear, group_size=group_size, rotation=rotation)


def text_kl(fp_model: nn.Module, model: nn.Module, samples: list[CalibSample],
            device: str | torch.device = "cpu") -> float:
    """Mean KL(p_fp || p_quantized) of next-token distributions over the text positions of
    `samples` (nats); the models run on `device` one at a time."""
    adapter = get_adapter(model)
    masks = [adapter.modality_mask(s.input_ids) for s in samples]
    return kl_text_positions(fp_model, model, samples, masks, device)


def component_formats(config: QuantConfig) -> dict[str, str]:
    """{'vision' | 'projector' | 'language': format name or 'none'}."""
    return {c: (f.name if f else "none") for c in COMPONENTS for f in [config.format_for(c)]}


def quant_layers(model: nn.Module) -> dict[str, dict]:
    """{module name: QuantLinear.quant_config()} for every modaq module in `model`."""
    return {n: m.quant_config() for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def replaced_norms(model: nn.Module) -> dict[str, dict]:
    """{module name: RMSNorm.norm_config()} for the LayerNorms a rotation method converted."""
    return {n: m.norm_config() for n, m in model.named_modules() if isinstance(m, RMSNorm)}


def _rebuild_structure(model: nn.Module, meta: dict, state: dict) -> None:
    """On the meta-device model: modaq modules where the Linears / converted norms were, and the
    biases that folding a LayerNorm bias gave to Linears built without one."""
    for name, cfg in meta["layers"].items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, from_config(cfg, device="meta"))
    for name, cfg in meta.get("norms", {}).items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, RMSNorm.from_config(cfg, device="meta"))
    expected = set(model.state_dict())
    for key in state:
        owner = key[:-len(".bias")]
        if key.endswith(".bias") and key not in expected:
            mod = model.get_submodule(owner) if owner else None
            if isinstance(mod, nn.Linear) and mod.bias is None:
                mod.bias = nn.Parameter(torch.empty(mod.out_features, device="meta"))


def _state_for_saving(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """(tensors, tied aliases {alias: source}, non-persistent buffer names).  Tensors that are the
    same view (tied embeddings) are stored once; other storage sharing is broken by a copy."""
    state = model.state_dict()
    nonpersistent = sorted(set(n for n, _ in model.named_buffers()) - set(state))
    buffers = dict(model.named_buffers())
    tensors, aliases, seen_views, seen_storage = {}, {}, {}, set()
    items = list(state.items()) + [(_BUFFER_PREFIX + n, buffers[n]) for n in nonpersistent]
    for name, t in items:
        t = t.detach()
        if t.device.type == "meta":
            raise ValueError(f"model: {name} is on the meta device; load the weights before saving")
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and view in seen_views:
            aliases[name] = seen_views[view]
            continue
        ptr = t.untyped_storage().data_ptr()
        t = t.contiguous().cpu()
        if t.numel() and ptr in seen_storage:
            t = t.clone()
        seen_views[view] = name
        seen_storage.add(ptr)
        tensors[name] = t
    return tensors, aliases, nonpersistent


def save_quantized(model: nn.Module, directory: str | os.PathLike, processor=None, *, overwrite: bool = False) -> str:
    """Write the quantized model to `directory` atomically (a temporary sibling directory renamed
    at the end: a failure leaves nothing behind).  Returns the directory path."""
    from safetensors.torch import save_file

    layers = quant_layers(model)
    if not layers:
        raise ValueError("model: holds no modaq modules; run modaq.quantize(...) first")
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not overwrite:
        raise ValueError(f"directory: {directory} already exists; pass overwrite=True to replace it")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    try:
        tensors, aliases, nonpersistent = _state_for_saving(model)
        save_file(tensors, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": "pt", "modaq": __version__})
        info = dict(getattr(model, "modaq_info", {}))
        cfg = info.get("config", {})
        meta = {"modaq_version": __version__, "architecture": type(model).__name__,
                "method": cfg.get("method"), "format": cfg.get("format"), "formats": info.get("formats", {}),
                "group_size": cfg.get("group_size"), "config": cfg, "skipped": info.get("skipped", {}),
                "layers": layers, "norms": replaced_norms(model), "tied": aliases,
                "nonpersistent_buffers": nonpersistent}
        with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        _replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _replace_dir(tmp: str, directory: str) -> None:
    if not os.path.exists(directory):
        os.rename(tmp, directory)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=os.path.dirname(directory))
    os.rmdir(old)
    os.rename(directory, old)
    os.rename(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def read_quant_config(directory: str | os.PathLike) -> dict:
    """The quant_config.json of a save_quantized directory."""
    directory = os.fspath(directory)
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"directory: {directory} holds no {CONFIG_NAME}; not a modaq save_quantized output")
    return read_json(path, "directory")


def load_quantized(directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by save_quantized: the HF class from its config (on the meta
    device, no random init), empty modaq modules where the Linears were, then the saved tensors."""
    import transformers
    from safetensors.torch import load_file

    directory = os.fspath(directory)
    meta = read_quant_config(directory)
    weights = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"directory: {directory} holds no {WEIGHTS_NAME}")
    cls = getattr(transformers, meta.get("architecture", ""), None)
    if cls is None:
        raise ValueError(f"{CONFIG_NAME}: architecture {meta.get('architecture')!r} is not a transformers class")
    config = transformers.AutoConfig.from_pretrained(directory)
    state = load_file(weights)
    for alias, source in meta.get("tied", {}).items():
        state[alias] = state[source]
    with torch.device("meta"):
        model = cls(config)
        _rebuild_structure(model, meta, state)
    buffers = {k[len(_BUFFER_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(_BUFFER_PREFIX)}
    model.load_state_dict(state, strict=True, assign=True)
    for name, value in buffers.items():
        parent, _, child = name.rpartition(".")
        model.get_submodule(parent)._buffers[child] = value
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise ValueError(f"{weights}: no saved values for {left[:5]}{' ...' if len(left) > 5 else ''}")
    if os.path.isfile(os.path.join(directory, "generation_config.json")):
        model.generation_config = transformers.GenerationConfig.from_pretrained(directory)
    model.modaq_info = {"config": meta.get("config", {}), "skipped": meta.get("skipped", {}),
                        "family": config.model_type, "formats": meta.get("formats", {})}
    return model.eval().to(device)
