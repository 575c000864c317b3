from __future__ import annotations

import asyncio
import functools
import gc
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from inspect import iscoroutinefunction
from pathlib import Path
from typing import Any

import pytest
import sniffio
from hypothesis import settings

pytest_plugins = ["pytester"]  # tests/test_loop_watchdog.py runs the loop watchdog on a test made to block

# In CI the property tests are derandomised, so a run's verdict does not depend on luck; locally
# they explore new examples on every run (`--hypothesis-seed` replays one).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent
# `orchestrion` commands keep runs in a SQLite file in the user's data folder: in the tests, a folder of
# their own (inherited by the commands they start as processes), never the real one.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="orchestrion-test-data-")


@pytest.fixture
def write(tmp_path: Path):
    """Write a workflow file into a temporary folder and return its path."""

    def _write(text: str, name: str = "flow.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return _write


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Runtime tests run on both of anyio's backends."""
    return str(request.param)


# -- test doubles: a fake clock, a real redis-server ---------------------------------------------

class FakeClock:
    """A UTC clock that moves only when told (``Breakers(clock=...)``): timing tests never sleep."""

    def __init__(self, start: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> None:
        self.now = start  # a whole second: Redis keeps breaker open times in whole seconds

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A fresh redis-server on a free port, without persistence, for the test alone."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            raise AssertionError(".ci/run installs redis-server; it is missing")
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- the event-loop watchdog: an async test fails if its loop stops answering for too long ---------

# Measured on 2 cores, garbage collection left out: the worst stall of a whole run is 83 ms idle
# (p99 63 ms: loading YAML, building clients); a 300 ms block measures 290-299 ms. Time the loop
# thread spent runnable but off its CPU is left out too: with three CPU hogs beside them, 25 of
# 147 template and scheduler tests passed a 60 ms limit on that alone (CI failed on a 162 ms
# one), and none does with it left out. ORCHESTRION_LOOP_STALL_MS sets another limit (100 on a quiet runner).
STALL_LIMIT_MS = float(os.environ.get("ORCHESTRION_LOOP_STALL_MS", "150"))
PROBE_INTERVAL_S = 0.01

Post = Callable[[Callable[[], None]], object]


def _thread_safe_post() -> Post:
    """How another thread runs a callback in the running event loop."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    return asyncio.get_running_loop().call_soon_threadsafe


class LoopWatchdog:
    """How late the event loop runs a callback posted from another thread.

    A daemon thread posts a no-op into the loop every 10 ms and waits for it to run: the delay
    is how long the loop was busy elsewhere, a blocking call if it is long. When a probe is
    later than the limit, the thread samples the loop thread's stack, to say what blocked.
    It watches only while the test's own coroutine runs (``watching``): between pytest's
    phases the loop is parked, and sync fixtures (a model load, a server start) are not stalls.
    Pauses of the garbage collector are left out: a full collection of this suite's heap takes
    100-300 ms and lands on whichever test allocates at the time, whatever that test does.
    """

    def __init__(self, limit_ms: float = STALL_LIMIT_MS, interval: float = PROBE_INTERVAL_S) -> None:
        self.limit_ms = limit_ms
        self.interval = interval
        self.worst_ms = 0.0
        self.worst_stack = ""  # what the loop ran during the worst stall, if that passed the limit
        self.gc_ms = 0.0  # garbage collection in the loop thread, not counted
        self._stop = threading.Event()
        self._posted_at: float | None = None  # the probe on its way, if any
        self._stack = ""  # sampled while that probe was late
        self._loop_thread = 0
        self._gc_pauses: list[tuple[float, float]] = []
        self._gc_started: float | None = None
        self._schedstat = ""  # the loop thread's scheduler counters, if this system has them
        self._waited_at_post = 0.0  # seconds the loop thread had waited for a CPU when the probe left

    @asynccontextmanager
    async def watching(self) -> AsyncIterator[LoopWatchdog]:
        self._loop_thread = threading.get_ident()
        self._schedstat = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        gc.callbacks.append(self._on_gc)
        thread = threading.Thread(target=self._probe, args=(_thread_safe_post(),), daemon=True,
                                  name="loop-watchdog")
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._note(self._posted_at)  # a stall at the very end, whose probe has not run yet
            gc.callbacks.remove(self._on_gc)

    def _probe(self, post: Post) -> None:
        while not self._stop.wait(self.interval):
            ran = threading.Event()
            self._stack = ""
            self._waited_at_post = self._cpu_wait()
            posted_at = self._posted_at = time.monotonic()
            try:
                post(functools.partial(self._arrived, posted_at, ran))
            except RuntimeError:  # the loop is closed: the test is over
                return
            self._wait_for(ran, posted_at)

    def _wait_for(self, ran: threading.Event, posted_at: float) -> None:
        while not ran.wait(self.interval) and not self._stop.is_set():
            if not self._stack and self._stall_ms(posted_at) > self.limit_ms:
                self._stack = self._sample()

    def _sample(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        return "".join(traceback.format_stack(frame, limit=12)) if frame is not None else ""

    def _arrived(self, posted_at: float, ran: threading.Event) -> None:
        if not self._stop.is_set():  # a probe run by a later loop says nothing about this test
            self._posted_at = None
            self._note(posted_at)
        ran.set()

    def _note(self, posted_at: float | None) -> None:
        if posted_at is None:
            return
        stall_ms = self._stall_ms(posted_at)
        if stall_ms > self.worst_ms:
            self.worst_ms, self.worst_stack = stall_ms, self._stack

    def _stall_ms(self, posted_at: float) -> float:
        """How long the probe has waited, less the collector's pauses and the loop thread's
        wait for a CPU in the meantime: neither is the loop's own code blocking."""
        now = time.monotonic()
        pauses = [*self._gc_pauses, (self._gc_started, now)] if self._gc_started is not None else self._gc_pauses
        collecting = sum(max(0.0, min(stop, now) - max(start, posted_at)) for start, stop in pauses)
        descheduled = max(0.0, self._cpu_wait() - self._waited_at_post)
        return max(0.0, now - posted_at - collecting - descheduled) * 1000

    def _cpu_wait(self) -> float:
        """Seconds the loop thread has spent runnable but waiting for a CPU (Linux schedstat):
        on a loaded machine the kernel, not the test, holds the loop for that long."""
        try:
            with open(self._schedstat) as counters:
                return int(counters.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):  # no schedstat here: count every delay
            return 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if threading.get_ident() != self._loop_thread:
            return
        if phase == "start":
            self._gc_started = time.monotonic()
        elif self._gc_started is not None:
            self._gc_pauses.append((self._gc_started, time.monotonic()))
            self.gc_ms += (self._gc_pauses[-1][1] - self._gc_started) * 1000
            self._gc_started = None


def _watched(test: Callable[..., Awaitable[Any]], watchdog: LoopWatchdog) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(test)
    async def run(**kwargs: Any) -> Any:
        async with watchdog.watching():
            return await test(**kwargs)

    return run


def _is_watched(item: pytest.Function) -> bool:
    if "anyio_backend" not in item.fixturenames or not iscoroutinefunction(item.obj):
        return False
    if hasattr(item.obj, "hypothesis"):  # each example is its own loop run; none is async yet
        return False
    marker = item.get_closest_marker("allow_blocking")
    if marker is not None and not (marker.args or marker.kwargs.get("reason")):
        pytest.fail("@pytest.mark.allow_blocking needs a reason: why may this test block its loop?", pytrace=False)
    return marker is None


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    if not _is_watched(pyfuncitem):
        return (yield)
    test, watchdog = pyfuncitem.obj, LoopWatchdog()
    pyfuncitem.obj = _watched(test, watchdog)
    try:
        outcome = yield  # a test that fails on its own keeps its own failure
    finally:
        pyfuncitem.obj = test
    pyfuncitem.user_properties += [("loop_stall_ms", round(watchdog.worst_ms)), ("loop_gc_ms", round(watchdog.gc_ms))]
    if watchdog.worst_ms > watchdog.limit_ms:
        pytest.fail(_stall_message(watchdog), pytrace=False)
    return outcome


def _stall_message(watchdog: LoopWatchdog) -> str:
    stack = watchdog.worst_stack
    where = f"\nThe loop was running this when the limit passed:\n{stack}" if stack else ""
    return (f"the event loop was blocked for {watchdog.worst_ms:.0f} ms (limit {watchdog.limit_ms:.0f} ms, "
            "garbage collection and waits for a CPU left out): "
            "something in it calls blocking code. Run that in a worker thread (anyio.to_thread.run_sync), "
            f"or mark the test @pytest.mark.allow_blocking(reason) if it blocks on purpose.{where}")
