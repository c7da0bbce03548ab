"""Benchmarks: each prints a table and saves a plot (see each module docstring)."""
