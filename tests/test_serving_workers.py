"""``--workers``: a worker killed under load is restarted while the others keep serving (only its
in-flight requests fail); a crash loop stops the server with a non-zero status."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
import psutil
import pytest

from serving.client import ServingClient
from serving.process import ServerProcess

CLIENT_THREADS = 8


def _children(server: ServerProcess) -> list[psutil.Process]:
    assert server.process is not None
    return psutil.Process(server.process.pid).children()


def _listening(pid: int, port: int) -> bool:
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections)


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_killed_worker_restarts_while_the_others_serve(model_repository, mnist, tmp_path):
    images = (mnist.x_test[:1].astype(np.float32) / 255.0)[..., None]
    log_path = tmp_path / "server.log"
    server = ServerProcess(model_repository / "models.config", ["--workers=2"], log_path=log_path)
    with server:
        workers = _children(server)
        assert len(workers) == 2
        _wait_for(
            lambda: all(_listening(w.pid, server.grpc_port) for w in workers), 60, "both workers"
        )
        stop = threading.Event()
        ok = [0] * CLIENT_THREADS
        failed = [0] * CLIENT_THREADS
        ok_after_kill = [0] * CLIENT_THREADS
        killed = threading.Event()

        def load(index: int) -> None:
            # One channel (one connection) and one request in flight per thread: a thread
            # connected to the killed worker loses at most the request it had in flight.
            with ServingClient(server.grpc_target) as client:
                while not stop.is_set():
                    try:
                        client.predict("separable", images)
                    except grpc.RpcError:
                        failed[index] += 1
                        continue
                    ok[index] += 1
                    if killed.is_set():
                        ok_after_kill[index] += 1

        threads = [threading.Thread(target=load, args=(i,)) for i in range(CLIENT_THREADS)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(2.0)
            victim = workers[1]
            victim.send_signal(signal.SIGKILL)
            killed.set()
            victim.wait(10)

            def replaced() -> bool:
                pids = [w.pid for w in _children(server)]
                return len(pids) == 2 and victim.pid not in pids

            _wait_for(replaced, 30, "the worker to be restarted")
            (newcomer,) = [w for w in _children(server) if w.pid != workers[0].pid]
            _wait_for(lambda: _listening(newcomer.pid, server.grpc_port), 120, "it to listen")
            time.sleep(1.0)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert server.process is not None and server.process.poll() is None
        # Only the requests in flight on the killed worker failed: at most one per thread.
        assert sum(failed) <= CLIENT_THREADS, (failed, ok)
        assert sum(ok_after_kill) > 0
        assert all(n > 0 for n in ok), ok
        # The restarted worker takes new connections and answers them.
        clients = [ServingClient(server.grpc_target) for _ in range(20)]
        try:
            for client in clients:
                assert client.predict("separable", images).classes.shape == (1,)
            established = [
                c
                for c in newcomer.net_connections(kind="tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.grpc_port
            ]
            assert established, "no connection reached the restarted worker"
        finally:
            for client in clients:
                client.close()
        assert workers[0].is_running()
    assert server.process.returncode == 0
    text = log_path.read_text()
    assert f"(pid {victim.pid}) killed by SIGKILL; restarted as pid {newcomer.pid}" in text


@pytest.mark.slow
def test_crash_loop_stops_the_server(model_repository, tmp_path):
    log_path = tmp_path / "server.log"
    server = ServerProcess(model_repository / "models.config", ["--workers=2"], log_path=log_path)
    with server:
        assert server.process is not None
        killed: set[int] = set()
        deadline = time.monotonic() + 120
        while server.process.poll() is None and time.monotonic() < deadline:
            for worker in _children(server):
                if worker.pid not in killed:
                    killed.add(worker.pid)
                    worker.send_signal(signal.SIGKILL)
            time.sleep(0.05)
        code = server.process.wait(30)
    assert code == 1
    assert len(killed) >= 5
    assert "crash loop: 5 worker deaths within 60 s" in log_path.read_text()
