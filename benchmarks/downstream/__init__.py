"""Helpers of `benchmarks/downstream.py`: the issue-8 protocol (split, baselines, segmenter, metrics, report).

`benchmarks/downstream.py` is the entry script; with `benchmarks/` on `sys.path` (as when that script runs)
this package is importable as `downstream`.
"""
