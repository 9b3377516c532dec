"""Benchmarks printing ratios against a reference run in the same process."""
