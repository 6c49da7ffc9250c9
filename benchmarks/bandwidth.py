"""The copy-bandwidth baseline of the kernel benchmarks' "% of copy" columns."""
from __future__ import annotations

import statistics

import torch


def copy_bandwidth_gbps(device: str = "cuda", nbytes: int = 1 << 30) -> float:
    """Device-to-device copy of `nbytes`, bytes read + written over the median of 20 event-timed
    copies.  Not inside a CUDA graph: a graph turns the copy into a memcpy node that runs on a
    copy engine, which measured 2.7 TB/s on an H200 where the copy kernel reaches 4.2 TB/s."""
    if device == "cpu":
        return float("nan")
    a = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    return 2 * nbytes / statistics.median(times) / 1e9
