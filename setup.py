"""modaq build: Python package + optional CUDA extension modaq._C built by CMake.

Without nvcc (or with MODAQ_NO_CUDA=1) the install still succeeds: it prints one line and the
package runs on its Triton / reference backends.  MODAQ_CUDA_ARCHS overrides the targets
(default "80;89;90a"); MODAQ_BUILD_JOBS the parallel compile jobs.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def find_nvcc():
    for cand in (os.environ.get("CUDACXX"),
                 os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"),
                 shutil.which("nvcc")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def pybind11_cmake_dir():
    try:
        import pybind11
        return pybind11.get_cmake_dir()
    except ImportError:
        tool = shutil.which("pybind11-config")
        return subprocess.check_output([tool, "--cmakedir"], text=True).strip() if tool else None


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        archs = os.environ.get("MODAQ_CUDA_ARCHS", "80;89;90a")
        jobs = os.environ.get("MODAQ_BUILD_JOBS", str(os.cpu_count() or 2))
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_CUDA_COMPILER={self.nvcc}",
            f"-DMODAQ_CUDA_ARCHS={archs}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if pybind11_cmake_dir():
            args.append(f"-Dpybind11_DIR={pybind11_cmake_dir()}")
        if shutil.which("ninja"):
            args.append("-GNinja")
        subprocess.check_call(["cmake", str(ROOT), *args], cwd=build_dir)
        subprocess.check_call(["cmake", "--build", ".", "-j", jobs], cwd=build_dir)


def extensions():
    if os.environ.get("MODAQ_NO_CUDA") == "1":
        print("modaq: MODAQ_NO_CUDA=1, skipping the CUDA extension (Triton / reference backends only)",
              file=sys.stderr)
        return []
    nvcc = find_nvcc()
    if nvcc is None:
        print("modaq: nvcc not found, building without the CUDA extension modaq._C "
              "(Triton / reference backends only)", file=sys.stderr)
        return []
    CMakeBuild.nvcc = nvcc
    return [Extension("modaq._C", sources=[])]


setup(
    packages=find_packages("python") + ["modaq.triton_kernels"],
    package_dir={"": "python", "modaq.triton_kernels": "triton_kernels"},
    ext_modules=extensions(),
    cmdclass={"build_ext": CMakeBuild},
)
