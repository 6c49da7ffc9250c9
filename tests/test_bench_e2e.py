"""benchmarks/bench_e2e.py: the --dry-run end to end (every format's swap, ViT / prefill / decode
steps with the static cache, the table writer), the step functions' correctness and capture
safety (no graph breaks), the configs against the published model sizes, and the target logic."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.e2e import models, report, steps  # noqa: E402
from benchmarks.e2e.timing import _graph_break_check  # noqa: E402
from modaq import api, formats  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

DECODER_COLUMNS = ("fp16", "w3a16", "w4a16", "w4a8", "w4a4_rot")
VISION_COLUMNS = ("fp16", "w8a8", "w4a8")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_e2e.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "e2e_cpu_dry_run.json").read_text()), (out / "e2e_cpu_dry_run.md").read_text(), proc.stdout


def test_dry_run_times_every_stage_and_format(dry_run):
    data, _, _ = dry_run
    assert not data["skipped"]
    rows = {(r["model"], r["stage"], r["size"], r["format"]): r for r in data["rows"]}
    assert all("error" not in r and r["mode"] == "host" and r["ms"] > 0 for r in rows.values())
    for family in models.FAMILIES:
        for vi in models.vision_inputs(family, tiny=True):
            assert {f for (m, s, z, f) in rows if (m, s, z) == (family, "vit", vi.label)} == set(VISION_COLUMNS)
        for seq in data["meta"]["sizes"]["prefill"]:
            got = {f for (m, s, z, f) in rows if (m, s, z) == (family, "prefill", f"{seq} tok")}
            assert got == set(DECODER_COLUMNS)
        for b in data["meta"]["sizes"]["batches"]:
            got = [r for k, r in rows.items() if k[:3] == (family, "decode", f"b{b} (ms/token)")]
            assert {r["format"] for r in got} == set(DECODER_COLUMNS) | {"no_linear"}  # + the floor diagnostic
            assert all(r["steps"] == data["meta"]["sizes"]["steps"] for r in got)
        assert not any(k[0] == family and k[1] == "prefill" and k[3] == "no_linear" for k in rows)
        assert all(r["speedup_vs_fp16"] > 0 for k, r in rows.items() if k[0] == family and k[3] != "fp16")


def test_dry_run_checks_decode_and_vision_against_the_hf_forward(dry_run):
    data, _, _ = dry_run
    checks = data["checks"]
    decode = {k: v for k, v in checks.items() if k.endswith("decode_vs_full_forward_rel_err")}
    assert len(decode) == len(models.FAMILIES) * len(DECODER_COLUMNS)
    assert all(isinstance(v, float) and v < 5e-3 for v in decode.values()), decode
    vision = {k: v for k, v in checks.items() if k.endswith("vision_block_loop_vs_hf_rel_err")}
    assert len(vision) == 2 * len(VISION_COLUMNS) and all(v < 1e-3 for v in vision.values()), vision


def test_dry_run_weights_targets_and_table(dry_run):
    data, md, stdout = dry_run
    for family in models.FAMILIES:
        w = data["weights"][family]
        assert set(w) == set(DECODER_COLUMNS)
        assert all(w[f]["decoder_linear_bytes"] < w["fp16"]["decoder_linear_bytes"] for f in DECODER_COLUMNS[1:])
    assert len(data["targets"]) == 5 * len(models.FAMILIES)
    assert all(t["pass"] in (True, False) for t in data["targets"])  # every target measured in the dry run
    assert len([line for line in stdout.splitlines() if line.startswith(("OK ", "MISS "))]) == len(data["targets"])
    for label in ("FP16 ms", "W3A16 ms", "W4A16 ms", "W4A8 ms", "W4A4+rot ms", "W8A8 ms",
                  "ViT prefill", "LLM prefill", "decode b1", "decoder Linear weights", "## Targets"):
        assert label in md


def test_configs_match_the_published_model_sizes():
    # Qwen2-VL-7B-Instruct: 8.29B parameters; llava-onevision-qwen2-7b-ov-hf: 8.03B (model cards)
    for family, published in (("qwen2_vl", 8.29e9), ("llava_onevision", 8.03e9)):
        model = models.build(family, "meta", torch.float16)
        n = sum(p.numel() for p in model.parameters())
        assert abs(n - published) / published < 0.005, (family, n)


def _tiny(family, fmt=None, vision=None, rotate=None):
    model = models.build(family, "cpu", torch.float16, tiny=True)
    if fmt or vision:
        api.quantize_rtn_(model, fmt, vision_format=vision, rotation="hadamard" if rotate else None,
                          rotation_layers=rotate)
    return model, models.parts(model)


@pytest.mark.parametrize("family", models.FAMILIES)
def test_steps_trace_without_graph_breaks(family):
    """torch.compile(fullgraph=True) fails where a host sync would break CUDA-graph capture."""
    _, p = _tiny(family, "w4a4", "w4a8", ("o_proj", "down_proj"))
    vi = models.vision_inputs(family, tiny=True)[0]
    with torch.no_grad():
        vision, _ = steps.vision_step(p, family, vi, "cpu", torch.float16)
        decode = steps.DecodeStep(p, 2, 4, 2, "cpu")
        assert _graph_break_check(vision, lambda: None) == "none"
        assert _graph_break_check(steps.prefill_step(p, 8, "cpu"), lambda: None) == "none"
        assert _graph_break_check(decode, decode.rewind) == "none"


def test_decode_step_advances_the_cache_and_rewinds():
    _, p = _tiny("qwen2_vl", "w3a16")
    step = steps.DecodeStep(p, 2, 5, 3, "cpu")
    with torch.no_grad():
        step.rewind()
        logits = step()
        assert torch.equal(step.ids[:, 0], logits.argmax(-1))
        lengths = [int(layer.cumulative_length) for layer in step.cache.layers]
        assert lengths == [6] * len(lengths)
        step()
        step.rewind()
    assert [int(layer.cumulative_length) for layer in step.cache.layers] == [5] * len(lengths)
    assert step.note == ""


def test_weight_bytes_count_the_packed_buffers():
    _, p = _tiny("llava_onevision", "w3a16")
    expected = 0
    for m in p.decoder.modules():
        if hasattr(m, "qweight"):
            shapes = formats.packed_shapes("w3a16", m.out_features, m.in_features, 128)
            expected += sum(torch.Size(s).numel() * torch.empty(0, dtype=dt).element_size()
                            for s, dt in shapes.values())
            expected += 0 if m.bias is None else m.bias.numel() * m.bias.element_size()
    assert models.linear_weight_bytes(p.decoder) == expected > 0


def test_targets_compare_against_the_same_run_fp16(tmp_path):
    meta = {"device": "test", "sizes": {"target_prefill": 1024}, "torch": "", "triton": "", "transformers": "",
            "date": "", "dtype": "float16", "method": ""}
    res = report.Results(tmp_path, meta, {"qwen2_vl": "Qwen2-VL-7B"})

    def row(stage, size, tokens, batch, fmt, ms):
        res.rows.append({"model": "qwen2_vl", "stage": stage, "size": size, "tokens": tokens, "batch": batch,
                         "format": fmt, "ms": ms, "mode": "cuda_graph"})
    row("decode", "b1", 1, 1, "fp16", 9.0)
    row("decode", "b1", 1, 1, "w3a16", 3.2)  # 2.81x: miss
    row("prefill", "1024 tok", 1024, 1, "fp16", 26.0)
    row("prefill", "1024 tok", 1024, 1, "w4a8", 20.0)  # 1.30x: ok
    row("vit", "a", 729, 1, "fp16", 10.0)
    row("vit", "a", 729, 1, "w8a8", 9.0)
    row("vit", "a", 729, 1, "w4a8", 7.5)  # best of the two: 1.33x
    res.weights["qwen2_vl"] = {"fp16": {"decoder_linear_bytes": 100}, "w4a16": {"decoder_linear_bytes": 26},
                               "w3a16": {"decoder_linear_bytes": 20}}
    got = {t["target"].split(" >=")[0]: t["pass"] for t in res.write()}
    assert got == {"decode W3A16 batch 1": False, "LLM prefill 1024 tok W4A8": True,
                   "ViT prefill W8A8 or W4A8": True, "decoder Linear weights W4A16": True,
                   "decoder Linear weights W3A16": True}
    md = (tmp_path / "e2e_test.md").read_text()
    assert "3.20 (2.81x)" in md and "7.50 (1.33x)" in md and "0.20 (5.00x smaller)" not in md


def test_no_linear_floor_reads_no_weights():
    """strip_linears leaves a decoder whose Linears are zeros of the right shape (the decode floor)."""
    from torch import nn

    block = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 4)))
    assert models.strip_linears(block) == 2
    assert not any(isinstance(m, nn.Linear) for m in block.modules())
    assert models.linear_weight_bytes(block) == 0
    y = block(torch.randn(3, 5, 8))
    assert y.shape == (3, 5, 4) and not y.any()
