"""Admission by bytes in flight and the limits derived at start-up (issue #22, items 4 and 5),
without a server: the budget's arithmetic, its refusals' codes and messages, the cgroup
limit it is derived from, the connection caps from RLIMIT_NOFILE, and every new flag's parsing.
The refusals through real servers: tests/test_protections.py."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from serving.errors import ServingError, status_of
from serving.model.admission import (
    BUDGET_SHARE,
    RESERVE_BYTES,
    Admission,
    budget_from_memory,
    grpc_max_message_bytes,
    memory_limit_bytes,
)
from serving.model.runs import predict_in_runs
from serving.settings import SettingsError, parse_settings
from serving.transport.connections import RESERVED_DESCRIPTORS, connection_cap
from serving.transport.grpc_api import connection_options


def test_admits_within_the_budget_and_returns_the_charge():
    admission = Admission(1000)
    first = admission.admit(100, 4.0, "rest")
    second = admission.admit(500, 1.0, "grpc")
    assert (first.charged, second.charged, admission.in_flight_bytes) == (400, 500, 900)
    first.resize(150)
    assert admission.in_flight_bytes == 650
    first.resize(10_000)  # never raises a charge
    assert first.charged == 150
    first.release()
    first.release()  # idempotent
    with second:
        pass
    assert admission.in_flight_bytes == 0


def test_over_the_budget_beside_others_is_unavailable_503_and_says_why():
    admission = Admission(1000)
    held = admission.admit(800, 1.0, "rest")
    with pytest.raises(ServingError) as refused:
        admission.admit(100, 3.5, "grpc")
    status = status_of(refused.value)
    assert (status.code, status.http) == (grpc.StatusCode.UNAVAILABLE, 503)
    assert "server busy" in status.message and "--max_inflight_request_bytes" in status.message
    assert "800 of 1000 bytes" in status.message and "needs 350" in status.message
    assert admission.in_flight_bytes == 800 and admission.refused == 1
    held.release()
    admission.admit(100, 3.5, "grpc").release()  # fits once the other left


def test_over_the_whole_budget_is_resource_exhausted_413_even_alone():
    admission = Admission(1000)
    with pytest.raises(ServingError) as refused:
        admission.admit(40, 26, "rest")
    status = status_of(refused.value)
    assert (status.code, status.http) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 413)
    assert "more than this server's whole in-flight budget of 1000 bytes" in status.message
    assert admission.in_flight_bytes == 0


def test_memory_limit_from_cgroup_v2_then_v1_then_physical(tmp_path):
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2.write_text("268435456\n")
    assert memory_limit_bytes(v2, v1) == (268435456, str(v2))
    v2.write_text("max\n")  # no limit in v2: the v1 file is next
    v1.write_text("536870912\n")
    assert memory_limit_bytes(v2, v1) == (536870912, str(v1))
    v1.write_text("9223372036854771712\n")  # v1's "no limit"
    limit, source = memory_limit_bytes(v2, v1)
    assert source == "physical memory" and limit > 0
    assert memory_limit_bytes(tmp_path / "none", tmp_path / "none")[1] == "physical memory"


def test_budget_from_memory():
    gib = 1 << 30
    assert budget_from_memory(2 * gib) == int((2 * gib - RESERVE_BYTES) * BUDGET_SHARE)
    # A limit below the reserve still admits one 256-image gRPC request.
    assert budget_from_memory(64 << 20) == int(256 * 28 * 28 * 4 * 3.5)


def test_grpc_message_cap_from_the_budget():
    assert grpc_max_message_bytes(128_000_000, 64 << 20, 0) == 1_000_000  # 64 in core
    assert grpc_max_message_bytes(128_000_000, 64 << 20, 16) == 4_000_000
    assert grpc_max_message_bytes(10 << 30, 64 << 20, 0) == 64 << 20  # --max_request_bytes


def test_large_requests_run_in_parts_with_the_same_outputs():
    class Doubling:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def predict(self, name, inputs, output_names=None):
            self.calls.append(len(inputs["x"]))
            return {"y": inputs["x"] * 2, "n": inputs["x"].sum(axis=1)}

    x = np.arange(200 * 3, dtype=np.float32).reshape(200, 3)
    runtime = Doubling()
    outputs = predict_in_runs(runtime, "s", {"x": x}, 200, 64)  # type: ignore[arg-type]
    assert runtime.calls == [64, 64, 64, 8]
    np.testing.assert_array_equal(outputs["y"], x * 2)
    np.testing.assert_array_equal(outputs["n"], x.sum(axis=1))
    runtime.calls.clear()
    predict_in_runs(runtime, "s", {"x": x}, 200, 0)  # type: ignore[arg-type]
    assert runtime.calls == [200]


def test_connection_caps_from_the_descriptor_limit():
    assert connection_cap(0, 1024) == (1024 - RESERVED_DESCRIPTORS) // 2
    assert connection_cap(0, 64) == 16
    assert connection_cap(300, 1024) == 300
    # 2 GiB: a tenth pays for 26,214 connections at 8 KiB, half each port.
    assert connection_cap(0, 1_048_576, 2 << 30) == 13107
    assert connection_cap(0, 1024, 2 << 30) == (1024 - RESERVED_DESCRIPTORS) // 2


def test_grpc_connection_options():
    options = dict(
        connection_options(
            max_connections=448,
            handshake_timeout_s=10,
            max_idle_s=300,
            max_age_s=0,
            max_age_grace_s=30,
        )
    )
    assert options == {
        "grpc.server_handshake_timeout_ms": 10_000,
        "grpc.max_allowed_incoming_connections": 448,
        "grpc.max_connection_idle_ms": 300_000,
    }
    aged = dict(
        connection_options(
            max_connections=0,
            handshake_timeout_s=1.5,
            max_idle_s=0,
            max_age_s=60,
            max_age_grace_s=5,
        )
    )
    assert aged == {
        "grpc.server_handshake_timeout_ms": 1500,
        "grpc.max_connection_age_ms": 60_000,
        "grpc.max_connection_age_grace_ms": 5000,
    }


def test_the_protection_flags_parse(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    settings = parse_settings(
        [
            f"--model_base_path={tmp_path / 'm'}",
            "--max_inflight_request_bytes=123456789",
            "--rest_keepalive_timeout_seconds=5.5",
            "--rest_body_timeout_seconds=2",
            "--rest_max_connections=300",
            "--grpc_max_connections=200",
            "--grpc_handshake_timeout_seconds=3",
            "--grpc_max_connection_idle_seconds=60",
            "--grpc_max_connection_age_seconds=600",
            "--grpc_max_connection_age_grace_seconds=15",
            "--grpc_max_concurrent_streams=10",
            "--grpc_max_concurrent_rpcs=16",
            "--max_rows_per_run=128",
        ]
    )
    assert (settings.grpc_max_concurrent_rpcs, settings.max_rows_per_run) == (16, 128)
    assert settings.max_inflight_request_bytes == 123456789
    assert (settings.rest_keepalive_timeout_seconds, settings.rest_body_timeout_seconds) == (
        5.5,
        2.0,
    )
    assert (settings.rest_max_connections, settings.grpc_max_connections) == (300, 200)
    assert (
        settings.grpc_handshake_timeout_seconds,
        settings.grpc_max_connection_idle_seconds,
        settings.grpc_max_connection_age_seconds,
        settings.grpc_max_connection_age_grace_seconds,
        settings.grpc_max_concurrent_streams,
    ) == (3.0, 60.0, 600.0, 15.0, 10)


@pytest.mark.parametrize(
    "argv",
    [
        "--max_inflight_request_bytes=-1",
        "--rest_keepalive_timeout_seconds=0",
        "--rest_body_timeout_seconds=0",
        "--rest_max_connections=-5",
        "--grpc_max_connections=-1",
        "--grpc_handshake_timeout_seconds=0",
        "--grpc_max_connection_idle_seconds=-1",
        "--grpc_max_connection_age_seconds=-1",
        "--grpc_max_connection_age_grace_seconds=-1",
        "--grpc_max_concurrent_rpcs=-1",
        "--max_rows_per_run=-1",
    ],
)
def test_bad_protection_values_name_their_flag(tmp_path, argv):
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(SettingsError, match=argv.split("=")[0] + ":"):
        parse_settings([f"--model_base_path={tmp_path / 'm'}", argv])
