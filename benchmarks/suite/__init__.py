"""The benchmark suite: tasks, the tuning/evaluation protocol, claims, REPORT.md and
summary.json (``python -m benchmarks run --suite quick|full``)."""
