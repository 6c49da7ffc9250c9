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
