"""Test and measurement helpers that run the server as a child process (tests, benchmarks, the
load-test sweep and soak). Not part of the installed package: the server images leave it out."""

from harness.server import ServerProcess, free_port, wait_until_serving

__all__ = ["ServerProcess", "free_port", "wait_until_serving"]
