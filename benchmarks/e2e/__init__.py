"""Helpers of benchmarks/bench_e2e.py: model configs and builds (models), the timed step
functions (steps), CUDA-graph / host timing (timing) and the results table (report)."""
