"""Assembles the server from the settings and runs it until SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import ssl
import tempfile
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from serving import metrics
from serving.errors import ServingError
from serving.model.admission import (
    Admission,
    budget_from_memory,
    grpc_max_message_bytes,
    memory_limit_bytes,
)
from serving.model.config import ConfigError, ModelConfig, load_config_file
from serving.model.manager import ModelManager
from serving.model.service import PredictionService, validate_inputs
from serving.model.versions import ServableVersion
from serving.model.warmup import read_prediction_logs
from serving.paths import default_roots
from serving.runtimes import Runtime, RuntimeOptions, load_runtime
from serving.settings import Settings, TlsSettings
from serving.transport.connections import connection_cap, raise_descriptor_limit
from serving.transport.grpc_api import Health, build_server, connection_options
from serving.transport.rest_api import RestApi, start_rest
from serving.transport.tensor_codec import to_numpy

log = logging.getLogger("serving")

# Requests up to this many rows run on the event loop thread, where handing the work to a thread
# and back costs more than it saves: ONNX Runtime's call takes tens of microseconds up to 4 rows.
# TensorFlow's batch-1 call (~0.4 ms) runs there too, on its single-threaded executor
# (runtimes.tensorflow): 1.34 -> 1.15 ms at c1, 1,010 -> 1,149 req/s at c8 in every one of 4
# server processes. On TF's default executor inline was bimodal from one process to the next
# (docs/performance.md). --inline_max_rows overrides.
INLINE_MAX_ROWS = {"onnx": 4, "tensorflow": 1, "torch": 0}


class StartupError(RuntimeError):
    """The server cannot start (one line for the operator)."""


def runtime_options(settings: Settings) -> RuntimeOptions:
    """Runtime settings from the server settings."""
    hint = settings.batching.allowed_batch_sizes if settings.enable_batching else ()
    return RuntimeOptions(
        intra_op_threads=settings.tensorflow_intra_op_parallelism,
        inter_op_threads=settings.tensorflow_inter_op_parallelism,
        device=settings.device,
        batch_sizes_hint=tuple(hint),
        cudnn_benchmark=settings.cudnn_benchmark,
    )


def inline_max_rows(settings: Settings) -> int:
    """Requests up to this many rows run on the event loop thread, larger ones on an inference
    thread (without batching): ``--inline_max_rows``, else :data:`INLINE_MAX_ROWS` of the
    runtime. The load tester's in-process floor calls ``predict`` the same way."""
    if settings.inline_max_rows >= 0:
        return settings.inline_max_rows
    return INLINE_MAX_ROWS.get(settings.runtime, 0)


def model_configs(settings: Settings) -> list[ModelConfig]:
    """The models to serve, from ``--model_config_file`` or ``--model_name/--model_base_path``."""
    if settings.model_config_file is not None:
        return load_config_file(settings.model_config_file)
    assert settings.model_base_path is not None
    return [ModelConfig(settings.model_name, settings.model_base_path.resolve())]


def warm_up(version: ServableVersion, path: Path, max_request_bytes: int) -> int:
    """Replay the version's warm-up Predict requests straight into its runtime."""
    runtime: Runtime | None = version.runtime
    assert runtime is not None
    count = 0
    for record in read_prediction_logs(path):
        if not record.HasField("predict_log"):
            continue  # classify/regress warm-up records have no Predict signature here
        request = record.predict_log.request
        signature_name = request.model_spec.signature_name or "serving_default"
        signature = runtime.signatures.get(signature_name)
        if signature is None:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"warm-up request names unknown signature {signature_name!r}",
            )
        inputs = {k: to_numpy(v, k, max_request_bytes) for k, v in request.inputs.items()}
        if validate_inputs(signature, inputs):
            runtime.predict(signature_name, inputs, list(request.output_filter) or None)
        count += 1
    return count


def _tls_files(tls: TlsSettings, directory: Path) -> tuple[Path, Path, Path | None]:
    cert, key = directory / "server.crt", directory / "server.key"
    cert.write_text(tls.server_cert)
    key.write_text(tls.server_key)
    key.chmod(0o600)
    ca = None
    if tls.custom_ca:
        ca = directory / "ca.crt"
        ca.write_text(tls.custom_ca)
    return cert, key, ca


def rest_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """TLS for the REST port from the same certificate as gRPC (client certs when asked)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="serving-tls-") as tmp:
        cert, key, ca = _tls_files(tls, Path(tmp))
        context.load_cert_chain(cert, key)
        if ca is not None:
            context.load_verify_locations(cafile=str(ca))
    if tls.client_verify:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """gRPC server credentials (mutual TLS when ``client_verify``)."""
    return grpc.ssl_server_credentials(
        [(tls.server_key.encode(), tls.server_cert.encode())],
        root_certificates=tls.custom_ca.encode() if tls.custom_ca else None,
        require_client_auth=tls.client_verify,
    )


@dataclass(frozen=True)
class Limits:
    """The protections' values derived at start-up from the flags and what the process has
    (its memory limit, its descriptor limit): logged once, used by both transports."""

    inflight_bytes: int
    memory_bytes: int
    memory_source: str
    descriptors: int
    rest_connections: int
    grpc_connections: int
    grpc_max_message_bytes: int


def derive_limits(settings: Settings) -> Limits:
    """``--max_inflight_request_bytes``, ``--rest_max_connections`` and
    ``--grpc_max_connections``, or their defaults from the cgroup memory limit and
    ``RLIMIT_NOFILE`` (raised to its hard limit first)."""
    memory, source = memory_limit_bytes()
    descriptors = raise_descriptor_limit()
    budget = settings.max_inflight_request_bytes or budget_from_memory(memory)
    return Limits(
        inflight_bytes=budget,
        memory_bytes=memory,
        memory_source=source,
        descriptors=descriptors,
        rest_connections=connection_cap(settings.rest_max_connections, descriptors, memory),
        grpc_connections=connection_cap(settings.grpc_max_connections, descriptors, memory),
        grpc_max_message_bytes=grpc_max_message_bytes(
            budget, settings.max_request_bytes, settings.grpc_max_concurrent_rpcs
        ),
    )


class Server:
    """One server process: gRPC + REST on one event loop, models, batching, polling."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = asyncio.Event()
        self._shutting_down = False
        self._started = False
        options = runtime_options(settings)
        self._executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="infer")
        batch_executor = None
        if settings.enable_batching:
            batch_executor = ThreadPoolExecutor(
                settings.batching.num_batch_threads, thread_name_prefix="batch"
            )
        self._batch_executor = batch_executor

        def load(path: Path) -> Runtime:
            return load_runtime(settings.runtime, path, options)

        def warmup(version: ServableVersion, path: Path) -> int:
            return warm_up(version, path, settings.max_request_bytes)

        self.manager = ModelManager(load, warmup=warmup if settings.enable_model_warmup else None)
        self.limits = derive_limits(settings)
        self.service = PredictionService(
            self.manager,
            self._executor,
            batching=settings.batching if settings.enable_batching else None,
            batch_executor=batch_executor,
            inline_max_rows=inline_max_rows(settings),
            admission=Admission(self.limits.inflight_bytes),
            max_rows_per_run=settings.max_rows_per_run,
        )
        self.health = Health()
        self._background: set[asyncio.Task[None]] = set()

    def request_stop(self) -> None:
        """Begin the graceful shutdown (signal handler)."""
        self._stop.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh_health(self) -> None:
        # NOT_SERVING until the initial configuration is fully loaded, and again once draining.
        await self.health.update(self.service, self._shutting_down or not self._started)

    @staticmethod
    async def _flush_metrics(every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            metrics.flush()

    async def _poll_files(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self.manager.poll()

    async def _poll_config(self, path: Path, every_s: float) -> None:
        last = path.read_text()
        while True:
            await asyncio.sleep(every_s)
            try:
                text = path.read_text()
                if text == last:
                    continue
                configs = load_config_file(path)
                self.manager.check_config(configs)
            except (OSError, ConfigError) as exc:
                log.error("ignoring unreadable model config %s: %s", path, exc)
                continue
            last = text
            log.info("model config %s changed: reloading", path)
            await self.manager.apply_config(configs, wait=False)

    async def run(self) -> int:
        """Serve until asked to stop; return the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        configs = self._checked_configs()
        grpc_server, rest_runner = await self._start(configs)
        log.info(
            "serving %s with the %s runtime",
            ", ".join(self.manager.model_names),
            self.settings.runtime,
        )
        self._start_background()
        await self._stop.wait()
        await self._drain(grpc_server, rest_runner)
        log.info("stopped")
        return 0

    def _checked_configs(self) -> list[ModelConfig]:
        """The start-up model configuration, its base paths checked against the allowed roots."""
        settings = self.settings
        try:
            configs = model_configs(settings)
            self.manager.allowed_roots = settings.model_base_path_roots or default_roots(
                settings.model_config_file, [c.base_path for c in configs]
            )
            self.manager.check_config(configs)
        except ConfigError as exc:
            flag = "--model_config_file" if settings.model_config_file else "--model_base_path"
            raise StartupError(f"{flag}: {exc}") from exc
        return configs

    async def _start(
        self, configs: list[ModelConfig]
    ) -> tuple[grpc.aio.Server, web.AppRunner | None]:
        """Load the models and listen, in the order --workers needs; health then answers."""
        settings = self.settings
        # A lone server (or worker 0) listens first so health answers NOT_SERVING while models
        # load, as TF Serving's does; the other --workers listen only once loaded, because the
        # kernel spreads new connections over every process bound to the shared ports.
        listen_first = settings.worker_index == 0
        self.manager.on_change = lambda: self._spawn(self._refresh_health())
        if listen_first:
            grpc_server, rest_runner = await self._listen()
        try:
            await self._load_initial(configs)
        except StartupError:
            if listen_first:
                await self._stop_listening(grpc_server, rest_runner, grace=0)
            raise
        self._started = True
        # Everything loaded so far (libraries, models) lives as long as the process: moved out
        # of the collector's generations, full collections no longer walk it under load.
        gc.freeze()
        if not listen_first:
            await self._wait_for_first_worker()
            grpc_server, rest_runner = await self._listen()
        elif settings.worker_ready_file:
            Path(settings.worker_ready_file).touch()
        await self._refresh_health()
        return grpc_server, rest_runner

    def _start_background(self) -> None:
        """The timers: metrics flushing (--workers), model file and config polling."""
        settings = self.settings
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # --workers: a scrape is answered by one worker reading every worker's files, so
            # each worker writes its deferred request metrics out on a timer.
            self._spawn(self._flush_metrics(metrics.FLUSH_SECONDS))
        if settings.file_system_poll_wait_seconds > 0:
            self._spawn(self._poll_files(settings.file_system_poll_wait_seconds))
        if settings.model_config_file and settings.model_config_file_poll_wait_seconds > 0:
            self._spawn(
                self._poll_config(
                    settings.model_config_file, settings.model_config_file_poll_wait_seconds
                )
            )

    async def _drain(self, grpc_server: grpc.aio.Server, rest_runner: web.AppRunner | None) -> None:
        """The graceful shutdown: health flips first (load balancers stop routing), then no new
        RPCs are taken while in-flight ones finish within the grace period."""
        log.info("shutting down: draining in-flight requests")
        self._shutting_down = True
        await self._refresh_health()
        for task in list(self._background):
            task.cancel()
        grace = self.settings.shutdown_grace_seconds
        await self._stop_listening(grpc_server, rest_runner, grace)
        with suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.manager.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._batch_executor is not None:
            self._batch_executor.shutdown(wait=False, cancel_futures=True)
        metrics.flush()  # the last requests' metrics, before the process (and its files) end

    async def _wait_for_first_worker(self) -> None:
        """With --workers: wait until worker 0 has loaded its models (its ready file exists), so
        no process answers SERVING while another bound to the same ports still loads."""
        ready_file = self.settings.worker_ready_file
        if not ready_file:
            return
        path = Path(ready_file)
        while not path.exists() and not self._stop.is_set():
            await asyncio.sleep(0.05)

    async def _listen(self) -> tuple[grpc.aio.Server, web.AppRunner | None]:
        """Bind and start the gRPC server and (unless disabled) the REST server."""
        settings = self.settings
        grpc_server = build_server(
            self.service,
            self.health,
            max_request_bytes=self.limits.grpc_max_message_bytes,
            timeout_s=settings.request_timeout_seconds,
            max_concurrent_streams=settings.grpc_max_concurrent_streams,
            max_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
            connection_options=connection_options(
                max_connections=self.limits.grpc_connections,
                handshake_timeout_s=settings.grpc_handshake_timeout_seconds,
                max_idle_s=settings.grpc_max_connection_idle_seconds,
                max_age_s=settings.grpc_max_connection_age_seconds,
                max_age_grace_s=settings.grpc_max_connection_age_grace_seconds,
            ),
        )
        address = f"{settings.host}:{settings.port}"
        if settings.tls is not None:
            bound = grpc_server.add_secure_port(address, grpc_credentials(settings.tls))
        else:
            bound = grpc_server.add_insecure_port(address)
        if not bound:
            raise StartupError(f"--port: cannot listen on {address}")
        await self._refresh_health()
        await grpc_server.start()
        rest_runner = None
        if settings.rest_api_port:
            context = rest_ssl_context(settings.tls) if settings.tls else None
            api = RestApi(
                self.service,
                settings.max_request_bytes,
                settings.request_timeout_seconds,
                settings.rest_body_timeout_seconds,
            )
            try:
                rest_runner = await start_rest(
                    api,
                    settings.host,
                    settings.rest_api_port,
                    context,
                    keepalive_timeout_s=settings.rest_keepalive_timeout_seconds,
                    max_connections=self.limits.rest_connections,
                )
            except OSError as exc:
                await grpc_server.stop(0)
                raise StartupError(
                    f"--rest_api_port: cannot listen on {settings.host}:{settings.rest_api_port}: "
                    f"{exc.strerror}"
                ) from exc
        log.info(
            "listening: gRPC %s, REST %s",
            address,
            f"{settings.host}:{settings.rest_api_port}" if rest_runner else "off",
        )
        limits = self.limits
        log.info(
            "limits: %d MiB of requests in flight (memory %d MiB from %s), gRPC messages up "
            "to %d KiB; connections REST %d, gRPC %d (RLIMIT_NOFILE %d)",
            limits.inflight_bytes >> 20,
            limits.memory_bytes >> 20,
            limits.memory_source,
            limits.grpc_max_message_bytes >> 10,
            limits.rest_connections,
            limits.grpc_connections,
            limits.descriptors,
        )
        return grpc_server, rest_runner

    @staticmethod
    async def _stop_listening(
        grpc_server: grpc.aio.Server, rest_runner: web.AppRunner | None, grace: float
    ) -> None:
        stops = [grpc_server.stop(grace)]
        if rest_runner is not None:
            stops.append(rest_runner.cleanup())
        await asyncio.gather(*stops, return_exceptions=True)

    async def _load_initial(self, configs: list[ModelConfig]) -> None:
        """Load the start-up configuration; StartupError when a model has no loadable version."""
        await self.manager.apply_config(configs, wait=True)
        missing = [name for name in self.manager.model_names if not self.manager.is_available(name)]
        if missing:
            details = "; ".join(self._load_errors(name) for name in missing)
            raise StartupError(f"no version could be loaded for {', '.join(missing)}: {details}")

    def _load_errors(self, name: str) -> str:
        model = self.manager.model(name)
        errors = [v.error.message for v in model.versions.values() if v.error is not None]
        if errors:
            return f"{name}: {errors[-1]}"
        return f"{name}: no version directory under {model.config.base_path}"


def configure_logging(level: str) -> None:
    """One-line log records on stderr."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    # Reduce noise from libraries at info level.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run_server(settings: Settings) -> int:
    """Run one server process to completion."""
    configure_logging(settings.log_level)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    server = Server(settings)
    if settings.event_loop == "uvloop":
        import uvloop

        return uvloop.run(server.run())
    return asyncio.run(server.run())
