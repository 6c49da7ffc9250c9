"""The modality-aware rotation paper's Table 2 ablation as task accuracy on the benchmark VLM.

    python benchmarks/vqa_rotation_ablation.py --model benchmarks/checkpoints/vqa-cpu --format w4a4
    # or assemble rows measured separately (vqa_quant_accuracy.py --formats w4a4 --set KEY=VALUE ...):
    python benchmarks/vqa_rotation_ablation.py --partials /tmp/p_*.json --name cpu

Variants (the decoder's calibration data x its modality weighting; vision layers always plain):
  text-only        the decoder calibrates on the samples without images (language_calibration=text)
  multimodal       image + text samples, no weighting (modality=none)
  weighted         image + text samples, the method's modality weighting: FlatQuant's scale ratio
                   lambda_vis = beta * S_txt / S_vis (the paper's eqs. 9-15) / QuaRot with MBQ's
                   gradient weighting (MBQ(Rot))
Each row: exact match per task (test split), KL(FP || quantized) on text positions, block errors.
Writes <results-dir>/vqa_rotation_ablation_<name>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import vqa_quant_accuracy as accuracy_bench  # noqa: E402
from benchmarks.vqa.quant_table import (COMPATIBLE_KEYS, TASKS, _pct, _sci, read_partial,  # noqa: E402
                                        with_delta)

RESULTS = Path(__file__).resolve().parent / "results"
# (method, variant, QuantConfig overrides); the method's default weighting is what QuantConfig's
# modality="auto" picks: scale_ratio for flatquant, none for quarot
VARIANTS = (
    ("flatquant", "text-only", {"language_calibration": "text"}),
    ("flatquant", "multimodal", {"modality": "none"}),
    ("flatquant", "weighted (scale ratio)", {}),
    ("quarot", "text-only", {"language_calibration": "text"}),
    ("quarot", "multimodal", {}),
    ("quarot", "weighted (MBQ gradients: MBQ(Rot))", {"modality": "mbq"}),
)


def variant_of(method: str, overrides: dict) -> str | None:
    return next((name for m, name, o in VARIANTS if m == method and o == overrides), None)


def assemble(parts: list[dict], setting: str | None) -> tuple[dict, dict, list[dict]]:
    """(header, fp row, ablation rows) from vqa_quant_accuracy partials of one checkpoint."""
    header, fp_row = dict(parts[0]["header"]), parts[0]["fp"]
    rows = {}
    for i, part in enumerate(parts):
        for key in COMPATIBLE_KEYS:
            if key != "overrides" and part["header"].get(key) != header.get(key):
                raise ValueError(f"partial {i} has {key}={part['header'].get(key)!r}, partial 0 has {header.get(key)!r}")
        for row in part["rows"]:
            variant = variant_of(row["method"], part["header"].get("overrides") or {})
            if variant and row["status"] == "ok" and (setting is None or row["setting"] == setting):
                rows[(row["method"], variant)] = {**with_delta(row, fp_row), "variant": variant}
    order = [(m, v) for m, v, _ in VARIANTS]
    header.pop("overrides", None)
    return header, fp_row, [rows[k] for k in order if k in rows]


def markdown(header: dict, fp_row: dict, rows: list[dict], setting: str) -> str:
    lines = [f"# Modality-weighting ablation as VQA accuracy: {header['model']}, {setting}", "",
             f"{header['samples']} test questions (seed {header['test_seed']}), {header['calib_samples']} calibration "
             f"dialogues, KL on {header['kl_samples']} held-out dialogues; {header['device']}, torch {header['torch']}. "
             "Exact match in %, delta in points vs FP, KL(FP || quantized) on text positions, mean relative block "
             "errors of the decoder on text (L-txt) and vision (L-vis) tokens (text-only calibration has none).", "",
             "| method | decoder calibration | " + " | ".join(TASKS) + " | all | delta | KL text | L-txt err | L-vis err |",
             "|---" * (len(TASKS) + 7) + "|"]
    fp = [_pct(fp_row["per_task"][t]["accuracy"]) for t in (*TASKS, "all")]
    lines.append("| fp | - | " + " | ".join(fp) + " | - | - | - | - |")
    for r in rows:
        cells = [_pct(r["per_task"][t]["accuracy"]) for t in (*TASKS, "all")]
        err = r.get("errors") or {}
        lines.append(f"| {r['method']} | {r['variant']} | " + " | ".join(cells) +
                     f" | {100 * r['delta_vs_fp']:+.1f} | {_sci(r['kl_text'])} | {_sci(err.get('language_text'))} | "
                     f"{_sci(err.get('language_vision'))} |")
    return "\n".join(lines) + "\n"


def measure(args) -> list[dict]:
    """Run every variant through vqa_quant_accuracy (one partial per variant, in a temp dir)."""
    import tempfile

    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (method, _, overrides) in enumerate(VARIANTS):
            out = Path(tmp) / f"part{i}.json"
            argv = ["--model", str(args.model), "--methods", method, "--formats", args.format, "--device", args.device,
                    "--samples", str(args.samples), "--calib-samples", str(args.calib_samples), "--quiet",
                    "--threads", str(args.threads), "--out-json", str(out)]
            for key, value in overrides.items():
                argv += ["--set", f"{key}={value}"]
            accuracy_bench.main(argv)
            parts.append(read_partial(out))
    return parts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path(__file__).resolve().parent / "checkpoints" / "vqa-cpu")
    p.add_argument("--format", default="w4a4", help="a vqa_quant_accuracy format setting (default w4a4)")
    p.add_argument("--partials", type=Path, nargs="+", help="assemble these partial results; run nothing")
    p.add_argument("--name", help="result file suffix (default: the model dir name minus 'vqa-')")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    parts = [read_partial(f) for f in args.partials] if args.partials else measure(args)
    header, fp_row, rows = assemble(parts, args.format)
    if not rows:
        p.error(f"no ablation rows for setting {args.format!r} in the results")
    name = args.name or Path(header["model"]).name.removeprefix("vqa-")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(header, fp_row, rows, args.format)
    (args.results_dir / f"vqa_rotation_ablation_{name}.md").write_text(text)
    (args.results_dir / f"vqa_rotation_ablation_{name}.json").write_text(
        json.dumps({"header": header, "setting": args.format, "fp": fp_row, "rows": rows}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
