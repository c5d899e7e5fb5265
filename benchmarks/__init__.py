"""Benchmarks of resnext3d; run ``python -m benchmarks.bench`` from the repository root."""
