"""Side-by-side performance measurements: ``python -m benchmarks`` (see ``__main__``)."""
