"""The `modaq` command line: help, demo, quantize + inspect on a built-in tiny model, errors."""
import json
import subprocess
import sys

import pytest
import torch

from modaq import api, cli
from modaq.calib import demo


pytestmark = pytest.mark.usefixtures("one_thread")


def test_help_documents_every_command():
    out = subprocess.run([sys.executable, "-m", "modaq.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("quantize", "demo", "inspect"):
        assert command in out
    q = cli.build_parser().parse_args(["quantize", "--model", "m", "--out", "o"])
    assert (q.method, q.format, q.vision_format, q.samples, q.group_size) == ("mbq", "w4a8", None, 128, 128)


def test_demo_runs_and_prints_the_fidelity_table(tmp_path, capsys):
    path = tmp_path / "demo.json"
    assert cli.main(["demo", "--methods", "rtn,mbq", "--samples", "4", "--json", str(path), "--no-vqa"]) == 0
    out = capsys.readouterr().out
    assert "KL text" in out and "mbq" in out and "KL vs RTN" in out
    data = json.loads(path.read_text())
    assert set(data["results"]) == {"rtn", "mbq"}
    assert all(r["kl_text"] > 0 for r in data["results"].values())


@pytest.mark.skipif(demo.vqa_checkout() is None, reason="needs the checkout's benchmarks/checkpoints/vqa-cpu")
def test_demo_scores_the_trained_vqa_model_when_the_checkout_has_it(capsys):
    assert cli.main(["demo", "--methods", "rtn", "--samples", "4", "--format", "w4a4", "--vision-format", "w4a4"]) == 0
    out = capsys.readouterr().out
    assert "VQA exact match of the trained CPU benchmark VLM" in out and "setting w4a4" in out
    fp = next(line for line in out.splitlines() if line.startswith("| fp |"))
    rtn = next(line for line in out.splitlines() if line.startswith("| rtn | W4A4 |"))
    assert float(fp.split("|")[8]) >= 90.0  # the trained model's FP exact match over all tasks
    assert rtn.split("|")[-2].strip() == "ok"


def test_quantize_then_inspect_a_tiny_model(tmp_path, capsys):
    out_dir = tmp_path / "q"
    report = tmp_path / "report.json"
    code = cli.main(["quantize", "--model", "tiny:qwen2_vl", "--method", "smoothquant", "--format", "w4a8",
                     "--vision-format", "w8a8", "--calib", "synthetic", "--samples", "3", "--out", str(out_dir),
                     "--report", str(report), "--quiet"])
    assert code == 0
    meta = api.read_quant_config(out_dir)
    assert meta["formats"] == {"vision": "w8a8", "projector": "w8a8", "language": "w4a8"}
    report_data = json.loads(report.read_text())
    assert meta["method"] == "smoothquant" and report_data["layers"] and report_data["kl_text"] > 0
    assert cli.main(["inspect", str(out_dir)]) == 0
    assert "smoothquant" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["quantize", "--model", "tiny:blip", "--out", "x"], "family: expected one of"),
    (["quantize", "--model", "tiny:llava", "--out", "x", "--calib", "coco:/nonexistent.json,/tmp"], "/nonexistent.json"),
    (["quantize", "--model", "tiny:llava", "--out", "x", "--group-size", "96"], "group_size: expected one of"),
    (["demo", "--samples", "0"], "samples: expected a positive int"),
    (["inspect", "/nonexistent_dir"], "quant_config.json"),
])
def test_bad_input_gives_a_clear_error(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_choice_is_rejected_by_argparse():
    with pytest.raises(SystemExit):
        cli.main(["quantize", "--model", "m", "--out", "o", "--method", "spinquant"])
