"""What the HTTP adapter costs: a one-task workflow over HTTP, against the same run in process and
against the thinnest server that makes the same model call.

Run: ``python -m tests.bench.bench_server [--quick]``. Not part of the test run: it prints medians
and min-max over several samples, and asserts nothing about time. Each server runs in its own
process (uvicorn, one worker, no access log) and the client (httpx, keep-alive) in this one, so
the two cores split client and server as they would on two machines.

1. floor: a bare FastAPI route that awaits the minimal client (`complete` returns a response at
   once) and returns its text as JSON: the HTTP stack and the framework, nothing of Orchestrion.
2. ``engine.run`` in process on the same minimal client (no HTTP): what the engine costs, with the
   workflow loaded once (as a template is) and as a dict loaded and compiled on each run (as a body is).
3. ``POST /template/bench`` on the adapter (no store): the engine plus the adapter (auth, body
   bounds, the run hub, events, the result's JSON).
4. ``POST /workflow`` with the workflow in the body: as 3, plus loading and compiling it each time.
5. As 3 with the default SQLite run store: the run, its result and events are written.
Then 500 concurrent awaited runs (``POST /workflow``, SQLite store): wall time, runs/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
from fastapi import Request  # module level: the route's annotation is resolved from here

from engine.model.client import ModelRequest, ModelResponse, Usage
from tests.support.live_server import free_port, wait_until_up

FLOW: dict[str, Any] = {"dsl": "orchestrion/v1", "name": "bench", "inputs": {"q": {"type": "string"}},
                        "stages": [{"type": "linear", "tasks": [{"id": "a", "model": "fast_ai", "prompt": "{{ q }}"}]}],
                        "outputs": {"answer": "{{ a }}"}}


class MinimalClient:
    """The thinnest model: no bookkeeping, answers at once."""

    async def complete(self, request: ModelRequest) -> ModelResponse:
        return ModelResponse("Paris", Usage(8, 1), model="minimal")  # no `stream`: answered in one piece


def serve(kind: str, port: int, folder: str) -> None:
    """The server process: ``floor`` or ``adapter`` (with ``store`` a SQLite file in ``folder``)."""
    import uvicorn
    from fastapi import FastAPI

    from engine import Engine

    if kind == "floor":
        app = FastAPI()
        client = MinimalClient()

        @app.post("/floor")
        async def floor(request: Request) -> dict[str, str]:
            body = await request.json()
            answer = await client.complete(ModelRequest("fast_ai", ()))
            return {"answer": answer.text, "q": body["q"]}

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}
    else:
        from engine.server import ServerSettings, create_app

        (Path(folder) / "templates").mkdir(exist_ok=True)
        (Path(folder) / "templates" / "bench.json").write_text(json.dumps(FLOW))
        store = f"sqlite+aiosqlite:///{folder}/runs.db" if kind == "store" else None
        engine = Engine(models=MinimalClient(), template_dirs=[Path(folder) / "templates"], store=store)
        app = create_app(engine, ServerSettings(max_runs_per_token=10_000))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextmanager
def server(kind: str) -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        process = subprocess.Popen([sys.executable, "-m", "tests.bench.bench_server", "--serve", kind, str(port),
                                    folder], env={**os.environ, "PYTHONWARNINGS": "ignore"})
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url, process)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


async def latencies(send: Callable[[int], Awaitable[None]], count: int) -> list[float]:
    """Milliseconds per request, one after another (after a warm-up)."""
    for index in range(50):
        await send(index)
    samples = []
    for index in range(count):
        start = time.perf_counter()
        await send(index)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


class RawConnection:
    """One keep-alive HTTP/1.1 connection, the thinnest client: httpx's pool, not the server, limits
    throughput with many requests in flight (the floor server measured 220 req/s through it)."""

    def __init__(self, stream: anyio.abc.ByteStream, host: str) -> None:
        self.stream, self.host, self.buffer = stream, host, b""

    async def post(self, path: str, body: Any) -> tuple[int, bytes]:
        payload = json.dumps(body).encode()
        await self.stream.send(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                               f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await self.stream.receive()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
        while len(self.buffer) < length:
            self.buffer += await self.stream.receive()
        answer, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split()[1]), answer


async def throughput(url: str, path: str, body: Callable[[int], Any], total: int, concurrency: int) -> float:
    """Requests per second with ``concurrency`` keep-alive connections, each sending in turn."""
    host, port = url.removeprefix("http://").split(":")
    counter = iter(range(total))
    start = time.perf_counter()

    async def connection() -> None:
        async with await anyio.connect_tcp(host, int(port)) as stream:
            raw = RawConnection(stream, f"{host}:{port}")
            for index in counter:
                status, answer = await raw.post(path, body(index))
                assert status == 200, answer

    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(connection)
    return total / (time.perf_counter() - start)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(label: str, runs: list[list[float]], floor: float | None = None) -> float:
    p50s = [statistics.median(run) for run in runs]
    p99s = [percentile(run, 0.99) for run in runs]
    median = statistics.median(p50s)
    ratio = f"  {median / floor:5.2f}x floor" if floor else ""
    print(f"   {label:<44} p50 {median:6.3f} ms (min {min(p50s):.3f}, max {max(p50s):.3f})  "
          f"p99 {statistics.median(p99s):6.3f} ms{ratio}")
    return median


def http_sender(client: httpx.AsyncClient, path: str, body: Callable[[int], Any]) -> Callable[[int], Awaitable[None]]:
    async def send(index: int) -> None:
        response = await client.post(path, json=body(index))
        assert response.status_code == 200, response.text

    return send


async def measure(quick: bool) -> None:
    from engine import Engine, load_workflow

    count, samples = (200, 3) if quick else (1000, 5)
    print(f"One-task workflow on a zero-latency model; {samples} samples of {count} sequential requests")
    rows: dict[str, tuple[str, Callable[[int], Any]]] = {
        "floor": ("/floor", lambda i: {"q": f"q{i}"}),
        "adapter": ("/template/bench", lambda i: {"q": f"q{i}"}),
        "workflow": ("/workflow", lambda i: {"workflow": FLOW, "inputs": {"q": f"q{i}"}}),
        "store": ("/template/bench", lambda i: {"q": f"q{i}"}),
    }
    labels = {"floor": "floor: bare FastAPI route + minimal client", "adapter": "adapter: POST /template (no store)",
              "workflow": "adapter: POST /workflow (body compiled)", "store": "adapter: POST /template, SQLite store"}
    engine = Engine(models=MinimalClient())
    loaded = load_workflow(FLOW)  # as a template is: read once, compiled once
    in_process = [await latencies(lambda i: engine.run(loaded, {"q": f"q{i}"}), count) for _ in range(samples)]
    compiled_each_time = [await latencies(lambda i: engine.run(FLOW, {"q": f"q{i}"}), count) for _ in range(samples)]
    floor = 0.0
    rates: dict[str, list[float]] = {}
    for kind, (path, body) in rows.items():
        with server("floor" if kind == "floor" else "store" if kind == "store" else "adapter") as url:
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                send = http_sender(client, path, body)
                runs = [await latencies(send, count) for _ in range(samples)]
                if kind == "floor":
                    floor = report(labels[kind], runs)
                    report("engine.run in process, workflow loaded once", in_process, floor)
                    report("engine.run in process, dict loaded each time", compiled_each_time, floor)
                else:
                    report(labels[kind], runs, floor)
                rates[kind] = [await throughput(url, path, body, count * 2, 32) for _ in range(samples)]
                if kind == "store":
                    load = [await load_500(url) for _ in range(samples)]
    print(f"Throughput, 32 keep-alive connections ({count * 2} requests per sample)")
    for kind, values in rates.items():
        print(f"   {labels[kind]:<44} {statistics.median(values):7.0f} req/s (min {min(values):.0f}, "
              f"max {max(values):.0f})")
    print("500 concurrent POST /workflow runs, SQLite store")
    print(f"   wall {statistics.median(load):.2f} s (min {min(load):.2f}, max {max(load):.2f}), "
          f"{500 / statistics.median(load):.0f} runs/s")


async def load_500(url: str) -> float:
    """Seconds for 500 runs at once, each on its own connection."""
    start = time.perf_counter()
    await throughput(url, "/workflow", lambda index: {"workflow": FLOW, "inputs": {"q": f"load{index}"}}, 500, 500)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", nargs=3, metavar=("KIND", "PORT", "FOLDER"))
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2])
        return
    anyio.run(measure, args.quick)


if __name__ == "__main__":
    main()
