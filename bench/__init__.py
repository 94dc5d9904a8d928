"""Benchmarks: runnable scripts that print figures (see engine_overhead.py)."""
