"""Results of bench_e2e: rows -> MBQ Table 9 style markdown + JSON, and the issue's targets.

A row is one timed step: {model, stage ('vit' | 'prefill' | 'decode'), size (label), tokens,
batch, format (a COLUMNS key), ms, mode, ...}.  `weights` holds, per model and format, the bytes
of the decoder's Linear weights and the memory resident after the build + swap.  Ratios are
always against the FP16 row of the same model, stage and size from the same run.
"""
from __future__ import annotations

import json
import pathlib

COLUMNS = [("fp16", "FP16"), ("w3a16", "W3A16"), ("w4a16", "W4A16"), ("w4a8", "W4A8"),
           ("w4a4_rot", "W4A4+rot"), ("w8a8", "W8A8"), ("no_linear", "no-Linear floor")]
STAGES = {"vit": "ViT prefill", "prefill": "LLM prefill", "decode": "decode"}
TARGETS = {
    "decode_w3a16_b1": 3.0,  # decode W3A16 at batch 1 >= 3x FP16
    "prefill_w4a8_1024": 1.3,  # LLM prefill of 1024 tokens (meta sizes target_prefill) with W4A8 >= 1.3x FP16
    "vit_w8a8_or_w4a8": 1.3,  # vision prefill with W8A8 or W4A8 (the faster) >= 1.3x FP16, every size
    "weights_w4a16": 3.5,  # decoder Linear weight bytes reduced >= 3.5x
    "weights_w3a16": 4.5,  # ... >= 4.5x
}


class Results:
    """Accumulates rows and writes e2e_<tag>.json / .md to `out` after every change."""

    def __init__(self, out: pathlib.Path, meta: dict, labels: dict[str, str]):
        self.out, self.meta, self.labels = out, meta, labels
        self.rows: list[dict] = []
        self.weights: dict[str, dict[str, dict]] = {}
        self.checks: dict[str, object] = {}
        self.skipped: list[str] = []
        self.plans: list[dict] = []

    def speedup(self, row: dict) -> float | None:
        base = self.find(row["model"], row["stage"], row["size"], "fp16")
        if base is None or not row.get("ms") or not base.get("ms"):
            return None
        return base["ms"] / row["ms"]

    def find(self, model: str, stage: str, size: str, fmt: str) -> dict | None:
        for r in self.rows:
            if (r["model"], r["stage"], r["size"], r["format"]) == (model, stage, size, fmt) and "ms" in r:
                return r
        return None

    def write(self) -> list[dict]:
        targets = self.targets()
        tag = "".join(c if c.isalnum() else "_" for c in self.meta["device"].lower()).strip("_")
        if self.meta.get("name"):
            tag = f"{self.meta['name']}_{tag}"
        self.out.mkdir(parents=True, exist_ok=True)
        for r in self.rows:
            if "ms" in r and r["format"] != "fp16":
                r["speedup_vs_fp16"] = self.speedup(r)
        payload = {"meta": self.meta, "targets": targets, "rows": self.rows, "weights": self.weights,
                   "checks": self.checks, "plans": self.plans, "skipped": self.skipped}
        (self.out / f"e2e_{tag}.json").write_text(json.dumps(payload, indent=1))
        (self.out / f"e2e_{tag}.md").write_text(self.markdown(targets))
        return targets

    # ------------------------------------------------------------------ targets

    def targets(self) -> list[dict]:
        out = []
        for model in self.labels:
            out += self._model_targets(model)
        return out

    def _model_targets(self, model: str) -> list[dict]:
        def target(key, text, measured, values):
            ok = bool(values) and all(v is not None and v >= TARGETS[key] for v in values)
            return {"target": text, "model": model, "measured": measured,
                    "pass": ok if values and all(v is not None for v in values) else None}

        rows = [r for r in self.rows if r["model"] == model and "ms" in r]
        dec = [self.speedup(r) for r in rows if (r["stage"], r["batch"], r["format"]) == ("decode", 1, "w3a16")]
        n = self.meta["sizes"]["target_prefill"]
        pre = [self.speedup(r) for r in rows if (r["stage"], r["tokens"], r["format"]) == ("prefill", n, "w4a8")]
        vit = {}
        for r in rows:
            if r["stage"] == "vit" and r["format"] in ("w8a8", "w4a8") and self.speedup(r) is not None:
                vit[r["size"]] = max(vit.get(r["size"], 0.0), self.speedup(r))
        w = self.weights.get(model, {})
        red = {f: w["fp16"]["decoder_linear_bytes"] / w[f]["decoder_linear_bytes"]
               for f in ("w4a16", "w3a16") if f in w and "fp16" in w}
        return [
            target("decode_w3a16_b1", "decode W3A16 batch 1 >= 3x FP16", _rounded(dec), dec),
            target("prefill_w4a8_1024", f"LLM prefill {n} tok W4A8 >= 1.3x FP16", _rounded(pre), pre),
            target("vit_w8a8_or_w4a8", "ViT prefill W8A8 or W4A8 >= 1.3x FP16 (every size)",
                   {k: round(v, 2) for k, v in vit.items()}, list(vit.values())),
            target("weights_w4a16", "decoder Linear weights W4A16 >= 3.5x smaller", _rounded(red.get("w4a16")),
                   [red["w4a16"]] if "w4a16" in red else []),
            target("weights_w3a16", "decoder Linear weights W3A16 >= 4.5x smaller", _rounded(red.get("w3a16")),
                   [red["w3a16"]] if "w3a16" in red else []),
        ]

    # ------------------------------------------------------------------ markdown

    def markdown(self, targets: list[dict]) -> str:
        m = self.meta
        lines = [f"# End-to-end latency and memory of quantized VLMs on {m['device']}", "",
                 f"torch {m['torch']}, triton {m['triton']}, transformers {m['transformers']}, {m['date']}; "
                 f"{m['dtype']} activations; random weights from the real configs; RTN module swap "
                 "(modaq.api.quantize_rtn_).", "", m["method"], ""]
        lines += ["## Targets", "", "| model | target | measured | result |", "|---|---|---|---|"]
        for t in targets:
            res = {True: "OK", False: "MISS", None: "not measured"}[t["pass"]]
            lines.append(f"| {self.labels[t['model']]} | {t['target']} | {json.dumps(t['measured'])} | {res} |")
        for model, label in self.labels.items():
            lines += ["", f"## {label}", ""] + self._model_table(model)
        if self.skipped:
            lines += ["", "Not measured (time budget or error): " + "; ".join(self.skipped)]
        if self.checks:
            lines += ["", "Checks: " + ", ".join(f"{k} = {_fmt_check(v)}" for k, v in self.checks.items())]
        return "\n".join(lines) + "\n"

    def _model_table(self, model: str) -> list[str]:
        head = "| stage | " + " | ".join(f"{h} ms" for _, h in COLUMNS) + " |"
        lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
        seen = []
        for r in self.rows:
            key = (r["stage"], r["size"])
            if r["model"] == model and key not in seen:
                seen.append(key)
        eager = False
        for stage, size in seen:
            cells = []
            for fmt, _ in COLUMNS:
                r = self.find(model, stage, size, fmt)
                if r is None:
                    cells.append("-")
                    continue
                eager |= r.get("mode") == "eager"
                mark = "*" if r.get("mode") == "eager" else ""
                s = self.speedup(r)
                cells.append(f"{r['ms']:.2f}{mark}" + (f" ({s:.2f}x)" if s is not None and fmt != "fp16" else ""))
            lines.append(f"| {STAGES[stage]} {size} | " + " | ".join(cells) + " |")
        lines += self._memory_rows(model)
        if eager:
            lines += ["", "\\* eager timing: CUDA-graph capture was not possible (reason in the JSON row)."]
        return lines

    def _memory_rows(self, model: str) -> list[str]:
        w = self.weights.get(model, {})
        if not w:
            return []
        base = w.get("fp16", {}).get("decoder_linear_bytes")
        rows = {"decoder Linear weights (GB)": [], "resident after build + swap (GB)": [],
                "peak over LLM steps (GB)": []}
        for fmt, _ in COLUMNS:
            e = w.get(fmt)
            if e is None:
                for cells in rows.values():
                    cells.append("-")
                continue
            red = f" ({base / e['decoder_linear_bytes']:.2f}x smaller)" if base and fmt != "fp16" else ""
            rows["decoder Linear weights (GB)"].append(f"{e['decoder_linear_bytes'] / 1e9:.4g}{red}")
            rows["resident after build + swap (GB)"].append(_gb(e.get("resident_gb")))
            peaks = [r.get("peak_gb") for r in self.rows if r["model"] == model and r["format"] == fmt
                     and r["stage"] in ("prefill", "decode") and r.get("peak_gb") is not None]
            rows["peak over LLM steps (GB)"].append(_gb(max(peaks) if peaks else None))
        return [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]


def _gb(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _rounded(v):
    if isinstance(v, list):
        return [round(x, 2) for x in v if x is not None]
    return None if v is None else round(v, 2)


def _fmt_check(v) -> str:
    return f"{v:.2e}" if isinstance(v, float) else str(v)
