"""Benchmarks: `make bench` (``python -m benchmarks.run``) measures every figure BENCHMARKS.md
reports, against a real daemon, API and edge on loopback."""
