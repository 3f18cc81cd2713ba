"""One module per pipeline step: the I/O around the pure core, no Dagster.

Assets call these per (source, window) slice; the benchmark and tests call them
too, so the step logic exists exactly once.
"""
