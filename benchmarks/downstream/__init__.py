"""Helpers of `benchmarks/downstream.py`: the few-shot downstream protocol (split, sources, segmenter over seeds,
feature-space figures, report).

`benchmarks/downstream.py` is the entry script; with `benchmarks/` on `sys.path` (as when that script runs)
this package is importable as `downstream`.
"""
