"""The Locust users: one Predict request in flight per user, a user class per
(model, protocol, batch size) combination, and the swap of those classes into an Environment.

A user fires Locust's ``request`` event with a :class:`Sample` in its context; the
:class:`~loadtest.record.plugin.LoadtestPlugin` of the environment records it in microsecond HDR
histograms, so users hold no measurement state of their own.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import gevent
import grpc
from locust import User, constant, task
from locust.env import Environment

from loadtest.record import payload
from loadtest.record.clients import GrpcPredictClient, RestError, RestPredictClient
from loadtest.record.options import DEFAULT_REST_URL, Combination, combinations_of

SAMPLE = "loadtest_sample"  # our entry in the context of Locust's request events


# A user waits this long after a failed request: against a server that is down (refused at once)
# a closed loop without wait would spin, thousands of failures a second; with it a user fails at
# most 1 / FAILURE_PAUSE_S times a second (the bound tests/test_containers_faults.py checks).
FAILURE_PAUSE_S = 0.1


@dataclass(frozen=True)
class Sample:
    """One Predict call as the HDR recorder needs it."""

    key: str  # Combination.key
    started: float  # time.perf_counter() when sent
    elapsed: float  # seconds
    images: int
    correct: int


class PredictUser(User):
    """One client with one request in flight at a time.

    Subclasses made by :func:`user_class` send one fixed :class:`Combination`; this class itself
    (the one Locust finds in the file, replaced by those subclasses when the run starts) and other
    subclasses (the soak test's) send the single combination of the options.
    """

    wait_time = constant(0)  # closed loop: the number of users is the concurrency
    combination: ClassVar[Combination | None] = None

    def on_start(self) -> None:
        """Pick the combination, a place in the test set, and open the client."""
        options = self.environment.parsed_options
        combination = type(self).combination
        if combination is None:
            (combination,) = _single(combinations_of(options), type(self).__name__)
        self.combination_sent = combination
        self.ring = payload.ImageRing(payload.load_test_set(), combination.batch_size)
        # Users start at different places in the test set so they do not send identical batches.
        self.batch_index = random.randrange(self.ring.period)
        timeout_s = float(options.request_timeout)
        self.client: GrpcPredictClient | RestPredictClient
        if combination.protocol == "grpc":
            self.client = GrpcPredictClient(str(options.grpc_target), combination.model, timeout_s)
        else:
            base_url = self.environment.host or DEFAULT_REST_URL
            self.client = RestPredictClient(base_url, combination.model, timeout_s, self.ring)

    def on_stop(self) -> None:
        """Close the client."""
        self.client.close()

    @task
    def predict(self) -> None:
        """Send the next batch and report it (Locust's statistics and our HDR histograms)."""
        images, labels = self.ring.batch(self.batch_index)
        self.client.prepare(images, self.batch_index)
        self.batch_index += 1
        exception: Exception | None = None
        length = 0
        correct = 0
        started = time.perf_counter()
        try:
            classes, length = self.client.call()
            elapsed = time.perf_counter() - started
            correct = payload.count_correct(classes, labels)
        except (grpc.RpcError, RestError, OSError, ValueError, KeyError) as exc:
            elapsed = time.perf_counter() - started
            exception = exc
        combination = self.combination_sent
        sample = Sample(combination.key, started, elapsed, len(labels), correct)
        self.environment.events.request.fire(
            request_type=combination.protocol,
            name=combination.request_name,
            response_time=elapsed * 1000.0,
            response_length=length,
            exception=exception,
            context={SAMPLE: sample},
        )
        if exception is not None:
            gevent.sleep(FAILURE_PAUSE_S)


def _single(found: list[Combination], class_name: str) -> list[Combination]:
    if len(found) != 1:
        raise ValueError(
            f"{class_name} sends one (model, protocol, batch size); the options name {len(found)}"
        )
    return found


@functools.cache
def user_class(combination: Combination) -> type[PredictUser]:
    """The user class of ``combination`` (one class object per combination and process: Locust
    matches running users to their class by identity when it stops some of them)."""
    return type(
        combination.class_name,
        (PredictUser,),
        {"combination": combination, "weight": 1, "__module__": __name__},
    )


def _ours(cls: type[User]) -> bool:
    """This module's classes: PredictUser itself and those of :func:`user_class` (not the soak
    test's subclass, which sends the options' one combination)."""
    return cls is PredictUser or getattr(cls, "combination", None) is not None


def _replace_available(environment: Environment, classes: list[type[PredictUser]]) -> None:
    """The web UI's class picker: ours replaced by ``classes``."""
    if environment.available_user_classes is not None:
        # Locust annotates this dict's values as User instances; they are classes.
        available: dict[str, Any] = {
            name: cls
            for name, cls in environment.available_user_classes.items()
            if not _ours(cls)  # type: ignore[arg-type]
        }
        available.update({cls.__name__: cls for cls in classes})
        environment.available_user_classes = available
    if environment.available_user_tasks is not None:
        tasks = {
            name: value
            for name, value in environment.available_user_tasks.items()
            if name in (environment.available_user_classes or {})
        }
        tasks.update({cls.__name__: cls.tasks for cls in classes})
        environment.available_user_tasks = tasks


def use_combinations(environment: Environment, wanted: list[Combination]) -> None:
    """Make the environment run one user class per combination, in place of this file's own.

    Environments whose classes come from elsewhere (the soak test subclasses PredictUser) are
    left alone. Locust's runners, dispatcher and web UI read ``environment.user_classes`` (and
    the class picker ``available_user_classes``) whenever a test starts, so this is called before
    each start: at init, by the web UI's swarm request, and on a worker at the test's start, with
    the options the master sent.
    """
    if not any(_ours(cls) for cls in environment.user_classes):
        return
    classes = [user_class(c) for c in wanted]
    if environment.user_classes == classes:
        return
    others: list[type[User]] = [cls for cls in environment.user_classes if not _ours(cls)]
    environment.user_classes = others + list(classes)
    _replace_available(environment, classes)
