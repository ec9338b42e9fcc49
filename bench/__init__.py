"""Nexus benchmarks: ``make bench`` (``python -m bench``). Never timed tests."""
