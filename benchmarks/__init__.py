"""Benchmark scripts (not part of the test suite): ``python -m benchmarks.<script> --help``."""
