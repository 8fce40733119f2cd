"""The server's one settings object, built from ``tensorflow_model_server``-style flags.

Flag names follow TF Serving where the feature is the same; ours are marked "(ours)" in --help.
``MODEL_NAME`` / ``MODEL_BASE_PATH`` environment variables are honoured as in TF Serving's image.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serving.config_protos import BatchingParameters, SSLConfig, parse_text


class SettingsError(ValueError):
    """A bad flag value; the message is one line naming the flag."""


class BatchingSettings(BaseModel):
    """TF Serving's ``BatchingParameters`` (same field names and meaning)."""

    model_config = ConfigDict(frozen=True)

    max_batch_size: int = Field(32, ge=1)
    batch_timeout_micros: int = Field(1000, ge=0)
    max_enqueued_batches: int = Field(100, ge=1)
    num_batch_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    allowed_batch_sizes: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _check_allowed_sizes(self) -> BatchingSettings:
        sizes = self.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise ValueError("allowed_batch_sizes must be increasing positive integers")
            if sizes[-1] != self.max_batch_size:
                # TF Serving's rule: the largest allowed size is the maximum batch size.
                raise ValueError("the last allowed_batch_sizes entry must equal max_batch_size")
        return self


class TlsSettings(BaseModel):
    """Server certificate and key (PEM text), optional client CA for mutual TLS."""

    model_config = ConfigDict(frozen=True)

    server_cert: str
    server_key: str
    custom_ca: str = ""
    client_verify: bool = False


class Settings(BaseModel):
    """Everything the server is configured with."""

    model_config = ConfigDict(frozen=True)

    host: str = "0.0.0.0"
    port: int = Field(8500, ge=0, le=65535)
    rest_api_port: int = Field(8501, ge=0, le=65535)
    model_name: str = "default"
    model_base_path: Path | None = None
    model_config_file: Path | None = None
    model_base_path_roots: tuple[Path, ...] = ()
    model_config_file_poll_wait_seconds: float = Field(0.0, ge=0)
    file_system_poll_wait_seconds: float = Field(1.0, ge=0)
    enable_batching: bool = False
    batching: BatchingSettings = BatchingSettings()
    tensorflow_intra_op_parallelism: int = Field(0, ge=0)
    tensorflow_inter_op_parallelism: int = Field(0, ge=0)
    grpc_max_threads: int = Field(0, ge=0)
    grpc_max_concurrent_streams: int = Field(0, ge=0)
    enable_model_warmup: bool = True
    runtime: Literal["onnx", "tensorflow", "torch"] = "onnx"
    device: Literal["cpu", "cuda"] = "cpu"
    workers: int = Field(1, ge=1, le=256)
    # Set by --workers for its children: only worker 0 listens before its models are loaded, so
    # the kernel never hands a connection to a worker that cannot answer it yet.
    worker_index: int = Field(0, ge=0)
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    request_timeout_seconds: float = Field(30.0, gt=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    tls: TlsSettings | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _check_models(self) -> Settings:
        if (self.model_config_file is None) == (self.model_base_path is None):
            raise ValueError(
                "give exactly one of --model_config_file or --model_base_path (or MODEL_BASE_PATH)"
            )
        if self.port == 0:
            raise ValueError("--port must be a TCP port (1-65535)")
        if self.rest_api_port and self.rest_api_port == self.port:
            raise ValueError("--rest_api_port must differ from --port")
        return self

    @property
    def inference_threads(self) -> int:
        """Threads that run inference (``--grpc_max_threads``, default: one per core)."""
        return self.grpc_max_threads or (os.cpu_count() or 1)


def build_parser() -> argparse.ArgumentParser:
    """The command line, documented flag by flag."""
    p = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve models over the TensorFlow Serving gRPC and REST APIs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add("--port", type=int, default=8500, help="gRPC port")
    add("--rest_api_port", type=int, default=8501, help="REST port; 0 disables REST")
    add("--host", default="0.0.0.0", help="address to listen on (ours)")
    add(
        "--model_name",
        default=None,
        help="model name with --model_base_path (default: env MODEL_NAME, else 'default')",
    )
    add(
        "--model_base_path",
        default=None,
        help="serve one model from this directory of versions. Without it and without "
        "--model_config_file, TF Serving's image convention applies: ${MODEL_BASE_PATH}/"
        "${MODEL_NAME}, or ${MODEL_BASE_PATH}/models.config when MODEL_NAME is unset",
    )
    add("--model_config_file", default=None, help="ModelServerConfig text proto (models.config)")
    add(
        "--model_base_path_root",
        action="append",
        default=None,
        help="a directory model base paths must lie in, symlinks and '..' resolved; repeat for "
        "several. Default: the config file's directory and the parent of every start-up base "
        "path (ours)",
    )
    add(
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0.0,
        help="re-read --model_config_file this often; 0 reads it once",
    )
    add(
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="look for new model versions this often; 0 looks once at start-up",
    )
    add("--enable_batching", type=_bool, nargs="?", const=True, default=False)
    add("--batching_parameters_file", default=None, help="BatchingParameters text proto")
    add("--tensorflow_intra_op_parallelism", type=int, default=0, help="0 = library default")
    add("--tensorflow_inter_op_parallelism", type=int, default=0, help="0 = library default")
    add("--grpc_max_threads", type=int, default=0, help="inference threads; 0 = one per core")
    add(
        "--grpc_max_concurrent_streams",
        type=int,
        default=0,
        help="HTTP/2 streams per gRPC connection; 0 = gRPC default (ours)",
    )
    add("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True)
    add(
        "--runtime",
        default="onnx",
        help="onnx (model.onnx), tensorflow (SavedModel) or torch (model.onnx in PyTorch) (ours)",
    )
    add("--device", default="cpu", help="cpu or cuda (ours)")
    add("--workers", type=int, default=1, help="server processes sharing the ports (ours)")
    add("--worker_index", type=int, default=0, help=argparse.SUPPRESS)  # set by --workers
    add(
        "--max_request_bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="largest request accepted, gRPC message or REST body (ours)",
    )
    add(
        "--request_timeout_seconds",
        type=float,
        default=30.0,
        help="deadline for a request without a client deadline (ours)",
    )
    add(
        "--shutdown_grace_seconds",
        type=float,
        default=30.0,
        help="after SIGTERM, time in-flight requests get to finish (ours)",
    )
    add("--ssl_config_file", default=None, help="SSLConfig text proto (TF Serving's)")
    add("--ssl_cert_file", default=None, help="PEM server certificate (ours)")
    add("--ssl_key_file", default=None, help="PEM server key (ours)")
    add("--ssl_client_ca_file", default=None, help="PEM CA; clients must present a cert (ours)")
    add("--log_level", default="info", help="debug, info, warning or error (ours)")
    return p


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _read(path: str, flag: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"{flag}: cannot read {path}: {exc.strerror}") from exc


def _batching(path: str | None) -> BatchingSettings:
    if path is None:
        return BatchingSettings()
    text = _read(path, "--batching_parameters_file")
    try:
        proto = parse_text(BatchingParameters, text)
    except Exception as exc:
        raise SettingsError(f"--batching_parameters_file {path}: {exc}") from exc
    values: dict[str, object] = {
        name: getattr(proto, name).value
        for name in (
            "max_batch_size",
            "batch_timeout_micros",
            "max_enqueued_batches",
            "num_batch_threads",
        )
        if proto.HasField(name)
    }
    values["allowed_batch_sizes"] = tuple(proto.allowed_batch_sizes)
    try:
        return BatchingSettings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(f"--batching_parameters_file {path}: {_first_error(exc)}") from exc


def _tls(args: argparse.Namespace) -> TlsSettings | None:
    if args.ssl_config_file:
        text = _read(args.ssl_config_file, "--ssl_config_file")
        try:
            proto = parse_text(SSLConfig, text)
        except Exception as exc:
            raise SettingsError(f"--ssl_config_file {args.ssl_config_file}: {exc}") from exc
        if not proto.server_cert or not proto.server_key:
            raise SettingsError("--ssl_config_file: server_cert and server_key are required")
        return TlsSettings(
            server_cert=proto.server_cert,
            server_key=proto.server_key,
            custom_ca=proto.custom_ca,
            client_verify=proto.client_verify,
        )
    if args.ssl_cert_file or args.ssl_key_file:
        if not (args.ssl_cert_file and args.ssl_key_file):
            raise SettingsError("--ssl_cert_file and --ssl_key_file go together")
        ca = (
            _read(args.ssl_client_ca_file, "--ssl_client_ca_file")
            if args.ssl_client_ca_file
            else ""
        )
        return TlsSettings(
            server_cert=_read(args.ssl_cert_file, "--ssl_cert_file"),
            server_key=_read(args.ssl_key_file, "--ssl_key_file"),
            custom_ca=ca,
            client_verify=bool(ca),
        )
    if args.ssl_client_ca_file:
        raise SettingsError("--ssl_client_ca_file needs --ssl_cert_file and --ssl_key_file")
    return None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {error['msg']}" if location else str(error["msg"])


def _models_source(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    """``(model_name, model_base_path, model_config_file)``: flags first, then TF Serving's
    image convention (``MODEL_BASE_PATH`` is the parent of the model directories)."""
    env_name = os.environ.get("MODEL_NAME") or None
    name = args.model_name or env_name or "default"
    if args.model_config_file:
        return name, None, args.model_config_file
    if args.model_base_path:
        return name, args.model_base_path, None
    root = os.environ.get("MODEL_BASE_PATH")
    if not root:
        return name, None, None  # the model validator names the missing flags
    if args.model_name or env_name:
        return name, str(Path(root) / name), None
    config = Path(root) / "models.config"
    if config.is_file():
        return name, None, str(config)
    raise SettingsError(
        f"MODEL_BASE_PATH={root}: set MODEL_NAME to serve {root}/<MODEL_NAME>, "
        f"or put a models.config in {root}, or give --model_config_file"
    )


def parse_settings(argv: list[str] | None = None) -> Settings:
    """Parse flags into ``Settings``; raises ``SettingsError`` with one clear line."""
    args = build_parser().parse_args(argv)
    model_name, model_base_path, model_config_file = _models_source(args)
    values = {
        "host": args.host,
        "port": args.port,
        "rest_api_port": args.rest_api_port,
        "model_name": model_name,
        "model_base_path": model_base_path,
        "model_config_file": model_config_file,
        "model_base_path_roots": tuple(args.model_base_path_root or ()),
        "model_config_file_poll_wait_seconds": args.model_config_file_poll_wait_seconds,
        "file_system_poll_wait_seconds": args.file_system_poll_wait_seconds,
        "enable_batching": args.enable_batching,
        "batching": _batching(args.batching_parameters_file),
        "tensorflow_intra_op_parallelism": args.tensorflow_intra_op_parallelism,
        "tensorflow_inter_op_parallelism": args.tensorflow_inter_op_parallelism,
        "grpc_max_threads": args.grpc_max_threads,
        "grpc_max_concurrent_streams": args.grpc_max_concurrent_streams,
        "enable_model_warmup": args.enable_model_warmup,
        "runtime": args.runtime,
        "device": args.device,
        "workers": args.workers,
        "worker_index": args.worker_index,
        "max_request_bytes": args.max_request_bytes,
        "request_timeout_seconds": args.request_timeout_seconds,
        "shutdown_grace_seconds": args.shutdown_grace_seconds,
        "tls": _tls(args),
        "log_level": args.log_level,
    }
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = "--" + str(error["loc"][0]) if error["loc"] else "flags"
        raise SettingsError(f"{flag}: {error['msg']}") from exc
    for path, flag in (
        (settings.model_config_file, "--model_config_file"),
        (settings.model_base_path, "--model_base_path"),
    ):
        if path is not None and not path.exists():
            raise SettingsError(f"{flag}: {path} does not exist")
    if settings.model_base_path is not None and not settings.model_base_path.is_dir():
        raise SettingsError(f"--model_base_path: {settings.model_base_path} is not a directory")
    for root in settings.model_base_path_roots:
        if not root.is_dir():
            raise SettingsError(f"--model_base_path_root: {root} is not a directory")
    return settings
