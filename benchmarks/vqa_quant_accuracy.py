"""VQA exact match of the benchmark VLM under every modaq method x format, with the fidelity report.

    python benchmarks/vqa_quant_accuracy.py --model benchmarks/checkpoints/vqa-cpu
    python benchmarks/vqa_quant_accuracy.py --model M --methods rtn mbq --formats w4a8 w3a16 \\
        --samples 200 --calib-samples 32
    # subsets in parallel processes, then one table:
    python benchmarks/vqa_quant_accuracy.py --model M --methods rtn gptq --out-json /tmp/vqa_part0.json &
    ...
    python benchmarks/vqa_quant_accuracy.py --merge /tmp/vqa_part*.json --name h100

For each (method, format setting) of the matrix (methods: modaq.calib.config.METHODS; settings:
vqa.quant_table.FORMAT_SETTINGS) a fresh copy of the FP checkpoint is quantized by
modaq.api.quantize on `--calib-samples` dialogues of the VQA train split (modaq.calib.data Pair ->
build_samples with the model's own processor: the image plus the dialogue's questions and
answers, rendered by the chat template exactly as in training), then scored by greedy exact match
per task on the test split (`--samples`, seed `--test-seed`) with the same code as the FP model
(vqa/evaluate.py).  Fidelity: KL(FP || quantized) of next-token distributions on the text
positions of `--kl-samples` held-out val dialogues (modaq.api.text_kl) and the calibrator's
mean relative block errors per stage and modality (CalibrationResult).

Combinations the calibrator rejects (QuantConfig raises: flatquant on weight-only formats) and
SmoothQuant without activation quantization are recorded as skipped with the reason; a
combination that fails while running is recorded with its error and the run goes on.  Writes
<results-dir>/vqa_quant_accuracy_<name>.json (rewritten after every combination) and .md, or
only the partial JSON given by --out-json; --merge combines partial (or final) JSONs into one table.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch
import transformers
from PIL import Image

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import modaq  # noqa: E402
from benchmarks.eval_vqa import load, scene_for  # noqa: E402
from benchmarks.vqa.data import VQASample, generate_dialogues, generate_samples  # noqa: E402
from benchmarks.vqa.evaluate import TEST_SEED, evaluate  # noqa: E402
from benchmarks.vqa.model import EOS_TOKEN, PROMPT_TEMPLATE  # noqa: E402
from benchmarks.vqa.quant_table import (FORMAT_SETTINGS, markdown, merge_partials, read_partial,  # noqa: E402
                                        with_delta, write_partial)
from modaq.api import quantize, text_kl  # noqa: E402
from modaq.calib.config import COMPONENTS, METHODS, QuantConfig  # noqa: E402
from modaq.calib.data import CalibSample, Pair, build_samples  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------- calibration data

def dialogue_pair(dialogue: list[VQASample]) -> Pair:
    """The dialogue as one (image, prompt, answer) Pair whose chat-template rendering is the
    training sequence "<image> q1 answer : a1 <eos> q2 answer : a2 <eos> ...": the prompt is the
    first question, the "answer" the rest of the dialogue (the template closes it with <eos>)."""
    first, rest = dialogue[0], dialogue[1:]
    follow = "".join(f" {EOS_TOKEN} " + PROMPT_TEMPLATE.format(question=s.question).split(" ", 1)[1]
                     + f" {s.answer}" for s in rest)
    return Pair(Image.fromarray(first.image), first.answer + follow, first.question)


def dialogue_samples(processor, model, split: str, count: int, seed: int, scene) -> list[CalibSample]:
    """`count` CalibSamples, one per dialogue (one scene) of `split`."""
    dialogues = generate_dialogues(split, count, seed, scene)
    return build_samples([dialogue_pair(d) for d in dialogues], processor,
                         image_token_id=model.config.image_token_index)


# --------------------------------------------------------------------------------- one combination

def skip_reason(method: str, setting: dict) -> str | None:
    """Why (method, setting) is not run, or None.  Asks QuantConfig first (what the calibrator
    accepts), then the benchmark's own rule: SmoothQuant needs activation quantization."""
    try:
        config = QuantConfig(method=method, device="cpu", **setting)
    except ValueError as e:
        return f"calibrator rejects it: {e}"
    if method == "smoothquant" and all(f is None or f.weight_only for f in map(config.format_for, COMPONENTS)):
        return "SmoothQuant balances activation against weight quantization; this setting keeps activations FP"
    return None


def _errors(result) -> dict:
    return {"vision": result.mean_block_error("vision", "vision"),
            "projector": result.mean_block_error("projector", "vision"),
            "language_vision": result.mean_block_error("language", "vision"),
            "language_text": result.mean_block_error("language", "text")}


def run_combination(fp_model, processor, method: str, setting_name: str, data: dict, args) -> dict:
    """Quantize a copy of `fp_model`, score it; the row (status 'error' with the reason on failure)."""
    setting = FORMAT_SETTINGS[setting_name]
    row = {"method": method, "setting": setting_name, **setting}
    reason = skip_reason(method, setting)
    if reason is not None:
        return {**row, "status": "skipped", "reason": reason}
    model = None
    try:
        config = QuantConfig(method=method, samples=len(data["calib"]), device=args.device, seed=args.seed,
                             progress=False, **setting, **args.overrides)
        model = copy.deepcopy(fp_model)
        model, result = quantize(model, processor, config, data["calib"], return_result=True)
        kl = text_kl(fp_model, model, data["held_out"], config.torch_device())
        scored = evaluate(model, processor, data["test"], batch_size=args.batch_size)
        return {**row, "status": "ok", "per_task": scored["per_task"], "kl_text": kl, "errors": _errors(result),
                "calib_seconds": result.seconds, "stage_seconds": result.stage_seconds,
                "eval_seconds": scored["seconds"], "peak_gpu_bytes": result.peak_gpu_bytes,
                "skipped_linears": result.skipped, "notes": result.notes, "config": config.to_dict()}
    except Exception as e:  # noqa: BLE001 - one failing combination must not end the run
        return {**row, "status": "error", "reason": f"{type(e).__name__}: {e}"[:500],
                "traceback": traceback.format_exc()}
    finally:
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------- driver

def parse_overrides(items: list[str]) -> dict:
    """KEY=VALUE strings -> QuantConfig keyword arguments (VALUE parsed as JSON when it is JSON)."""
    fields = set(QuantConfig.__dataclass_fields__) - {"method", "format", "vision_format", "projector_format",
                                                       "samples", "device", "seed", "progress"}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set: expected KEY=VALUE with KEY one of {sorted(fields)}, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def build_header(args, model, device: torch.device) -> dict:
    return {"model": str(args.model), "scene": asdict(scene_for(model, args.model)),
            "parameters": sum(p.numel() for p in model.parameters()), "samples": args.samples,
            "test_seed": args.test_seed, "calib_samples": args.calib_samples, "calib_seed": args.seed,
            "kl_samples": args.kl_samples, "dtype": args.dtype, "overrides": args.overrides,
            "device": _device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
            "modaq": modaq.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds")}


def measure(args, out_json: Path) -> tuple[dict, dict, list[dict]]:
    """Run the requested matrix; (header, FP row, rows) is rewritten to `out_json` after every
    combination, so an interrupted run keeps what it measured (and can be --merge'd)."""
    from tqdm.auto import tqdm

    device = QuantConfig(device=args.device).torch_device()
    start = time.perf_counter()
    fp_model, processor = load(args.model, device, DTYPES[args.dtype])
    scene = scene_for(fp_model, args.model)
    data = {"calib": dialogue_samples(processor, fp_model, "train", args.calib_samples, args.seed, scene),
            "held_out": dialogue_samples(processor, fp_model, "val", args.kl_samples, args.seed, scene),
            "test": generate_samples("test", args.samples, args.test_seed, scene)}
    header = build_header(args, fp_model, device)
    scored = evaluate(fp_model, processor, data["test"], batch_size=args.batch_size)
    fp_row = {"method": "fp", "setting": "-", "status": "ok", "per_task": scored["per_task"], "kl_text": 0.0,
              "eval_seconds": scored["seconds"]}
    print(f"FP: {100 * fp_row['per_task']['all']['accuracy']:.1f}% exact match "
          f"({scored['seconds']:.1f} s for {args.samples} samples)", flush=True)
    combos = [(m, s) for m in args.methods for s in args.formats]
    rows = []
    write_partial(out_json, header, fp_row, rows)
    for method, setting in tqdm(combos, desc="method x format", disable=args.quiet):
        t = time.perf_counter()
        row = with_delta(run_combination(fp_model, processor, method, setting, data, args), fp_row)
        row["wall_seconds"] = time.perf_counter() - t
        rows.append(row)
        acc = row.get("per_task", {}).get("all", {}).get("accuracy")
        summary = (f"{100 * acc:.1f}% ({100 * row['delta_vs_fp']:+.1f}), KL {row['kl_text']:.2e}, calib "
                   f"{row['calib_seconds']:.1f} s" if row["status"] == "ok" else f"{row['status']}: {row['reason']}")
        tqdm.write(f"{method:>11} x {setting:<14} {summary} [{row['wall_seconds']:.1f} s]")
        header["wall_seconds"] = time.perf_counter() - start
        write_partial(out_json, header, fp_row, rows)
    return header, fp_row, rows


def write_table(results_dir: Path, name: str, header: dict, fp_row: dict, rows: list[dict],
                notes: list[str] = ()) -> str:
    results_dir.mkdir(parents=True, exist_ok=True)
    payload = {"header": header, "fp": fp_row, "rows": rows, "notes": list(notes)}
    (results_dir / f"vqa_quant_accuracy_{name}.json").write_text(json.dumps(payload, indent=1))
    text = markdown(header, fp_row, rows, notes)
    (results_dir / f"vqa_quant_accuracy_{name}.md").write_text(text)
    return text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path(__file__).resolve().parent / "checkpoints" / "vqa-cpu")
    p.add_argument("--name", help="result file suffix (default: the model dir name minus 'vqa-')")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--formats", nargs="+", default=list(FORMAT_SETTINGS), choices=list(FORMAT_SETTINGS))
    p.add_argument("--samples", type=int, default=1000, help="test samples")
    p.add_argument("--test-seed", type=int, default=TEST_SEED)
    p.add_argument("--calib-samples", type=int, default=128, help="train-split calibration dialogues")
    p.add_argument("--kl-samples", type=int, default=32, help="held-out val dialogues for the KL")
    p.add_argument("--seed", type=int, default=0, help="calibration / held-out data and QuantConfig seed")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="QuantConfig field for every combination, e.g. flat_epochs=5 (repeatable)")
    p.add_argument("--out-json", type=Path, help="write only this partial result JSON (for --merge)")
    p.add_argument("--merge", type=Path, nargs="+", metavar="PARTIAL", help="combine partial JSONs; run nothing")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for name in ("samples", "calib_samples", "kl_samples", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a positive int, got {getattr(args, name)}")
    try:
        args.overrides = parse_overrides(args.overrides)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge:
        header, fp_row, rows, notes = merge_partials([read_partial(f) for f in args.merge], METHODS)
        name = args.name or Path(header["model"]).name.removeprefix("vqa-")
        print(write_table(args.results_dir, name, header, fp_row, rows, notes))
        for note in notes:
            print("note:", note)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.name or args.model.name.removeprefix("vqa-")
    header, fp_row, rows = measure(args, args.out_json or args.results_dir / f"vqa_quant_accuracy_{name}.json")
    if args.out_json:
        print(f"partial result: {args.out_json} ({len(rows)} rows); combine with --merge")
        print(markdown(header, fp_row, rows))
        return 0
    print(write_table(args.results_dir, name, header, fp_row, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
