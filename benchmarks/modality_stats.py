"""Measure, per decoder layer of the benchmark VLM, the two facts MBQ and the modality-aware rotation
paper build on: vision tokens and text tokens differ in activation magnitude and in sensitivity.

    python benchmarks/modality_stats.py --model benchmarks/checkpoints/vqa-cpu [--device cuda]

For each decoder layer l (input = residual stream entering the layer, output = leaving it):
  S_mod    = mean over tokens of the modality of ||h_t||_2 / d   (the rotation paper's S)
  absmax   = max |h| over the modality's tokens, and the mean per-token absmax
  |g|_mod  = mean |dL/dh| over the modality's tokens and channels (MBQ's sensitivity) at the
             layer's output and at its input (layer 0's input = the decoder's token features:
             projector outputs for vision, embeddings for text), L = cross-entropy of the answer
             tokens (the "caption" / SFT loss), teacher forced.
The last layer's output gradient on vision tokens is exactly 0 (nothing after it reads those
positions and they carry no label); its ratio prints as "-". Padding is excluded; "text" is every
non-image, non-pad position. Writes <results-dir>/modality_stats_<name>.json and .md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import transformers

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.eval_vqa import load, scene_for  # noqa: E402
from benchmarks.vqa.data import generate_samples  # noqa: E402
from benchmarks.vqa.model import IMAGE_TOKEN, training_batch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _hidden(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _magnitude(h: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """S = mean ||h_t||_2 / d, mean per-token absmax and absmax over positions where mask."""
    tokens = h.detach().float()[mask]  # (n, d)
    per_token_absmax = tokens.abs().amax(dim=1)
    return {"S": (tokens.norm(dim=1) / tokens.shape[1]).mean().item(),
            "token_absmax_mean": per_token_absmax.mean().item(), "absmax": per_token_absmax.max().item()}


def _abs_grad(h: torch.Tensor) -> torch.Tensor:
    if h.grad is None:
        raise ValueError("model: a decoder layer's hidden states got no gradient (frozen embeddings "
                         "and projector?); the caption loss must reach every layer")
    return h.grad.float().abs()


def _ratio(num: float, den: float) -> str:
    return "-" if den == 0 else f"{num / den:.1f}"


def collect_modality_stats(model, batch: dict[str, torch.Tensor], image_token_id: int) -> list[dict]:
    """One teacher-forced forward + backward of the answer loss; per-layer stats (see module doc)."""
    layers = model.model.language_model.layers
    captured, handles = {}, []

    def hook(index):
        def fn(module, args, kwargs, output):
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = _hidden(output)
            for h in (hidden_in, hidden_out):  # layer i's input is layer i-1's output tensor
                if h.requires_grad:
                    h.retain_grad()
            captured[index] = (hidden_in, hidden_out)
        return fn

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(hook(i), with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    valid = batch["attention_mask"].bool()
    vision = (batch["input_ids"] == image_token_id) & valid
    text = ~(batch["input_ids"] == image_token_id) & valid
    rows = []
    for i in range(len(layers)):
        hidden_in, hidden_out = captured[i]
        grad_out = _abs_grad(hidden_out)
        grad_in = _abs_grad(hidden_in)
        row = {"layer": i}
        for name, mask in (("vision", vision), ("text", text)):
            row[name] = {"input": _magnitude(hidden_in, mask), "output": _magnitude(hidden_out, mask),
                         "grad_abs_mean": grad_out[mask].mean().item(),
                         "grad_in_abs_mean": grad_in[mask].mean().item()}
        rows.append(row)
    model.zero_grad(set_to_none=True)
    return rows


def stats_batch(model, processor, model_dir: Path, split: str, num_samples: int, seed: int) -> dict:
    """Teacher-forced single-question batch (answer-only labels) of `split`, in the scene geometry
    the model was trained on (eval_vqa.scene_for)."""
    scene = scene_for(model, model_dir)
    samples = generate_samples(split, num_samples, seed, scene)
    return training_batch([[s] for s in samples], processor.tokenizer, model.config.image_seq_length)


def markdown_table(rows: list[dict], header: dict) -> str:
    lines = [f"# Modality statistics: {header['model']}", "",
             f"{header['samples']} {header['split']} samples (seed {header['seed']}), "
             f"{header['vision_tokens_per_sample']} vision / {header['text_tokens_per_sample']:.1f} text "
             f"tokens per sample; torch {header['torch']}, transformers {header['transformers']}, "
             f"{header['device']}, {header['date']}. S = mean ||h||_2/d per token; abs-g = mean |dL/dh| "
             "of the answer loss at the layer's input (in) and output (out).", "",
             "| layer | S_in vis | S_in txt | S_out vis | S_out txt | S_out vis/txt | absmax_out vis "
             "| absmax_out txt | abs-g_in vis | abs-g_in txt | abs-g_in txt/vis | abs-g_out vis | abs-g_out txt "
             "| abs-g_out txt/vis |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v, t = r["vision"], r["text"]
        lines.append(
            f"| {r['layer']} | {v['input']['S']:.4f} | {t['input']['S']:.4f} | {v['output']['S']:.4f} "
            f"| {t['output']['S']:.4f} | {_ratio(v['output']['S'], t['output']['S'])} "
            f"| {v['output']['absmax']:.2f} | {t['output']['absmax']:.2f} "
            f"| {v['grad_in_abs_mean']:.3e} | {t['grad_in_abs_mean']:.3e} "
            f"| {_ratio(t['grad_in_abs_mean'], v['grad_in_abs_mean'])} "
            f"| {v['grad_abs_mean']:.3e} | {t['grad_abs_mean']:.3e} "
            f"| {_ratio(t['grad_abs_mean'], v['grad_abs_mean'])} |")
    s_ratio = [r["vision"]["output"]["S"] / r["text"]["output"]["S"] for r in rows]
    g_ratio = [r["text"]["grad_in_abs_mean"] / r["vision"]["grad_in_abs_mean"] for r in rows
               if r["vision"]["grad_in_abs_mean"] > 0]
    lines += ["", f"Mean over layers: S_out vision / text = {sum(s_ratio) / len(s_ratio):.2f}; "
              + (f"abs-g_in text / vision = {sum(g_ratio) / len(g_ratio):.1f}." if g_ratio else
                 "abs-g_in text / vision: no layer has a non-zero vision gradient.")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(__file__).resolve().parent / "checkpoints" / "vqa-cpu")
    parser.add_argument("--name", help="result file suffix (default: the model dir name minus 'vqa-')")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch's default)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    model, processor = load(args.model, args.device)
    batch = {k: v.to(args.device) for k, v in stats_batch(model, processor, args.model, args.split,
                                                         args.samples, args.seed).items()}
    num_image_tokens = model.config.image_seq_length
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    rows = collect_modality_stats(model, batch, image_id)

    name = args.name or args.model.name.removeprefix("vqa-")
    device = torch.device(args.device)
    header = {"model": str(args.model), "samples": args.samples, "seed": args.seed, "split": args.split,
              "vision_tokens_per_sample": num_image_tokens,
              "text_tokens_per_sample": batch["attention_mask"].sum().item() / args.samples - num_image_tokens,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "date": datetime.date.today().isoformat(),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"modality_stats_{name}.json").write_text(json.dumps({**header, "layers": rows}, indent=1))
    table = markdown_table(rows, header)
    (args.results_dir / f"modality_stats_{name}.md").write_text(table)
    print(table)
    return 0

if __name__ == "__main__":
    sys.exit(main())
