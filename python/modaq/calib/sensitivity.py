"""MBQ sensitivity: per-Linear mean |dL/dY| over vision and over text positions.

One forward + backward pass of the SFT (caption) loss per calibration sample on the FP model
(labels cover the answer tokens only, see data.py).  A forward hook on every Linear of the three
stages (and on every block: FlatQuant weights its block-output loss) registers a tensor hook on
its output Y; the tensor hook adds sum |dL/dY| over the
sample's vision positions and over its text positions.  The result per Linear is

    g_v = sum_{samples} sum_{t in V} sum_c |dL/dY_tc| / (#vision positions * channels)

and g_l likewise over text positions (MBQ eq. 12-13).  Weights never get gradients (requires_grad
is switched off for the pass); the input embeddings and pixel values are made to require grad so
the graph reaches every Linear.  The whole model runs on `device` for this pass.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .adapters.base import Adapter
from .capture import to_device
from .data import CalibSample


class _GradAccumulator:
    def __init__(self):
        self.sums = {True: 0.0, False: 0.0}
        self.counts = {True: 0, False: 0}

    def add(self, grad: torch.Tensor, vis: torch.Tensor) -> None:
        g = grad.detach().float().abs().reshape(vis.numel(), -1)
        for flag in (True, False):
            sel = g[vis == flag]
            if sel.numel():
                self.sums[flag] += float(sel.sum())
                self.counts[flag] += sel.numel()

    def means(self) -> tuple[float | None, float | None]:
        return tuple(self.sums[f] / self.counts[f] if self.counts[f] else None for f in (True, False))


def _linear_stages(adapter: Adapter) -> dict[str, str]:
    """{full name of every block and of every Linear in it: stage kind}."""
    stage_of = {}
    for stage in adapter.stages():
        for bname, block in zip(stage.names, stage.blocks):
            stage_of[bname] = stage.kind
            for lname, mod in block.named_modules():
                if isinstance(mod, nn.Linear):
                    stage_of[f"{bname}.{lname}"] = stage.kind
    return stage_of


def modality_gradients(model: nn.Module, adapter: Adapter, samples: list[CalibSample],
                       device: torch.device, progress: bool = False,
                       offload_weights: bool = False) -> dict[str, tuple[float | None, float | None]]:
    """{full name: (g_v, g_l)} for every Linear in the adapter's stages and every block (the
    block's output gradient, for methods whose loss is the block output: FlatQuant)."""
    from tqdm.auto import tqdm

    stage_of = _linear_stages(adapter)
    modules = dict(model.named_modules())
    accum = {name: _GradAccumulator() for name in stage_of}
    state = {"mask": None}

    def forward_hook(name: str):
        def hook(mod, inputs, output):
            output = output[0] if isinstance(output, (tuple, list)) else output
            if not output.requires_grad:
                return
            tokens = output.numel() // output.shape[-1]
            vis = state["mask"] if stage_of[name] == "language" else \
                torch.ones(tokens, dtype=torch.bool, device=output.device)
            if vis.numel() != tokens:
                raise ValueError(f"sensitivity: {name} output has {tokens} positions, the sequence {vis.numel()}")
            output.register_hook(lambda grad: accum[name].add(grad, vis))
        return hook

    def embed_hook(mod, inputs, output):
        return output.requires_grad_(True) if output.is_floating_point() and not output.requires_grad else output

    grad_flags = {p: p.requires_grad for p in model.parameters()}
    training = model.training
    original_device = next(model.parameters()).device
    handles = []
    try:
        for p in grad_flags:
            p.requires_grad_(False)
        model.eval()
        handles = _place(model, device, offload_weights)
        handles += [modules[n].register_forward_hook(forward_hook(n)) for n in stage_of]
        handles.append(model.get_input_embeddings().register_forward_hook(embed_hook))
        for sample in tqdm(samples, desc="sensitivity", disable=not progress):
            state["mask"] = adapter.modality_mask(sample.input_ids).reshape(-1).to(device)
            _backward_sft_loss(model, sample, device, offload_weights)
    finally:
        for h in handles:
            h.remove()
        for p, flag in grad_flags.items():
            p.requires_grad_(flag)
        model.to(original_device).train(training)
    return {name: acc.means() for name, acc in accum.items()}


def _place(model: nn.Module, device: torch.device, offload_weights: bool) -> list:
    """The whole model on `device`; or (offload_weights) its weights stay on the CPU and hooks
    bring each module's own weights to `device` just for its forward, so a model larger than the
    GPU gets its gradients with about one module resident.  Parameters keep their identity
    (tied weights stay tied).  Returns the hook handles to remove."""
    if not offload_weights:
        model.to(device)
        return []
    handles = []
    for mod in model.modules():
        if next(mod.parameters(recurse=False), None) is None and not any(
                b is not None for b in mod._buffers.values()):
            continue
        handles.append(mod.register_forward_pre_hook(lambda m, args: _move_own(m, device)))
        handles.append(mod.register_forward_hook(lambda m, args, out: _move_own(m, torch.device("cpu"))))
    return handles


def _move_own(mod: nn.Module, device: torch.device) -> None:
    for p in mod.parameters(recurse=False):
        p.data = p.data.to(device)
    for name, b in mod._buffers.items():
        if b is not None:
            mod._buffers[name] = b.to(device)


def _backward_sft_loss(model: nn.Module, sample: CalibSample, device: torch.device,
                       offload_weights: bool = False) -> None:
    inputs = to_device(sample.inputs, device)
    for key in ("pixel_values", "pixel_values_videos"):
        if key in inputs and inputs[key].is_floating_point():
            inputs[key] = inputs[key].clone().requires_grad_(True)
    # autograd keeps each Linear's weight for dL/dX: with offloaded weights those copies (and
    # the activations) wait for the backward pass in CPU memory instead of on the device
    saved_on_cpu = torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda") \
        if offload_weights else contextlib.nullcontext()
    with torch.enable_grad(), saved_on_cpu:
        out = model(**inputs, labels=sample.labels.to(device), use_cache=False)
        if out.loss is None or not out.loss.requires_grad:
            raise ValueError("sensitivity: the model returned no differentiable loss for the labels")
        out.loss.backward()
