"""Load tests of the served models with Locust, and the "FLOPs vs reality" report.

Laid out by where the code runs, in the order of a run: :mod:`loadtest.cells` (what a measured
cell is), :mod:`loadtest.cli` and :mod:`loadtest.plan` (the sweep's command line and grid),
:mod:`loadtest.run` (servers, Locust and measuring children driven by the sweep),
:mod:`loadtest.record` (what runs inside Locust), :mod:`loadtest.report` (finished runs).

- ``loadtest/locustfile.py``: Locust users for TF Serving's gRPC ``Predict`` and REST ``:predict``,
  latency in microsecond HDR histograms merged across worker processes.
- ``python -m loadtest``: the sweep over runtimes x models x batch sizes x concurrency x protocols,
  plus the in-process floor (``loadtest.run.sweep``, ``loadtest.run.floor``).
- ``python -m loadtest.report``: ``report.md`` with tables, plots and a verdict from saved results,
  and ``--compare`` of two runs.
"""
