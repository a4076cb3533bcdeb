"""Benchmark scripts: each prints markdown tables; run them as ``python benchmarks/<name>.py``."""
