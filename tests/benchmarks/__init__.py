"""Benchmarks: scripts run by hand (`python tests/benchmarks/bench_*.py`), not collected by pytest."""
