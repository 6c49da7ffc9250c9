"""Helpers of benchmarks/bench_calibration.py (processors for the random-weight models, resource monitor)."""
