"""Timing of one step function: CUDA-graph replay on the GPU, a host timer on the CPU.

GPU: the step runs `warmup` times eagerly on a side stream (lazy initialization, the int GEMM's
tile autotuning, cuBLAS workspaces), once more under torch.cuda.set_sync_debug_mode('error')
(a host synchronization would break capture; this names the op instead), is captured into one
CUDA graph, and the graph's output is compared with the last eager output.  Each timed
replay batch is `before()` (outside the graph: e.g. rewinding the KV cache), then `steps`
back-to-back replays between two CUDA events; the result is the median over batches of
(batch time / steps).  If the sync check or the capture fails, the same loop times the eager
step and the row says so (mode 'eager' and the reason).  Peak memory is
torch.cuda.max_memory_allocated over the whole measurement (warm-up, capture, replays).

CPU (--dry-run): warm-up, then the same batches timed with perf_counter (mode 'host');
optionally torch.compile(fullgraph=True, backend='eager') first, which fails on the
data-dependent Python control flow (.item(), .tolist(), tensor-valued ifs) that would also
break CUDA-graph capture: the CPU proxy for capture safety.
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Callable

import torch


def describe(e: BaseException, limit: int = 300) -> str:
    """'Type: first line of the message' (for result rows)."""
    first = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {first[:limit]}"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _nothing() -> None:
    return None


class Timer:
    """Median milliseconds per step of a zero-argument step function (see module docstring)."""

    def __init__(self, device: str, replays: int, warmup: int = 2, check_graph_breaks: bool = False):
        if replays < 1 or warmup < 1:
            raise ValueError(f"replays / warmup: expected >= 1, got {replays} / {warmup}")
        self.device, self.replays, self.warmup = device, replays, warmup
        self.check_graph_breaks = check_graph_breaks

    def __call__(self, fn: Callable[[], torch.Tensor | None], steps: int = 1,
                 before: Callable[[], None] | None = None, compare: bool = True) -> dict:
        before = before or _nothing
        if self.device == "cpu":
            return self._host(fn, steps, before)
        return self._cuda(fn, steps, before, compare)

    # ------------------------------------------------------------------ CPU

    def _host(self, fn, steps, before) -> dict:
        out = {"mode": "host", "steps": steps, "replays": self.replays}
        before()
        fn()
        if self.check_graph_breaks:
            out["graph_breaks"] = _graph_break_check(fn, before)
        times = []
        for _ in range(self.replays):
            before()
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            times.append((time.perf_counter() - t) * 1e3 / steps)
        out["ms"] = statistics.median(times)
        return out

    # ------------------------------------------------------------------ GPU

    def _cuda(self, fn, steps, before, compare) -> dict:
        out = {"mode": "cuda_graph", "steps": steps, "replays": self.replays}
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                before()
                eager_out = fn()
        torch.cuda.current_stream().wait_stream(side)
        reference = eager_out.detach().clone() if compare and isinstance(eager_out, torch.Tensor) else None
        graph, reason = None, _sync_check(fn, before)
        if reason is None:
            graph, graph_out, reason = _capture(fn, before)
        if graph is None:
            out.update(mode="eager", capture_failed=reason)
            print(f"    capture not possible, timing eager steps: {reason}", flush=True)
        elif reference is not None and isinstance(graph_out, torch.Tensor):
            before()
            graph.replay()
            out["graph_vs_eager_rel_err"] = rel_err(graph_out, reference)
        run = graph.replay if graph is not None else fn
        times = []
        for _ in range(self.replays):
            before()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / steps)
        out["ms"] = statistics.median(times)
        out["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
        del graph, run
        gc.collect()
        torch.cuda.empty_cache()
        return out


def _sync_check(fn, before) -> str | None:
    """None, or the error of the first host synchronization inside one eager step."""
    before()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    except RuntimeError as e:
        if "synchroniz" not in str(e):
            raise
        return f"host synchronization in the step: {str(e).splitlines()[0][:200]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    return None


def _capture(fn, before):
    """(graph, its output, None) or (None, None, reason)."""
    before()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            graph_out = fn()
    except Exception as e:  # noqa: BLE001  (report it; time the eager step instead)
        try:
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001
            pass
        return None, None, f"capture failed: {describe(e, 200)}"
    torch.cuda.synchronize()
    return graph, graph_out, None


def _graph_break_check(fn, before) -> str:
    """'none', or the first graph break torch.compile(fullgraph=True) reports for the step."""
    torch._dynamo.reset()
    try:
        before()
        torch.compile(fn, fullgraph=True, backend="eager")()
    except Exception as e:  # noqa: BLE001  (the break is the result)
        return describe(e, 200)
    finally:
        torch._dynamo.reset()
    return "none"
