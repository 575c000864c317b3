"""The loop watchdog of tests/conftest.py fails an async test that blocks its event loop, and
not one whose loop thread waited for a CPU that another process held."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT

INNER_TESTS = '''
import gc
import os
import subprocess
import sys
import time

import anyio
import pytest

pytestmark = pytest.mark.anyio


async def test_blocks() -> None:
    time.sleep(0.3)


async def test_blocks_at_the_very_end() -> None:
    await anyio.sleep(0.05)
    time.sleep(0.3)


async def test_waits_without_blocking() -> None:
    await anyio.sleep(0.3)
    await anyio.to_thread.run_sync(time.sleep, 0.3)


async def test_a_long_garbage_collection_is_left_out() -> None:
    def slow(phase: str, info: dict) -> None:
        if phase == "start":
            time.sleep(0.3)  # as long as a full collection of a big heap

    gc.callbacks.append(slow)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(slow)


HOG = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))  # ahead of every normal thread
started = time.monotonic()
while time.monotonic() - started < 0.3:
    pass
"""


async def test_held_off_its_cpu_by_another_process() -> None:
    cpu = min(os.sched_getaffinity(0))
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})  # this thread, the loop's, shares its CPU with the hog
    try:
        hog = subprocess.Popen([sys.executable, "-c", HOG, str(cpu)], stderr=subprocess.PIPE)
        for _ in range(60):  # the loop keeps running while the hog holds the CPU
            await anyio.sleep(0.01)
        await anyio.to_thread.run_sync(hog.wait)
    finally:
        os.sched_setaffinity(0, everywhere)
    if hog.returncode:
        pytest.skip("no real-time priority here: " + hog.stderr.read().decode()[-200:])


@pytest.mark.allow_blocking("proves the opt-out")
async def test_blocks_on_purpose() -> None:
    time.sleep(0.3)


@pytest.mark.allow_blocking
async def test_opts_out_without_a_reason() -> None:
    pass


def test_sync_tests_are_not_watched() -> None:
    time.sleep(0.3)
'''


def test_a_test_that_blocks_its_loop_fails_on_both_backends(pytester: pytest.Pytester,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the inner run loads this suite's conftest.py
    monkeypatch.setenv("COLUMNS", "400")  # whole lines in the short summary
    monkeypatch.setenv("ORCHESTRION_LOOP_STALL_MS", "150")  # whatever this run's limit is
    pytester.makeconftest('pytest_plugins = ["tests.conftest"]')
    pytester.makeini("[pytest]\nmarkers = allow_blocking(reason): blocks on purpose\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    outcome = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    held_off = outcome.parseoutcomes().get("skipped", 0)  # without real-time priority, skipped
    outcome.assert_outcomes(passed=9 - held_off, failed=6, skipped=held_off)
    for backend in ["asyncio", "trio"]:
        outcome.stdout.fnmatch_lines([
            f"FAILED test_inner.py::test_blocks[[]{backend}[]] - *the event loop was blocked for * ms*",
            f"FAILED test_inner.py::test_blocks_at_the_very_end[[]{backend}[]] - *the event loop was blocked*",
            f"FAILED test_inner.py::test_opts_out_without_a_reason[[]{backend}[]] - *needs a reason*",
        ], consecutive=False)
    stalls = [int(ms) for ms in re.findall(r"^FAILED .* blocked for (\d+) ms", outcome.stdout.str(), re.MULTILINE)]
    assert len(stalls) == 4 and all(250 <= ms < 1000 for ms in stalls), stalls  # the 300 ms sleep, measured
