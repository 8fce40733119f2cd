"""The locustfile's plugin owns its state: one LoadtestPlugin per Locust Environment, listeners
registered on that environment's events, nothing shared through module globals.

Run in a child process: importing Locust monkey-patches the standard library for gevent, which
the test process must not inherit.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)

SCRIPT = r"""
import json
import time

from locust.env import Environment
from locust.event import Events

from loadtest.record.plugin import LoadtestPlugin
from loadtest.record.users import SAMPLE, PredictUser, Sample


def environment_with_plugin():
    environment = Environment(user_classes=[PredictUser], events=Events())
    plugin = LoadtestPlugin(environment)
    plugin.register()
    return environment, plugin


def fire(environment, key, ok=True):
    now = time.perf_counter()
    sample = Sample(key, started=now, elapsed=0.002, images=4, correct=3)
    environment.events.request.fire(
        request_type="grpc",
        name="standard batch=4",
        response_time=2.0,
        response_length=10,
        exception=None if ok else RuntimeError("x"),
        context={SAMPLE: sample},
    )


env_a, plugin_a = environment_with_plugin()
env_b, plugin_b = environment_with_plugin()
for plugin in (plugin_a, plugin_b):
    plugin.recorder.reset(0.0)
fire(env_a, "standard|grpc|4")
fire(env_a, "standard|grpc|4", ok=False)
fire(env_b, "separable|rest|1")
# A request without our sample (another user class) is Locust's business only.
env_a.events.request.fire(
    request_type="x", name="y", response_time=1.0, response_length=0, exception=None, context={}
)
env_a.events.reset_stats.fire()  # no runner: nothing to tell, nothing shared
out = {}
for name, plugin in (("a", plugin_a), ("b", plugin_b)):
    stats = plugin.recorder.stats
    out[name] = {
        key: [s.answered, s.failures, s.images, s.correct] for key, s in stats.items()
    }
print(json.dumps(out))
"""


def test_two_environments_do_not_share_measurements():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=100, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads(result.stdout.strip().splitlines()[-1])
    # Failed requests count as failures; only answers are checked for accuracy.
    assert recorded["a"] == {"standard|grpc|4": [1, 1, 4, 3]}
    assert recorded["b"] == {"separable|rest|1": [1, 0, 4, 3]}
