"""Resource measurement for bench_calibration: host RSS sampling and per-phase GPU peaks.

HostMemory   a daemon thread reads /proc/self/statm every `interval` s: current RSS and the
             peak since the last reset (getrusage's ru_maxrss is the process-lifetime peak only,
             so it cannot give one peak per method; the sampler can miss a spike shorter than
             the interval).
PhaseProbe   wraps the calibrator's phases while a run is in progress, so each phase gets its own
             peak GPU memory (allocated and reserved: the counters are reset when the phase
             starts) and host RSS peak:
                 sensitivity   modaq.calib.engine.modality_gradients (MBQ's gradient pass)
                 vision / projector / language   modaq.calib.engine.Engine._stage (capture +
                               block-wise calibration of that stage)
             The wrappers only time and read counters; the calibrator's code is unchanged.
"""
from __future__ import annotations

import contextlib
import os
import resource
import threading
import time

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE")
GB = 1e9


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def process_age_s() -> float:
    """Seconds since this process started (imports included): /proc/uptime minus the start time
    in /proc/self/stat (field 22, clock ticks after boot)."""
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def max_rss_bytes() -> int:
    """Process-lifetime peak RSS (getrusage; KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class HostMemory:
    """Background RSS sampler; `peak` is the largest sample since `reset()`."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def reset(self) -> None:
        self.peak = rss_bytes()

    def read(self) -> int:
        """Peak since reset, including the current value."""
        self.peak = max(self.peak, rss_bytes())
        return self.peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


def gpu_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peaks(device: torch.device) -> dict[str, float | None]:
    """{'gpu_peak_allocated_gb', 'gpu_peak_reserved_gb'} since the last reset (None on the CPU)."""
    if device.type != "cuda":
        return {"gpu_peak_allocated_gb": None, "gpu_peak_reserved_gb": None}
    torch.cuda.synchronize(device)
    return {"gpu_peak_allocated_gb": torch.cuda.max_memory_allocated(device) / GB,
            "gpu_peak_reserved_gb": torch.cuda.max_memory_reserved(device) / GB}


class PhaseProbe:
    """Per-phase wall time, GPU peaks and host RSS peak of one calibration run (see module doc).
    Phases nest (the whole calibration call holds the engine's phases): before any reset of the
    counters, their values are folded into every open phase, so an outer phase's peak covers
    its inner ones."""

    def __init__(self, device: torch.device, host: HostMemory):
        self.device, self.host = device, host
        self.phases: dict[str, dict] = {}
        self._open: list[dict] = []

    def _fold(self) -> None:
        now = {**gpu_peaks(self.device), "host_rss_peak_gb": self.host.read() / GB}
        for acc in self._open:
            for k, v in now.items():
                if v is not None:
                    acc[k] = max(acc.get(k) or 0.0, v)

    @contextlib.contextmanager
    def phase(self, name: str):
        self._fold()
        gpu_reset(self.device)
        self.host.reset()
        acc = {"gpu_peak_allocated_gb": None, "gpu_peak_reserved_gb": None, "host_rss_peak_gb": None}
        self._open.append(acc)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._fold()  # synchronizes the device first
            seconds = time.perf_counter() - t0
            self._open.pop()  # phases nest: acc is the innermost open one
            self.phases[name] = {"seconds": seconds, **acc}

    @contextlib.contextmanager
    def installed(self):
        """Wrap the engine's phases for the duration of the `with` block."""
        from modaq.calib import engine

        original_grads, original_stage = engine.modality_gradients, engine.Engine._stage
        probe = self

        def modality_gradients(*args, **kwargs):
            with probe.phase("sensitivity"):
                return original_grads(*args, **kwargs)

        def _stage(self, stages, si, *args, **kwargs):
            with probe.phase(stages[si].kind):
                return original_stage(self, stages, si, *args, **kwargs)

        engine.modality_gradients, engine.Engine._stage = modality_gradients, _stage
        try:
            yield self
        finally:
            engine.modality_gradients, engine.Engine._stage = original_grads, original_stage
