"""Measures of python -m benchmarks: one module each, run(ctx) -> list[Result]."""
