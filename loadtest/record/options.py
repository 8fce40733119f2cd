"""The locustfile's own options (``--model``, ``--protocol``, ``--batch-size`` …) and the
(model, protocol, batch size) combinations that their comma-separated lists ask for."""

from __future__ import annotations

import argparse
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from contract import MODEL_NAMES, PROTOCOLS
from contract.cli import comma_list, non_negative_int, positive_int
from loadtest.cells import request_name
from loadtest.record.recorder import key_string

DEFAULT_GRPC_TARGET = "127.0.0.1:8500"
DEFAULT_REST_URL = "http://127.0.0.1:8501"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def model_list(value: str) -> list[str]:
    """``--model``: comma-separated model names."""
    models = comma_list(value, "--model", repeated="reject")
    for model in models:
        if not _NAME.fullmatch(model):
            raise ValueError(f"--model: {model!r} is not a model name")
    return models


def protocol_list(value: str) -> list[str]:
    """``--protocol``: comma-separated, each ``grpc`` or ``rest``."""
    protocols = comma_list(value, "--protocol", repeated="reject")
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"--protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    return protocols


def batch_size_list(value: str) -> list[int]:
    """``--batch-size``: comma-separated positive integers."""
    sizes = []
    for item in comma_list(str(value), "--batch-size", repeated="reject"):
        try:
            sizes.append(positive_int(item))
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"--batch-size: {exc}") from None
    return sizes


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], str]:
    """An argparse ``type`` that checks a list but keeps the string: Locust's web UI edits string
    options as text fields and casts what it gets back with the default's type."""

    def check(value: str) -> str:
        try:
            parse(value)
        except ValueError as exc:
            # argparse names the option itself ("argument --model: ...").
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None
        return value

    check.__name__ = parse.__name__
    return check


@dataclass(frozen=True, order=True)
class Combination:
    """One (model, protocol, batch size) that a group of users sends: the part of a
    :class:`~loadtest.cells.CellKey` that a Locust run varies."""

    model: str
    protocol: str
    batch_size: int

    @property
    def key(self) -> str:
        """The HDR recorder's key."""
        return key_string(self.model, self.protocol, self.batch_size)

    @property
    def request_name(self) -> str:
        """The name of its row in Locust's statistics (the type column says the protocol)."""
        return request_name(self.model, self.batch_size)

    @property
    def class_name(self) -> str:
        """The Locust user class that sends it."""
        model = re.sub(r"[^A-Za-z0-9_]", "_", self.model)
        return f"Predict_{model}_{self.protocol}_b{self.batch_size}"


def combinations(model: str, protocol: str, batch_size: str | int) -> list[Combination]:
    """Every combination of the comma-separated lists (``ValueError`` for a bad list)."""
    return [
        Combination(m, p, b)
        for m, p, b in itertools.product(
            model_list(model), protocol_list(protocol), batch_size_list(str(batch_size))
        )
    ]


def combinations_of(options: Any) -> list[Combination]:
    """The combinations that Locust's parsed options ask for."""
    return combinations(options.model, options.protocol, options.batch_size)


def _add_combination_arguments(parser: Any) -> None:
    parser.add_argument(
        "--model",
        type=_argparse_type(model_list),
        default="standard",
        env_var="LOCUST_MODEL",
        help=f"model name(s) to query ({', '.join(MODEL_NAMES)}); a comma-separated list runs "
        "users for each at the same time, e.g. standard,separable",
    )
    parser.add_argument(
        "--batch-size",
        type=_argparse_type(batch_size_list),
        default="1",
        env_var="LOCUST_BATCH_SIZE",
        help="images per request; a comma-separated list (1,32) runs users for each",
    )
    parser.add_argument(
        "--protocol",
        type=_argparse_type(protocol_list),
        default="grpc",
        env_var="LOCUST_PROTOCOL",
        help="grpc (PredictionService/Predict) or rest (POST /v1/models/<m>:predict); "
        "grpc,rest runs users for each",
    )


def add_arguments(parser: Any, **_: Any) -> None:
    """The ``init_command_line_parser`` listener: our options on Locust's parser (straight on
    it: Locust's web UI extras, ``include_in_web_ui``, exist only there)."""
    _add_combination_arguments(parser)
    parser.add_argument(
        "--grpc-target",
        default=DEFAULT_GRPC_TARGET,
        env_var="LOCUST_GRPC_TARGET",
        help="host:port of the gRPC API (REST uses --host)",
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        default=0,
        env_var="LOCUST_WARMUP",
        help="seconds at the start left out of the HDR percentiles, throughput and Locust stats",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        env_var="LOCUST_REQUEST_TIMEOUT",
        help="seconds before a request fails",
    )
    parser.add_argument(
        "--hdr-output",
        default="",
        env_var="LOCUST_HDR_OUTPUT",
        include_in_web_ui=False,
        help="write the merged HDR results (JSON) to this file when Locust exits",
    )
