"""Development tools shared by the tests and the benchmark (never used by a run).

They live in the package so that `bench/` can use them without importing the
test suite, and the tests without importing the benchmark.
"""
