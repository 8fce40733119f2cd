"""Fuzzing of the server's request decoding: the shared Hypothesis settings and tallies of the
property tests (``tests/test_fuzz_*.py``), the long run behind ``make fuzz`` and an atheris
harness for the ``TensorProto`` decoder."""
