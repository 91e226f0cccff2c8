"""Benchmarks (``make bench``): throughput and memory figures, never pass/fail on timing."""
