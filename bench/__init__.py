"""Benchmark and test tooling for the gateway: fake upstream provider, load scripts."""
