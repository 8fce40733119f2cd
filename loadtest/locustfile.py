"""Locust load test of the TF Serving Predict API (gRPC and REST) with real MNIST test images.

Run it like any locustfile (see docs/loadtest.md)::

    locust -f loadtest/locustfile.py                                # web UI on :8089
    locust -f loadtest/locustfile.py --headless -u 8 -r 8 -t 30s \\
        --model separable --batch-size 32 --protocol grpc --grpc-target 127.0.0.1:8500
    locust -f loadtest/locustfile.py --headless ... --processes 2  # or --master / --worker
    locust -f loadtest/locustfile.py --model standard,separable    # both models side by side

Custom arguments (also environment variables ``LOCUST_MODEL``, ``LOCUST_BATCH_SIZE``,
``LOCUST_PROTOCOL``, ``LOCUST_GRPC_TARGET``, ``LOCUST_WARMUP``, ``LOCUST_HDR_OUTPUT``): the REST
base URL is Locust's own ``--host`` (``LOCUST_HOST``), default ``http://127.0.0.1:8501``.

``--model``, ``--protocol`` and ``--batch-size`` take comma-separated lists: every combination
becomes its own Locust user class (``Predict_<model>_<protocol>_b<batch>``, equal weights), so the
users are split equally between them, all run in the same time window against the same server,
and each has its own row in Locust's statistics (type = protocol, name = ``<model> batch=<n>``).
The web UI gets an "HDR comparison" tab (:mod:`loadtest.record.webui`) with the microsecond
percentiles per combination and the separable ÷ standard ratios; headless runs print the same
table at the end.

Each user keeps one request in flight (no wait time), so ``-u`` is the concurrency. Latencies are
recorded in microseconds in HDR histograms per (model, protocol, batch size); workers send them to
the master, which merges them and prints p50/p90/p99/p99.9/max at the end (and writes JSON to
``--hdr-output``). Answers are checked against the labels: a wrong class lowers the reported
accuracy, a non-OK status (or a malformed answer) is a failed request.

The code lives in :mod:`loadtest.record`: the options (``options``), the users and their clients
(``users``, ``clients``), and the plugin that owns the HDR recording of a run (``plugin``). This
file only puts them together the way Locust's own examples do.
"""

import grpc.experimental.gevent as grpc_gevent
from locust import events

from loadtest.record.options import add_arguments
from loadtest.record.plugin import LoadtestPlugin
from loadtest.record.users import PredictUser

# gRPC must use gevent's event loop before any user creates a channel (Locust's
# examples/grpc/locustfile.py does the same, after its imports: importing locust has already
# monkey-patched the standard library for gevent).
grpc_gevent.init_gevent()

events.init_command_line_parser.add_listener(add_arguments)
events.init.add_listener(LoadtestPlugin.install)

__all__ = ["PredictUser"]
