"""What HTTP alone costs a REST body: an aiohttp server on uvloop that reads the body as
serving/transport/rest_api.py does (``readexactly(Content-Length)``) and answers ``{}``, driven
one request at a time by an aiohttp client posting the benchmark's row-format bodies.

    python -m benchmarks.rest_transfer_cost [--requests 400] [--images 1,32]

Prints, per body, the client's p50 round trip and the server's median time in the read (wall
and thread CPU): the part of a REST request that no decoder change can remove.

Produced results/cpu-2core/data-plane-2026-11-30d/rest-transfer-cost.txt as commit 24ef766's
script there; since 3fc467c the body comes from ``benchmarks.serving.rest_row_body`` (the same
bytes) and the port from the harness (results/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import statistics
import time
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from benchmarks.serving import rest_row_body
from harness import free_port


def _serve(port: int) -> None:
    reads: list[tuple[float, float]] = []

    async def echo(request: web.Request) -> web.Response:
        wall, cpu = time.perf_counter(), time.thread_time()
        await request.content.readexactly(request.content_length or 0)
        reads.append((time.perf_counter() - wall, time.thread_time() - cpu))
        return web.Response(body=b"{}", content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        walls, cpus = zip(*reads, strict=True) if reads else ((0.0,), (0.0,))
        body = {"read_wall_ms": statistics.median(walls) * 1e3}
        body["read_cpu_ms"] = statistics.median(cpus) * 1e3
        reads.clear()
        return web.json_response(body)

    async def main() -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/echo", echo)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    uvloop.run(main())


async def _drive(port: int, images: int, requests: int) -> dict[str, Any]:
    body = rest_row_body(images)
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(requests + 20):
            started = time.perf_counter()
            async with session.post(f"http://127.0.0.1:{port}/echo", data=body) as reply:
                await reply.read()
            latencies.append(time.perf_counter() - started)
        async with session.get(f"http://127.0.0.1:{port}/stats") as reply:
            server = await reply.json()
    return {
        "images": images,
        "body_kb": len(body) / 1e3,
        "p50_ms": statistics.median(latencies[20:]) * 1e3,
        **server,
    }


def main(argv: list[str] | None = None) -> int:
    """Start the server process, drive each body, print the figures."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.rest_transfer_cost", description=__doc__.splitlines()[0]
    )
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--images", default="1,32")
    args = p.parse_args(argv)
    port = free_port()
    server = mp.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    server.start()
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        for images in (int(n) for n in args.images.split(",")):
            figures = asyncio.run(_drive(port, images, args.requests))
            print(
                f"{figures['images']:4d} images, body {figures['body_kb']:8.1f} KB: "
                f"client p50 {figures['p50_ms']:.3f} ms, server read "
                f"{figures['read_wall_ms']:.3f} ms wall / {figures['read_cpu_ms']:.3f} ms CPU"
            )
    finally:
        server.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
