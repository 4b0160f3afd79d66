"""Benchmark suite of filtered_optax: tasks, optimizer specs, runner, report and cost benchmark.

Run from the repository root: ``python -m benchmarks run --suite quick``.
"""
