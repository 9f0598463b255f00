"""Micro-benchmarks of the hot path: request parse + validate, SSE relay per event."""
