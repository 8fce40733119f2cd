"""The server's one settings object, built from ``tensorflow_model_server``-style flags.

Each flag is declared once, on the ``Settings`` field it sets (``Flag``: name, help, default),
and both the parser and the flag-to-field map are generated from the fields. Flag names follow
TF Serving where the feature is the same; ours are marked "(ours)" in --help.
``MODEL_NAME`` / ``MODEL_BASE_PATH`` environment variables are honoured as in TF Serving's image.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from serving.config_protos import BatchingParameters, SSLConfig, parse_text
from serving.runtimes.cpuset import cpu_count


class SettingsError(ValueError):
    """A bad flag value; the message is one line naming the flag."""


class BatchingSettings(BaseModel):
    """TF Serving's ``BatchingParameters`` (same field names and meaning)."""

    model_config = ConfigDict(frozen=True)

    max_batch_size: int = Field(32, ge=1)
    batch_timeout_micros: int = Field(1000, ge=0)
    max_enqueued_batches: int = Field(100, ge=1)
    num_batch_threads: int = Field(default_factory=cpu_count, ge=1)
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


_FIELD_DEFAULT: Any = object()


@dataclass(frozen=True)
class Flag:
    """A command-line flag of a ``Settings`` field, declared on the field (``Annotated``).

    ``name`` defaults to ``--<field name>`` (TF Serving's flag where the feature is the same);
    ``help`` to the field's description; the default is the field's, unless the flag's value
    only means "not given" (``default=None``) and ``FromArgs`` computes the field.
    """

    help: str = ""
    name: str = ""
    ours: bool = False  # not a TF Serving flag: "(ours)" in --help
    append: bool = False  # repeatable; the values are collected in a list
    hidden: bool = False  # set by --workers for its children, not by people
    default: Any = _FIELD_DEFAULT


@dataclass(frozen=True)
class FromArgs:
    """A field computed from the parsed flags rather than copied from its own flag: from
    several flags (TLS), from a file a flag names (batching) or with an environment fallback
    (the model source)."""

    value: Callable[[argparse.Namespace], Any]


def _models_field(index: int) -> FromArgs:
    return FromArgs(lambda args: _models_source(args)[index])


class Settings(BaseModel):
    """Everything the server is configured with; each field declares its flag (``Flag``), so
    the parser and the flag-to-field map are generated from this class (``build_parser``,
    ``parse_settings``)."""

    model_config = ConfigDict(frozen=True)

    port: Annotated[int, Flag()] = Field(8500, ge=0, le=65535, description="gRPC port")
    rest_api_port: Annotated[int, Flag()] = Field(
        8501, ge=0, le=65535, description="REST port; 0 disables REST"
    )
    host: Annotated[str, Flag(ours=True)] = Field("0.0.0.0", description="address to listen on")
    model_name: Annotated[str, Flag(default=None), _models_field(0)] = Field(
        "default",
        description="model name with --model_base_path (default: env MODEL_NAME, else 'default')",
    )
    model_base_path: Annotated[Path | None, Flag(), _models_field(1)] = Field(
        None,
        description="serve one model from this directory of versions. Without it and without "
        "--model_config_file, TF Serving's image convention applies: ${MODEL_BASE_PATH}/"
        "${MODEL_NAME}, or ${MODEL_BASE_PATH}/models.config when MODEL_NAME is unset",
    )
    model_config_file: Annotated[Path | None, Flag(), _models_field(2)] = Field(
        None, description="ModelServerConfig text proto (models.config)"
    )
    model_base_path_roots: Annotated[
        tuple[Path, ...],
        Flag(name="--model_base_path_root", ours=True, append=True, default=None),
        FromArgs(lambda args: tuple(args.model_base_path_root or ())),
    ] = Field(
        (),
        description="a directory model base paths must lie in, symlinks and '..' resolved; "
        "repeat for several. Default: the config file's directory and the parent of every "
        "start-up base path",
    )
    model_config_file_poll_wait_seconds: Annotated[float, Flag()] = Field(
        0.0, ge=0, description="re-read --model_config_file this often; 0 reads it once"
    )
    file_system_poll_wait_seconds: Annotated[float, Flag()] = Field(
        1.0, ge=0, description="look for new model versions this often; 0 looks once at start-up"
    )
    enable_batching: Annotated[bool, Flag()] = Field(
        False, description="merge concurrent requests into batches (server-side batching)"
    )
    batching: Annotated[
        BatchingSettings,
        Flag(name="--batching_parameters_file", default=None),
        FromArgs(lambda args: _batching(args.batching_parameters_file)),
    ] = Field(BatchingSettings(), description="BatchingParameters text proto")
    tensorflow_intra_op_parallelism: Annotated[int, Flag()] = Field(
        0, ge=0, description="inference threads per call; 0 = one per CPU of the process's CPU set"
    )
    tensorflow_inter_op_parallelism: Annotated[int, Flag()] = Field(
        0,
        ge=0,
        description="0 = one per CPU of the process's CPU set; openvino: its streams (0 = 1)",
    )
    grpc_max_threads: Annotated[int, Flag()] = Field(
        0, ge=0, description="inference threads; 0 = one per CPU of the process's CPU set"
    )
    inline_max_rows: Annotated[int, Flag(ours=True)] = Field(
        -1,
        ge=-1,
        description="requests of up to this many rows run on the event loop's thread, not an "
        "inference thread (without batching); -1 = the runtime's measured default (onnx 4, "
        "tensorflow 1, torch 0)",
    )
    grpc_max_concurrent_streams: Annotated[int, Flag(ours=True)] = Field(
        100,
        ge=0,
        description="HTTP/2 streams per gRPC connection (calls beyond wait in the client); "
        "0 = gRPC core's default (unlimited)",
    )
    enable_model_warmup: Annotated[bool, Flag()] = Field(
        True, description="replay the version's assets.extra/tf_serving_warmup_requests"
    )
    runtime: Annotated[
        Literal["onnx", "tensorflow", "torch", "openvino", "litert"], Flag(ours=True)
    ] = Field(
        "onnx",
        description="onnx (model.onnx), tensorflow (SavedModel), torch (model.onnx in PyTorch), "
        "openvino (model.onnx in OpenVINO, f32) or litert (model.tflite, XNNPACK)",
    )
    device: Annotated[Literal["cpu", "cuda"], Flag(ours=True)] = Field(
        "cpu", description="cpu or cuda"
    )
    cudnn_benchmark: Annotated[bool, Flag(ours=True)] = Field(
        True,
        description="torch on cuda: let cuDNN time its convolution algorithms once per shape "
        "(torch.backends.cudnn.benchmark); false: cuDNN's heuristics pick them",
    )
    event_loop: Annotated[Literal["uvloop", "asyncio"], Flag(ours=True)] = Field(
        "uvloop",
        description="uvloop (libuv, the default) or asyncio (the standard library's loop)",
    )
    workers: Annotated[int, Flag(ours=True)] = Field(
        1, ge=1, le=256, description="server processes sharing the ports"
    )
    # Set by --workers for its children: only worker 0 listens before its models are loaded, so
    # the kernel never hands a connection to a worker that cannot answer it yet.
    worker_index: Annotated[int, Flag(hidden=True)] = Field(0, ge=0)
    # Set by --workers: worker 0 creates this file once its models are loaded, and the other
    # first-start workers bind only after it exists. Otherwise a health check answered SERVING
    # by an early worker could send clients to worker 0 while it still loads (seen in CI).
    worker_ready_file: Annotated[str | None, Flag(hidden=True)] = Field(None)
    max_request_bytes: Annotated[int, Flag(ours=True)] = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="largest request accepted, gRPC message or REST body",
    )
    max_inflight_request_bytes: Annotated[int, Flag(ours=True)] = Field(
        0,
        ge=0,
        description="memory requests in flight may hold, charged before decoding (REST 26 x "
        "the body, gRPC 3.5 x the message, measured); over it requests get UNAVAILABLE / 503. "
        "0 = (the cgroup memory limit read at start, else physical memory, - 160 MiB) x 0.4 "
        "(docs/reliability.md, Squeezed)",
    )
    max_rows_per_run: Annotated[int, Flag(ours=True)] = Field(
        64,
        ge=0,
        description="larger requests (and batches) go through the runtime this many rows at a "
        "time, which bounds inference memory (one 4,096-image call left ONNX Runtime's arena "
        "1.4 GB larger, 64-row runs 22 MB, same speed per row); 0 = one call",
    )
    rest_keepalive_timeout_seconds: Annotated[float, Flag(ours=True)] = Field(
        75.0,
        gt=0,
        description="close a REST connection that has not completed a request's headers for "
        "this long: idle keep-alive and slow-header (slowloris) connections alike",
    )
    rest_body_timeout_seconds: Annotated[float, Flag(ours=True)] = Field(
        30.0,
        gt=0,
        description="time a REST client gets to send a request body; then "
        "DEADLINE_EXCEEDED / 504 and the connection is closed",
    )
    rest_max_connections: Annotated[int, Flag(ours=True)] = Field(
        0,
        ge=0,
        description="open REST connections; a new one over the cap closes the longest-idle "
        "(none idle: the new one). 0 = (RLIMIT_NOFILE - 128) / 2, at most as many as half of "
        "a tenth of the memory limit pays for at 8 KiB each",
    )
    grpc_max_concurrent_rpcs: Annotated[int, Flag(ours=True)] = Field(
        0,
        ge=0,
        description="gRPC calls in progress at once, all connections together; more are "
        "refused with RESOURCE_EXHAUSTED before their message is read (a hard bound on what "
        "gRPC core holds before admission; but calls whose answers a client never reads count "
        "too). The largest gRPC message is capped at --max_inflight_request_bytes / (2 x this, "
        "or 64 when 0). 0 = unlimited",
    )
    grpc_max_connections: Annotated[int, Flag(ours=True)] = Field(
        0,
        ge=0,
        description="open gRPC connections (gRPC core closes new ones over the cap). "
        "0 = as --rest_max_connections",
    )
    grpc_handshake_timeout_seconds: Annotated[float, Flag(ours=True)] = Field(
        5.0,
        gt=0,
        description="close a gRPC connection that has not finished its TLS / HTTP/2 handshake "
        "(gRPC core's default: 120)",
    )
    grpc_max_connection_idle_seconds: Annotated[float, Flag(ours=True)] = Field(
        300.0, ge=0, description="GOAWAY a gRPC connection without calls for this long; 0 = never"
    )
    grpc_max_connection_age_seconds: Annotated[float, Flag(ours=True)] = Field(
        0.0,
        ge=0,
        description="GOAWAY a gRPC connection this old (clients reconnect, load spreads "
        "again); 0 = never",
    )
    grpc_max_connection_age_grace_seconds: Annotated[float, Flag(ours=True)] = Field(
        30.0, ge=0, description="calls still running at the connection's age get this long"
    )
    request_timeout_seconds: Annotated[float, Flag(ours=True)] = Field(
        30.0, gt=0, description="deadline for a request without a client deadline"
    )
    shutdown_grace_seconds: Annotated[float, Flag(ours=True)] = Field(
        30.0, ge=0, description="after SIGTERM, time in-flight requests get to finish"
    )
    tls: Annotated[
        TlsSettings | None,
        Flag("SSLConfig text proto (TF Serving's)", name="--ssl_config_file", default=None),
        Flag("PEM server certificate", name="--ssl_cert_file", ours=True, default=None),
        Flag("PEM server key", name="--ssl_key_file", ours=True, default=None),
        Flag(
            "PEM CA; clients must present a cert",
            name="--ssl_client_ca_file",
            ours=True,
            default=None,
        ),
        FromArgs(_tls),
    ] = Field(None, description="server certificate and key, client CA")
    log_level: Annotated[Literal["debug", "info", "warning", "error"], Flag(ours=True)] = Field(
        "info", description="debug, info, warning or error"
    )

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
        """Threads that run inference (``--grpc_max_threads``, default: one per CPU of the
        process's CPU set)."""
        return self.grpc_max_threads or cpu_count()


def _field_flags(field: FieldInfo) -> tuple[list[Flag], FromArgs | None]:
    flags = [m for m in field.metadata if isinstance(m, Flag)]
    computed = next((m for m in field.metadata if isinstance(m, FromArgs)), None)
    return flags, computed


def _argparse_type(annotation: Any) -> Callable[[str], Any] | None:
    # Only plain numbers are converted by argparse; pydantic checks the rest (Literal, Path)
    # and names the flag when a value is wrong.
    return annotation if annotation in (int, float) else None


def build_parser() -> argparse.ArgumentParser:
    """The command line, generated from ``Settings``' fields, documented flag by flag."""
    p = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve models over the TensorFlow Serving gRPC and REST APIs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name, field in Settings.model_fields.items():
        flags, _ = _field_flags(field)
        for flag in flags:
            help_text: str | None = flag.help or field.description
            if flag.hidden:
                help_text = argparse.SUPPRESS
            elif flag.ours:
                help_text = f"{help_text} (ours)"
            default = field.default if flag.default is _FIELD_DEFAULT else flag.default
            options: dict[str, Any] = {"default": default, "help": help_text}
            if flag.append:
                options["action"] = "append"
            elif field.annotation is bool:
                options.update(type=_bool, nargs="?", const=True)
            else:
                options["type"] = _argparse_type(field.annotation)
            p.add_argument(flag.name or f"--{name}", **options)
    return p


def _flag_of(field_name: str) -> str:
    """The flag that sets field ``field_name`` (its first, for a field read from several)."""
    field = Settings.model_fields.get(field_name)
    flags = _field_flags(field)[0] if field is not None else []
    return (flags[0].name or f"--{field_name}") if flags else f"--{field_name}"


def parse_settings(argv: list[str] | None = None) -> Settings:
    """Parse flags into ``Settings``; raises ``SettingsError`` with one clear line."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        flags, computed = _field_flags(field)
        if computed is not None:
            values[name] = computed.value(args)
        elif flags:
            values[name] = getattr(args, (flags[0].name or f"--{name}").removeprefix("--"))
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = _flag_of(str(error["loc"][0])) if error["loc"] else "flags"
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
