"""Benchmark scripts: they print figures; nothing here is a timed unit test."""
