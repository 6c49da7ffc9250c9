"""Results of bench_calibration: one row per (model, method) run -> calibration_<device>.json / .md.

A row holds the run's phases ({name: {seconds, gpu_peak_allocated_gb, gpu_peak_reserved_gb,
host_rss_peak_gb}}: build, to_host, sensitivity, vision, projector, language, check), the whole
calibration call's time and peaks, the block errors per stage, and an 'error' where it failed.
The markdown is rewritten after every run, so a timeout still leaves the finished runs.
"""
from __future__ import annotations

import json
import pathlib

PHASES = (("build", "build"), ("to_host", "to host"), ("sensitivity", "MBQ grad pass"),
          ("vision", "vision blocks"), ("projector", "projector"), ("language", "decoder blocks"),
          ("other", "other (moves)"), ("calibrate", "calibration total"), ("check", "check fwd"))


def device_tag(device: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in device.lower()).strip("_")


def _f(x, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _g(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


class Results:
    """Accumulates runs; `write()` rewrites the JSON and markdown files."""

    def __init__(self, out: pathlib.Path, meta: dict):
        self.out, self.meta = out, meta
        self.data: dict[str, dict] = {}  # family -> {data_s, samples: stats}
        self.runs: list[dict] = []
        self.skipped: list[str] = []

    @property
    def stem(self) -> str:
        return f"calibration_{device_tag(self.meta['device'])}"

    def write(self) -> pathlib.Path:
        self.out.mkdir(parents=True, exist_ok=True)
        payload = {"meta": self.meta, "data": self.data, "runs": self.runs, "skipped": self.skipped}
        (self.out / f"{self.stem}.json").write_text(json.dumps(payload, indent=1))
        (self.out / f"{self.stem}.md").write_text(self.markdown())
        return self.out / f"{self.stem}.json"

    def markdown(self) -> str:
        m = self.meta
        lines = [f"# Calibration time and memory ({m['device']})", "",
                 f"torch {m['torch']}, transformers {m['transformers']}, triton {m['triton']}, {m['date']}; "
                 f"weights {m['dtype']}, random (shapes from the real configs); {m['cpus']} CPU cores, "
                 f"{_f(m['host_ram_gb'])} GB host RAM" + (f", {_f(m['gpu_total_gb'])} GB GPU" if m.get("gpu_total_gb")
                                                           else "") + ".", "",
                 f"**{m['num_samples']} calibration samples** (synthetic {m['image_size']}x{m['image_size']} px "
                 f"images with captions; MBQ's default is 128: the block-wise phases and the gradient pass "
                 "scale about linearly with the sample count, the build and moves do not).", "",
                 m["method"], ""]
        if m.get("backends"):
            lines += ["modaq op backends: " + ", ".join(f"{k}: {v}" for k, v in m["backends"].items())
                      + f"; int GEMM tile tuning {'off' if m.get('int_gemm_tune') == '0' else 'on'}.", ""]
        for fam, d in self.data.items():
            s = d["samples"]
            lines.append(f"- {d['label']}: {_count(d['params'])} parameters; data {_f(d['data_s'], 2)} s; "
                         f"sequence {s['seq_mean']:.0f} tokens (max {s['seq_max']}), {s['vision_tokens_mean']:.0f} "
                         f"image tokens in the decoder, {s['tower_tokens_mean']:.0f} tokens through the vision tower "
                         "per sample")
        lines += ["", "## Wall time (s) per phase", ""]
        head = ["model", "method", "formats (lang / vision)"] + [label for _, label in PHASES]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.runs:
            ph = r.get("phases", {})
            cells = [r["label"], r["method"], f"{r['format']} / {r['vision_format']}"]
            cells += [_f(ph[k]["seconds"]) if k in ph else "-" for k, _ in PHASES]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "## Peak memory (GB) per phase: GPU allocated / GPU reserved / host RSS", ""]
        mem_phases = [(k, label) for k, label in PHASES if k not in ("other",)]
        head = ["model", "method"] + [label for _, label in mem_phases]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.runs:
            ph = r.get("phases", {})
            cells = [r["label"], r["method"]]
            for k, _ in mem_phases:
                p = ph.get(k)
                cells.append("-" if p is None or "host_rss_peak_gb" not in p else
                             f"{_f(p['gpu_peak_allocated_gb'])} / {_f(p['gpu_peak_reserved_gb'])} / "
                             f"{_f(p['host_rss_peak_gb'])}")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "## Block reconstruction error (mean relative squared error, vision / text tokens)", ""]
        head = ["model", "method", "vision blocks", "projector", "decoder blocks", "quantized Linears", "kept FP",
                "check"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.runs:
            if "errors" not in r:
                lines.append(f"| {r['label']} | {r['method']} | failed: {r.get('error', '?')} |")
                continue
            e = r["errors"]
            cells = [r["label"], r["method"]] + [
                f"{_g(e[s]['vision'])} / {_g(e[s]['text'])}" for s in ("vision", "projector", "language")]
            cells += [str(r["quantized_linears"]), str(r["skipped_linears"]), r.get("check", "-")]
            lines.append("| " + " | ".join(cells) + " |")
        if self.skipped:
            lines += ["", "Not run / failed:", ""] + [f"- {s}" for s in self.skipped]
        return "\n".join(lines) + "\n"
