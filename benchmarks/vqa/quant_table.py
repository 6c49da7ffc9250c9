"""Rows, partial-result files and the markdown table of the VQA quantization-accuracy benchmark
(benchmarks/vqa_quant_accuracy.py): one row per method x format setting, plus the FP row.

A partial result file is {"header": {...}, "fp": row, "rows": [row, ...]}; several partials of the
same checkpoint and sample settings (subsets of the matrix run in parallel processes) merge into
one. A row: {"method", "setting", "status": "ok" | "skipped" | "error", "reason" (skipped / error),
"per_task": {task: {correct, total, accuracy}} (with "all"), "kl_text", "errors" (mean relative
block error: vision tower, projector, decoder on vision tokens, decoder on text tokens),
"calib_seconds", "eval_seconds", ...}.
"""
from __future__ import annotations

import json
from pathlib import Path

from .data import TASKS

# The format settings of the matrix: QuantConfig keyword arguments.  A uniform setting quantizes
# the vision tower, the projector and the decoder alike (QuantConfig's defaults: vision_format
# and projector_format follow format); "w4a8-vit-w8a8" is MQuant's vision W8A8 + language W4A8
# (the projector follows the vision format).
FORMAT_SETTINGS = {
    "w3a16": {"format": "w3a16"},
    "w4a16": {"format": "w4a16"},
    "w4a8": {"format": "w4a8"},
    "w4a4": {"format": "w4a4"},
    "w4a8-vit-w8a8": {"format": "w4a8", "vision_format": "w8a8"},
}
SETTING_LABELS = {"w3a16": "W3A16", "w4a16": "W4A16", "w4a8": "W4A8", "w4a4": "W4A4",
                  "w4a8-vit-w8a8": "V W8A8 + L W4A8"}
# Header keys that must agree for partial results to share one table.
COMPATIBLE_KEYS = ("model", "scene", "samples", "test_seed", "calib_samples", "calib_seed", "kl_samples",
                   "dtype", "overrides")


def accuracy(row: dict) -> float | None:
    return row["per_task"]["all"]["accuracy"] if row.get("per_task") else None


def write_partial(path: Path, header: dict, fp_row: dict, rows: list[dict]) -> None:
    """Write atomically (a reader never sees half a file while a run is in progress)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"header": header, "fp": fp_row, "rows": rows}, indent=1))
    tmp.replace(path)


def read_partial(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"merge: cannot read {path} as a partial result ({e})") from None
    if not isinstance(data, dict) or not {"header", "fp", "rows"} <= set(data):
        raise ValueError(f"merge: {path} is not a vqa_quant_accuracy partial result (needs header, fp, rows)")
    return data


def _row_order(methods: tuple[str, ...]):
    settings = list(FORMAT_SETTINGS)

    def key(row):
        m, s = row["method"], row["setting"]
        return (methods.index(m) if m in methods else len(methods), m,
                settings.index(s) if s in settings else len(settings), s)
    return key


def merge_partials(parts: list[dict], methods: tuple[str, ...]) -> tuple[dict, dict, list[dict], list[str]]:
    """(header, fp row, rows, notes) of several partials.  The header keys in COMPATIBLE_KEYS must
    agree; a (method, setting) measured twice keeps an 'ok' row over a failed one, else the later
    file's.  The FP row is the first file's (a differing FP accuracy elsewhere is noted)."""
    if not parts:
        raise ValueError("merge: expected at least one partial result")
    header, fp_row = dict(parts[0]["header"]), parts[0]["fp"]
    notes, by_key = [], {}
    for i, part in enumerate(parts):
        for key in COMPATIBLE_KEYS:
            if part["header"].get(key) != header.get(key):
                raise ValueError(f"merge: partial {i} has {key}={part['header'].get(key)!r}, partial 0 has "
                                 f"{header.get(key)!r}; only runs of the same settings share a table")
        if accuracy(part["fp"]) != accuracy(fp_row):
            notes.append(f"partial {i}: FP accuracy {accuracy(part['fp']):.4f} differs from partial 0's "
                         f"{accuracy(fp_row):.4f} (nondeterministic kernels?); the table uses partial 0's")
        for row in part["rows"]:
            key = (row["method"], row["setting"])
            old = by_key.get(key)
            if old is not None:
                notes.append(f"{key[0]} x {key[1]} measured twice; kept the "
                             f"{'earlier' if old['status'] == 'ok' and row['status'] != 'ok' else 'later'} row")
                if old["status"] == "ok" and row["status"] != "ok":
                    continue
            by_key[key] = row
    header["wall_seconds"] = sum(p["header"].get("wall_seconds", 0.0) for p in parts)
    header["parts"] = len(parts)
    rows = sorted(by_key.values(), key=_row_order(methods))
    return header, fp_row, [with_delta(r, fp_row) for r in rows], notes


def with_delta(row: dict, fp_row: dict) -> dict:
    """`row` with delta_vs_fp = its overall exact match minus the FP model's (None if not measured)."""
    acc = accuracy(row)
    return {**row, "delta_vs_fp": None if acc is None else acc - accuracy(fp_row)}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _sci(v) -> str:
    return "-" if v is None else f"{v:.2e}"


def _cells(row: dict) -> list[str]:
    tasks = [_pct(row["per_task"][t]["accuracy"]) if row.get("per_task") and t in row["per_task"] else "-"
             for t in (*TASKS, "all")]
    delta = row.get("delta_vs_fp")
    err = row.get("errors") or {}
    status = row["status"] if row["status"] == "ok" else f"{row['status']}: {row.get('reason', '')}"
    calib = row.get("calib_seconds")
    return [*tasks, "-" if delta is None else f"{100 * delta:+.1f}", _sci(row.get("kl_text")),
            _sci(err.get("vision")), _sci(err.get("projector")), _sci(err.get("language_vision")),
            _sci(err.get("language_text")), "-" if calib is None else f"{calib:.1f}",
            status.replace("|", "/").replace("\n", " ")]


def markdown(header: dict, fp_row: dict, rows: list[dict], notes: list[str] = ()) -> str:
    h = header
    lines = [f"# VQA exact match under quantization: {h['model']}", "",
             f"{h['samples']} test samples (seed {h['test_seed']}, balanced over {len(TASKS)} tasks), greedy "
             f"decoding; {h['calib_samples']} calibration dialogues from the train split (seed "
             f"{h['calib_seed']}); KL on {h['kl_samples']} held-out val dialogues. Device {h['device']}, "
             f"dtype {h['dtype']}, torch {h['torch']}, transformers {h['transformers']}, modaq {h['modaq']}, "
             f"{h['date']}. Uniform settings (W3A16 ... W4A4) quantize the vision tower, projector and "
             "decoder alike; accuracy in %, delta in points vs FP; KL = mean KL(FP || quantized) of next-token "
             "distributions on text positions (nats); err = mean relative block reconstruction error on the "
             "calibration set (ViT: vision tower, proj: projector, L-vis / L-txt: decoder on vision / text "
             "tokens); calib s = calibration wall time.", ""]
    if h.get("overrides"):
        lines += [f"QuantConfig overrides: {h['overrides']}", ""]
    cols = [*TASKS, "all", "delta", "KL text", "err ViT", "err proj", "err L-vis", "err L-txt", "calib s", "status"]
    lines += ["| method | format | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for row in [fp_row, *rows]:
        label = SETTING_LABELS.get(row["setting"], row["setting"])
        lines.append(f"| {row['method']} | {label} | " + " | ".join(_cells(row)) + " |")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
