"""Block-wise sequential calibration engine.

    method.prepare(model)                                computation-invariant rewrites (rotations)
    (MBQ weighting only) one backward pass for the per-Linear / per-block modality gradients
    for stage in (vision, projector, language):          formats per component, "none" skips
        capture every block's call for every sample      capture.py (earlier stages quantized)
        for block in stage:                              one block on the device at a time
            FP pass over all samples, hooks record each LinearGroup's input   records.py
            method(block, groups) -> quantized weights (+ equalization scales, online
                                     transforms; FlatQuant also trains on the block output)  methods/
            swap the Linears for modaq modules
            quantized pass -> the next block's inputs; block / Linear errors -> report

So each block is calibrated on inputs that carry the quantization error of everything before it
(as in AWQ / GPTQ).  With language_calibration='text' the decoder stage runs on the samples
without their images (the ablation of the modality-aware rotation paper's Table 2).  Captured
activations live on the device (or the CPU with offload_activations); the model's weights stay on
the CPU except the block being calibrated and whatever runs before the current stage during a
capture.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from ..nn import QUANT_LINEARS
from .adapters import get_adapter
from .adapters.base import Adapter, Stage
from .capture import SampleTrace, capture_stage, cast_floating, move_except, to_device
from .config import QuantConfig
from .data import CalibSample
from .methods import BlockData, BlockJob, GroupJob, Method, get_method
from .methods.common import supported_reason
from .modality import ModalityStats, ModalityWeights
from .records import InputRecord, OutputRecord
from .report import CalibrationResult, ErrorAccumulator
from .sensitivity import modality_gradients


class _BlockRunner:
    """Runs one block on every sample's captured call, moving offloaded tensors as needed."""

    def __init__(self, device: torch.device, store: torch.device):
        self.device, self.store = device, store

    @torch.no_grad()
    def __call__(self, block: nn.Module, index: int, traces: list[SampleTrace], hidden: list[torch.Tensor],
                 before_each=None) -> list[torch.Tensor]:
        outs = []
        for trace, h in zip(traces, hidden):
            call = trace.calls[index]
            if self.store != self.device:
                memo: dict = {}
                call = type(call)(to_device(call.args, self.device, memo), to_device(call.kwargs, self.device, memo),
                                  call.hidden_as_kwarg)
                h = h.to(self.device)
            if before_each is not None:
                before_each(trace)
            outs.append(call.run(block, h).to(self.store))
        return outs


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


class Engine:
    """Calibrates a model in place; see the module docstring.  Use `run()`."""

    def __init__(self, model: nn.Module, samples: list[CalibSample], config: QuantConfig,
                 adapter: Adapter | None = None):
        if not samples:
            raise ValueError("samples: expected at least one calibration sample")
        self.model, self.samples, self.config = model, samples, config
        self.adapter = adapter or get_adapter(model)
        self.device = config.torch_device()
        self.store = torch.device("cpu") if config.offload_activations else self.device
        self.method: Method = get_method(config.method, config)
        self.weights: ModalityWeights = config.modality_weights()
        self.result = CalibrationResult(config.method)
        self.grads: dict[str, tuple] = {}
        self.run_block = _BlockRunner(self.device, self.store)

    def run(self) -> CalibrationResult:
        start = time.perf_counter()
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        home = next(self.model.parameters()).device
        training = self.model.training
        self.model.eval().to("cpu")
        try:
            self.result.notes += self.method.prepare(self.model, self.adapter)
            if self.weights.needs_gradients:
                t = time.perf_counter()
                self.grads = modality_gradients(self.model, self.adapter, self.samples, self.device,
                                                self.config.progress, self.config.offload_weights)
                self.result.stage_seconds["sensitivity"] = time.perf_counter() - t
            stages = self.adapter.stages()
            for si, stage in enumerate(stages):
                fmt = self.config.format_for(stage.kind)
                if fmt is not None:
                    t = time.perf_counter()
                    self._stage(stages, si, fmt, *self._stage_samples(stage.kind))
                    self.result.stage_seconds[stage.kind] = time.perf_counter() - t
        finally:
            self.model.to(home).train(training)
        self.result.seconds = time.perf_counter() - start
        if cuda:
            self.result.peak_gpu_bytes = int(torch.cuda.max_memory_allocated(self.device))
        return self.result

    def _stage_samples(self, kind: str) -> tuple[list[CalibSample], list]:
        """(samples, per-sample vision masks) a stage calibrates on."""
        if kind != "language":
            return self.samples, [None] * len(self.samples)
        samples = self.samples
        if self.config.language_calibration == "text":
            samples = [self.adapter.text_only(s) for s in samples]
        return samples, [self.adapter.modality_mask(s.input_ids).reshape(-1) for s in samples]

    def _stage(self, stages: list[Stage], si: int, fmt, samples: list[CalibSample], masks: list) -> None:
        """Capture the stage's block calls (earlier stages, already quantized, run on the device;
        this and later stages' blocks stay on the CPU), then calibrate its blocks in order."""
        from tqdm.auto import tqdm

        stage = stages[si]
        later = [b for st in stages[si:] for b in st.blocks] + [self.adapter.lm_head()]
        move_except(self.model, self.device, later)
        traces = capture_stage(self.model, stage, samples, self.device, self.store, masks)
        self.model.to("cpu")
        hidden = [tr.hidden for tr in traces]
        for bi in tqdm(range(len(stage.blocks)), desc=f"{stage.kind} blocks", disable=not self.config.progress):
            hidden = self._block(stage, bi, fmt, traces, hidden)

    # -------------------------------------------------------------------------- block

    def _attach(self, stage: Stage, bi: int, block: nn.Module, fmt, group_size):
        """Recorders on every quantizable LinearGroup of the block -> (jobs, hook handles)."""
        cfg = self.config
        per_call = cfg.max_search_tokens / (len(self.samples) * (1 if stage.all_vision else 2))
        gen = torch.Generator().manual_seed(cfg.seed + bi)
        jobs, handles = [], []
        for g in self.adapter.groups(stage, block):
            members = {n: block.get_submodule(n) for n in g.linears}
            ok = {}
            frozen = {}
            for n, lin in members.items():
                why = supported_reason(lin, fmt, group_size)
                (frozen if why else ok)[n] = lin
                if why:
                    self.result.skipped[f"{stage.names[bi]}.{n}"] = why
            if not ok:
                continue
            first = next(iter(members.values()))
            rec = InputRecord(first.in_features, max(1, math.ceil(per_call)), self.method.needs_gram,
                              self.store, gen)
            handles.append(first.register_forward_hook(rec.hook))
            outs = {n: OutputRecord(rec) for n in ok}
            handles += [ok[n].register_forward_hook(o.hook) for n, o in outs.items()]
            jobs.append((g, ok, frozen, rec, outs))
        return jobs, handles

    def _coefficients(self, block_name: str, name: str, rec: InputRecord, out: OutputRecord):
        gv, gt = self.grads.get(f"{block_name}.{name}", (None, None))
        stats = ModalityStats(rec.count[True], rec.count[False], out.mean_scale(True), out.mean_scale(False), gv, gt)
        return self.weights.coefficients(stats)

    def _block_data(self, block_name: str, bi: int, traces: list[SampleTrace], hidden: list[torch.Tensor],
                    fp_out: list[torch.Tensor]) -> BlockData:
        """The block's samples for methods that train on its output, and the (a_v, a_t) of its
        loss from the FP output's per-modality scales (or the block's MBQ gradients)."""
        def run(block: nn.Module, i: int, dtype: torch.dtype | None = None) -> torch.Tensor:
            call, h = traces[i].calls[bi], hidden[i]
            if self.store != self.device:
                call = type(call)(to_device(call.args, self.device), to_device(call.kwargs, self.device),
                                  call.hidden_as_kwarg)
                h = h.to(self.device)
            if dtype is not None:
                call = type(call)(cast_floating(call.args, dtype), cast_floating(call.kwargs, dtype),
                                  call.hidden_as_kwarg)
                h = h.to(dtype)
            return call.run(block, h)

        count, scale = {True: 0, False: 0}, {True: 0.0, False: 0.0}
        for trace, y in zip(traces, fp_out):
            y = y.float().reshape(-1, y.shape[-1])
            phi = y.norm(dim=-1) / y.shape[-1]  # the paper's eq. 9
            vis = torch.ones_like(phi, dtype=torch.bool) if trace.vision_mask is None \
                else trace.vision_mask.reshape(-1).to(phi.device)
            for flag in (True, False):
                count[flag] += int((vis == flag).sum())
                scale[flag] += float(phi[vis == flag].sum())
        gv, gt = self.grads.get(block_name, (None, None))
        stats = ModalityStats(count[True], count[False], scale[True] / max(count[True], 1),
                              scale[False] / max(count[False], 1), gv, gt)
        return BlockData(run, fp_out, [tr.vision_mask for tr in traces], self.weights.coefficients(stats))

    def _block(self, stage: Stage, bi: int, fmt, traces: list[SampleTrace], hidden: list[torch.Tensor]):
        block, block_name = stage.blocks[bi], stage.names[bi]
        group_size = self.config.group_size_for(fmt)
        block.to(self.device)
        jobs, handles = self._attach(stage, bi, block, fmt, group_size)

        def set_mask(trace):
            for *_, rec, _ in jobs:
                rec.vision_mask = trace.vision_mask
        try:
            fp_out = self.run_block(block, bi, traces, hidden, set_mask)
        finally:
            for h in handles:
                h.remove()
        group_jobs = [GroupJob(g, ok, rec, {n: self._coefficients(block_name, n, rec, outs[n]) for n in ok}, frozen)
                      for g, ok, frozen, rec, outs in jobs]
        originals = {n: (lin.weight.detach().clone(), None if lin.bias is None else lin.bias.detach().clone())
                     for gj in group_jobs for n, lin in gj.linears.items()}
        data = self._block_data(block_name, bi, traces, hidden, fp_out) if self.method.needs_block_data else None
        plans = self.method.run(BlockJob(block, fmt, group_size, group_jobs, self.config, block_name, data))
        cls = QUANT_LINEARS[fmt.name]
        for name, plan in plans.items():
            lin = block.get_submodule(name)
            _set_submodule(block, name, cls.from_quantized(plan.weight, lin.bias, group_size=group_size,
                                                           smooth=plan.smooth, rotation=plan.rotation,
                                                           dtype=lin.weight.dtype,
                                                           act_clip_ratio=plan.act_clip_ratio))
            if plan.rotation is not None:
                r = plan.rotation
                self.result.transforms[f"{block_name}.{name}"] = (
                    f"hadamard {r.size}" if r.kind == "hadamard" else f"kron {r.left.shape[0]}x{r.right.shape[0]}")
        self._layer_errors(stage, block, block_name, group_jobs, plans, originals)
        q_out = self.run_block(block, bi, traces, hidden)
        acc = ErrorAccumulator()
        for trace, y, yq in zip(traces, fp_out, q_out):
            acc.add(y, yq, trace.vision_mask)
        self.result.blocks.append(acc.row(block_name, stage.kind))
        losses = getattr(self.method, "losses", {}).get(block_name)
        if losses is not None:
            self.result.block_losses[block_name] = vars(losses)
        block.to("cpu")
        return q_out

    @torch.no_grad()
    def _layer_errors(self, stage, block, block_name, group_jobs, plans, originals) -> None:
        """Each Linear's own error on its recorded inputs: FP x W^T + b against the module on
        x / input_scale, rescaled by the scale folded into its output rows (it may be a producer)."""
        out_scale = {gj.group.producer: plans[n].input_scale for gj in group_jobs for n in gj.linears
                     if gj.group.producer_kind == "linear" and plans[n].input_scale is not None}
        for gj in group_jobs:
            x = gj.record.x.to(originals[next(iter(gj.linears))][0].device)
            for name in gj.linears:
                w, b = originals[name]
                y = torch.nn.functional.linear(x.to(w.dtype), w, b)
                s_in = plans[name].input_scale
                yq = block.get_submodule(name)(x if s_in is None else (x.float() / s_in).to(x.dtype)).float()
                if name in out_scale:
                    yq = yq * out_scale[name]
                acc = ErrorAccumulator()
                acc.add(y, yq, gj.record.vision, gj.record.importance)
                self.result.layers.append(acc.row(f"{block_name}.{name}", stage.kind))


def calibrate(model: nn.Module, samples: list[CalibSample], config: QuantConfig,
              adapter: Adapter | None = None) -> CalibrationResult:
    """Quantize `model` in place with `config` on `samples`; returns the calibration result."""
    return Engine(model, samples, config, adapter).run()
