"""Build: the install works without nvcc (one clear line), and with nvcc modaq._C is importable
on a machine without a GPU (static CUDA runtime, no libtorch dependency)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def setup_py_stderr(env_update):
    env = {**os.environ, **env_update}
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("modaq")
    return proc.stderr


def test_no_cuda_switch_skips_the_extension_with_one_line():
    err = setup_py_stderr({"MODAQ_NO_CUDA": "1"})
    assert [ln for ln in err.splitlines() if ln.startswith("modaq:")] == [
        "modaq: MODAQ_NO_CUDA=1, skipping the CUDA extension (Triton / reference backends only)"]


def test_missing_nvcc_is_reported_not_fatal(tmp_path):
    err = setup_py_stderr({"PATH": str(tmp_path), "CUDA_HOME": str(tmp_path), "CUDACXX": ""})
    assert "modaq: nvcc not found, building without the CUDA extension modaq._C" in err


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="built only where nvcc exists")
def test_extension_imports_without_a_gpu():
    from modaq import _C
    assert hasattr(_C, "quantize_act")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="built only where nvcc exists")
def test_extension_checks_its_arguments_before_touching_a_gpu():
    """The raw-pointer entry points reject bad sizes with a ValueError naming the argument
    (nothing reaches a kernel), also on a machine without a GPU."""
    from modaq import _C
    assert hasattr(_C, "int_gemv") and hasattr(_C, "quantize_act_hadamard")
    gemv = dict(x=0, x_scale=0, qweight=0, w_scale=0, bias=0, bias_dtype=0, y=0, N=16, K=64, out_dtype=0,
                warps=0, device=0, stream=0)
    with pytest.raises(ValueError, match="M must be in 1..16"):
        _C.int_gemv(M=17, a_bits=8, w_bits=4, **gemv)
    with pytest.raises(ValueError, match="a_bits, w_bits"):
        _C.int_gemv(M=1, a_bits=4, w_bits=8, **gemv)
    with pytest.raises(ValueError, match="K must be"):
        _C.int_gemv(M=1, a_bits=8, w_bits=4, **{**gemv, "K": 24})
    woq = dict(x=0, qweight=0, scales=0, zeros=0, bias=0, bias_dtype=0, y=0, M=1, N=16, bits=3, dtype=0, splits=0,
               device=0, stream=0)
    with pytest.raises(ValueError, match="multiple of group_size"):
        _C.weight_only_gemv(K=192, group_size=128, **woq)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        _C.quantize_act_hadamard(0, 0, 0, 0, 0, 0, 0, M=4, m=1, p=4096, bits=3, dtype=0, device=0, stream=0)
    with pytest.raises(ValueError, match="p a power of two"):
        _C.quantize_act_hadamard(0, 0, 0, 0, 0, 0, 0, M=4, m=1, p=96, bits=8, dtype=0, device=0, stream=0)
