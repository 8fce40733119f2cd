"""What drives a run: the sweep (``python -m loadtest``), the supervision of servers, Locust and
measuring children, the in-process floor (:mod:`loadtest.run.floor`), operator profiles, CPU
pinning and sampling, machine facts, the server's phase histogram, and the soak test."""
