"""benchmarks/bench_calibration.py: the --dry-run end to end (tiny Qwen2-VL and LLaVA-OneVision,
RTN and MBQ: every phase timed, per-phase memory, a working calibrated model, the tables), the
phase probe's nesting, and the processors built for the full-size configs (token ids and image
token counts of the real geometry)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_calibration import make_samples, parse_methods  # noqa: E402
from benchmarks.calibration import monitor  # noqa: E402
from benchmarks.e2e import models  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("calib")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_calibration.py"), "--dry-run", "--out", str(out),
           "--models", "qwen2_vl,llava_onevision", "--methods", "rtn,mbq", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "calibration_cpu_dry_run.json").read_text()), \
        (out / "calibration_cpu_dry_run.md").read_text()


def test_dry_run_times_every_phase_of_every_run(dry_run):
    data, _ = dry_run
    assert not data["skipped"]
    assert [(r["family"], r["method"]) for r in data["runs"]] == [
        (f, m) for f in ("qwen2_vl", "llava_onevision") for m in ("rtn", "mbq")]
    for r in data["runs"]:
        assert "error" not in r and r["check"] == "finite logits"
        expected = {"build", "to_host", "vision", "projector", "language", "calibrate", "other", "check"}
        if r["method"] == "mbq":
            expected.add("sensitivity")
        assert set(r["phases"]) == expected
        ph = r["phases"]
        inner = sum(ph[k]["seconds"] for k in ("sensitivity", "vision", "projector", "language") if k in ph)
        assert all(p["seconds"] >= 0 for p in ph.values()) and 0 < inner <= ph["calibrate"]["seconds"]
        assert all(p["host_rss_peak_gb"] > 0 and p["gpu_peak_allocated_gb"] is None
                   for k, p in ph.items() if k != "other")
        assert r["quantized_linears"] > 0 and r["skipped_linears"] == 0
        assert r["errors"]["language"]["text"] > 0 and r["errors"]["vision"]["text"] is None
        assert r["config"]["format"] == "w4a8" and r["config"]["vision_format"] == "w8a8"
    assert data["meta"]["num_samples"] == 4 and data["meta"]["device"] == "cpu-dry-run"
    for fam in ("qwen2_vl", "llava_onevision"):
        s = data["data"][fam]["samples"]
        assert 0 < s["vision_tokens_mean"] < s["seq_mean"] and s["tower_tokens_mean"] > 0


def test_dry_run_markdown(dry_run):
    _, md = dry_run
    for text in ("**4 calibration samples**", "MBQ's default is 128", "## Wall time (s) per phase",
                 "MBQ grad pass", "decoder blocks", "## Peak memory (GB) per phase", "Qwen2-VL-7B (tiny)",
                 "LLaVA-OneVision-7B (tiny)", "finite logits"):
        assert text in md


def test_parse_methods():
    assert parse_methods("rtn, mbq,mbq_w3a16") == [("rtn", "rtn", "w4a8"), ("mbq", "mbq", "w4a8"),
                                                   ("mbq_w3a16", "mbq", "w3a16")]
    for bad in ("", "foo", "mbq_w5a5"):
        with pytest.raises(ValueError, match="--methods"):
            parse_methods(bad)


def test_phase_probe_nests_peaks():
    probe = monitor.PhaseProbe(torch.device("cpu"), monitor.HostMemory())
    with probe.phase("outer"):
        with probe.phase("inner"):
            big = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
            big += 1
        del big
    assert probe.phases["outer"]["host_rss_peak_gb"] >= probe.phases["inner"]["host_rss_peak_gb"] > 0
    assert probe.phases["outer"]["seconds"] >= probe.phases["inner"]["seconds"]
    probe.host.close()


@pytest.mark.parametrize("family", models.FAMILIES)
def test_processors_match_the_full_size_configs(family):
    cfg = models.config(family)
    samples, stats = make_samples(family, cfg, 2, 448)
    ids = samples[0].input_ids
    assert int(ids.max()) < cfg.get_text_config().vocab_size
    n_image = int((ids == cfg.image_token_id).sum())
    if family == "qwen2_vl":  # 448 px: 32 x 32 patches of 14 px, 2 x 2 merge -> 256 tokens
        assert samples[0].inputs["image_grid_thw"].tolist() == [[1, 32, 32]]
        assert n_image == 256 and int((ids == cfg.vision_start_token_id).sum()) == 1
    else:  # anyres: the base image + 2 x 2 crops of 384 px, 27 x 27 patches each; the square image
        # needs no unpadding: base 729 + the 54 x 54 grid + one newline token per grid row
        assert samples[0].inputs["pixel_values"].shape[1:] == (5, 3, 384, 384)
        assert stats["tower_tokens_mean"] == 5 * 729 and n_image == 729 + 54 * 54 + 54
    assert (samples[0].labels != -100).sum() > 0


def test_time_budget_counts_the_longest_finished_run(tmp_path):
    import argparse

    from benchmarks.bench_calibration import Bench
    from benchmarks.calibration import report

    results = report.Results(tmp_path, {"device": "test"})
    host = monitor.HostMemory()
    try:
        bench = Bench(argparse.Namespace(dtype="bfloat16", time_budget_s=None), results, torch.device("cpu"), host)
        assert not bench.over_budget()
        bench.args.time_budget_s = bench.elapsed() + 100
        assert not bench.over_budget()
        results.runs.append({"seconds": 50.0})
        assert not bench.over_budget()
        results.runs.append({"seconds": 120.0})  # would end past the budget: do not start it
        assert bench.over_budget()
    finally:
        host.close()
