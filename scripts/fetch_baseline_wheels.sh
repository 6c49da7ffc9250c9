#!/usr/bin/env bash
# Download the third-party baselines of benchmarks/baselines.py (gemlite, torchao) into .wheels/
# (git-ignored) on a machine with network, to carry to the offline device machine and install
# there with:  python3 -m pip install --no-deps --no-build-isolation .wheels/*
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps -d .wheels "gemlite==0.6.0.post2" "torchao==0.18.0"
