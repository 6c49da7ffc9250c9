"""benchmarks/baselines.py (gemlite / torchao layers for bench_int_gemm): the int4 format mapping,
missing packages reported instead of raised, and the report's table of third-party layers."""
import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import baselines  # noqa: E402
from modaq import formats  # noqa: E402


def test_hqq_int4_reproduces_the_symmetric_weights():
    w = torch.randn(12, 256)
    q, s = formats.quantize_weight_sym(w, 4)
    u, scales, zeros = baselines.hqq_int4(q, s)
    assert u.dtype == torch.uint8 and int(u.min()) >= 1 and int(u.max()) <= 15
    assert scales.shape == (12, 1) and zeros.shape == (12, 1)
    assert torch.equal((u.float() - zeros) * scales, q.float() * s[:, None])


def test_hqq_int4_rejects_bad_codes():
    with pytest.raises(ValueError, match="q4"):
        baselines.hqq_int4(torch.full((2, 8), 8, dtype=torch.int8), torch.ones(2))
    with pytest.raises(ValueError, match="s4"):
        baselines.hqq_int4(torch.zeros(2, 8, dtype=torch.int8), torch.ones(3))


def test_missing_packages_are_reported_not_raised(monkeypatch):
    real_import = __import__

    def no_baselines(name, *args, **kwargs):
        if name.split(".")[0] in baselines.NAMES:
            raise ModuleNotFoundError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", no_baselines)
    q = torch.zeros(4, 128, dtype=torch.int8)
    out = baselines.layers(baselines.NAMES, q, torch.ones(4), q, torch.ones(4))
    assert set(out) == {"gemlite_w4a8_layer", "gemlite_w8a8_layer", "torchao_w8a8_layer"}
    assert all(isinstance(v, str) and "ModuleNotFoundError" in v for v in out.values())
    assert baselines.version("gemlite").startswith("unavailable: ModuleNotFoundError")


def test_report_lists_the_third_party_layers():
    from benchmarks.bench_int_gemm import markdown
    row = {"K": 3584, "N": 18944, "M": 1024, "fp16_linear": {"us": 100.0, "tops": 1.0, "speedup_vs_fp16": 1.0},
           "w4a8_layer": {"us": 80.0, "tops": 1.0, "speedup_vs_fp16": 1.25},
           "gemlite_w4a8_layer": {"us": 90.0, "tops": 1.0, "speedup_vs_fp16": 1.11, "rel_err": 0.03},
           "torchao_w8a8_layer": {"error": "RuntimeError: no kernel"}}
    res = {"device": "GPU", "torch": "t", "triton": "t", "date": "d", "copy_gbps": 1.0, "gemm": [row], "quant": [],
           "baselines": {"gemlite": "0.6.0", "torchao": "0.18.0"}}
    text = markdown(res)
    assert "## Third-party layers" in text and "0.6.0" in text
    assert "| 3584x18944 | 1024 | 100.0 | 80.0 (1.25x) | n/a | 90.0 (1.11x; 3.0e-02) | error: RuntimeError: no kernel |" in text


def test_report_marks_eager_timed_layers_and_shapes_parse():
    import argparse

    import pytest

    from benchmarks.bench_int_gemm import _shape_list, markdown
    row = {"K": 1152, "N": 4304, "M": 16, "fp16_linear": {"us": 10.0, "tops": 1.0, "speedup_vs_fp16": 1.0},
           "torchao_w8a8_layer": {"us": 40.0, "tops": 1.0, "speedup_vs_fp16": 0.25, "rel_err": 0.01,
                                  "timing": "eager"}}
    res = {"device": "GPU", "torch": "t", "triton": "t", "date": "d", "copy_gbps": 1.0, "gemm": [row], "quant": [],
           "baselines": {"torchao": "0.18.0"}}
    text = markdown(res)
    assert "| 1152x4304 | 16 | 10.0 | n/a | n/a | 40.0 (0.25x; 1.0e-02; eager) |" in text
    assert "## GEMM (TOPS" not in text and "## quantize_act" not in text  # --layers-only, --no-quant
    assert _shape_list("3584x4608,1152X4304") == [(3584, 4608), (1152, 4304)]
    with pytest.raises(argparse.ArgumentTypeError, match="KxN"):
        _shape_list("3584-4608")
