"""Benchmarks (`make bench`): each section prints ratios measured within one run."""
