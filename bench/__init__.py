"""Benchmarks. Not part of the test run; each prints one JSON line per figure and measures its
baseline in the same process and run (see docs/benchmarks.md)."""
