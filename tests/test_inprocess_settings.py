"""Each flag is declared once, on its ``Settings`` field: the parser and the flag-to-field map are
generated from the fields, every flag keeps its name, default and meaning, and the layering
rule (transports call only the PredictionService facade) holds."""

from __future__ import annotations

import argparse
import ast
import inspect
from pathlib import Path

import pytest

from serving import settings as settings_module
from serving.settings import Flag, Settings, SettingsError, build_parser, parse_settings

# Every flag of `python -m serving` (the README and tests/test_serving_*.py use them).
FLAGS = {
    "--port": 8500,
    "--rest_api_port": 8501,
    "--host": "0.0.0.0",
    "--model_name": None,
    "--model_base_path": None,
    "--model_config_file": None,
    "--model_base_path_root": None,
    "--model_config_file_poll_wait_seconds": 0.0,
    "--file_system_poll_wait_seconds": 1.0,
    "--enable_batching": False,
    "--batching_parameters_file": None,
    "--tensorflow_intra_op_parallelism": 0,
    "--tensorflow_inter_op_parallelism": 0,
    "--grpc_max_threads": 0,
    "--inline_max_rows": -1,
    "--grpc_max_concurrent_streams": 100,
    "--enable_model_warmup": True,
    "--runtime": "onnx",
    "--device": "cpu",
    "--cudnn_benchmark": True,
    "--event_loop": "uvloop",
    "--workers": 1,
    "--worker_index": 0,
    "--worker_ready_file": None,
    "--max_request_bytes": 64 * 1024 * 1024,
    "--max_inflight_request_bytes": 0,
    "--max_rows_per_run": 64,
    "--rest_keepalive_timeout_seconds": 75.0,
    "--rest_body_timeout_seconds": 30.0,
    "--rest_max_connections": 0,
    "--grpc_max_concurrent_rpcs": 0,
    "--grpc_max_connections": 0,
    "--grpc_handshake_timeout_seconds": 5.0,
    "--grpc_max_connection_idle_seconds": 300.0,
    "--grpc_max_connection_age_seconds": 0.0,
    "--grpc_max_connection_age_grace_seconds": 30.0,
    "--request_timeout_seconds": 30.0,
    "--shutdown_grace_seconds": 30.0,
    "--ssl_config_file": None,
    "--ssl_cert_file": None,
    "--ssl_key_file": None,
    "--ssl_client_ca_file": None,
    "--log_level": "info",
}


def _actions() -> dict[str, argparse.Action]:
    return {
        action.option_strings[0]: action
        for action in build_parser()._actions
        if action.option_strings and action.option_strings[0] != "-h"
    }


def test_every_flag_keeps_its_name_and_default():
    actions = _actions()
    assert {name: action.default for name, action in actions.items()} == FLAGS


def test_every_flag_is_declared_on_exactly_one_field():
    declared = [
        flag.name or f"--{name}"
        for name, field in Settings.model_fields.items()
        for flag in field.metadata
        if isinstance(flag, Flag)
    ]
    assert sorted(declared) == sorted(FLAGS)
    # The module builds no argument by hand: add_argument is called in one loop only.
    source = inspect.getsource(settings_module)
    assert source.count("add_argument(") == 1


def test_help_lists_every_flag_but_the_hidden_ones():
    text = build_parser().format_help()
    hidden = {"--worker_index", "--worker_ready_file"}  # set by --workers for its children
    for name in FLAGS:
        assert (name in text) == (name not in hidden), name
    assert "(ours)" in text and "gRPC port" in text


def test_defaults_and_values_reach_the_settings(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    base = f"--model_base_path={tmp_path / 'm'}"
    default = parse_settings([base])
    assert default.model_dump(exclude={"model_base_path"}) == Settings(
        model_base_path=tmp_path / "m"
    ).model_dump(exclude={"model_base_path"})
    batching = tmp_path / "b.config"
    batching.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 5 }")
    custom = parse_settings(
        [
            base,
            "--port=9000",
            "--rest_api_port=0",
            "--enable_batching",
            f"--batching_parameters_file={batching}",
            "--enable_model_warmup=false",
            "--runtime=torch",
            "--workers=3",
            "--worker_index=2",
            f"--model_base_path_root={tmp_path}",
            f"--model_base_path_root={tmp_path / 'm'}",
            "--request_timeout_seconds=2.5",
            "--log_level=debug",
        ]
    )
    assert (custom.port, custom.rest_api_port, custom.workers, custom.worker_index) == (
        9000,
        0,
        3,
        2,
    )
    assert custom.enable_batching and not custom.enable_model_warmup
    assert (custom.batching.max_batch_size, custom.batching.batch_timeout_micros) == (8, 5)
    assert custom.model_base_path_roots == (tmp_path, tmp_path / "m")
    assert (custom.runtime, custom.request_timeout_seconds, custom.log_level) == (
        "torch",
        2.5,
        "debug",
    )


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--runtime=bogus"], "--runtime:"),
        (["--workers=0"], "--workers:"),
        (["--port=0"], "--port must be a TCP port"),
        (["--ssl_cert_file=x"], "--ssl_cert_file and --ssl_key_file go together"),
        (["--batching_parameters_file=/nonexistent"], "--batching_parameters_file: cannot read"),
    ],
)
def test_bad_values_name_their_flag(tmp_path, argv, fragment):
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(SettingsError, match=fragment):
        parse_settings([f"--model_base_path={tmp_path / 'm'}", *argv])


def test_transports_reach_the_models_through_the_facade_only():
    for path in ("serving/transport/grpc_api.py", "serving/transport/rest_api.py"):
        tree = ast.parse((Path(__file__).parents[1] / path).read_text())
        names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        imports = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "manager" not in names and "_manager" not in names, path
        assert "serving.model.manager" not in imports, path
