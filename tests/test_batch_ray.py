"""The Ray backend (``engine.batch_ray``) on a real Ray cluster of this machine, its node at 127.0.0.1.

The cluster is started once for the module, on the test's own thread (``ray.init`` blocks), and the
async tests then run on asyncio under the loop watchdog: the backend must not block the loop.
The models are the ``fake`` provider of the configuration (it crosses as data), with a latency.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import BatchItem, ConfigError, Engine, EngineConfig
from engine.cli import main
from engine.recipe import EngineRecipe

try:
    import ray
except ImportError:
    if os.environ.get("CI"):
        raise AssertionError(".ci/run installs orchestrion[ray]; ray is missing") from None
    pytest.skip("Ray is not installed (pip install 'orchestrion[ray]'; .ci/run installs it)", allow_module_level=True)

from engine.batch_ray import ACTOR_PREFIX, RayBackend, RayBackendError

ROOT = Path(__file__).resolve().parent.parent
ECHO: dict[str, Any] = {
    "dsl": "orchestrion/v1", "name": "echo", "inputs": {"n": {"type": "integer"}},
    "stages": [{"type": "inline", "tasks": [{"id": "a", "model": "fast_ai", "prompt": "echo {{ n }}"}]}]}
# A model call, then a registered function that says which process ran it (or raises for n == 3).
LOOKUP: dict[str, Any] = {
    "dsl": "orchestrion/v1", "name": "lookup", "inputs": {"n": {"type": "integer"}},
    "stages": [{"type": "linear", "tasks": [
        {"id": "a", "model": "fast_ai", "prompt": "echo {{ n }}"},
        {"id": "where", "call": "lookup", "with": {"n": "{{ n }}"}}]}]}


def lookup(n: Any) -> dict[str, int]:
    """A ``call:`` function, importable by name on the workers (``tests.test_batch_ray:lookup``)."""
    if int(n) == 3:
        raise LookupError(f"no record {n}")
    return {"n": int(n), "pid": os.getpid()}


def pid_of(n: Any) -> int:
    """A ``call:`` function that says which process ran it."""
    return os.getpid()


def config(latency: float) -> EngineConfig:
    return EngineConfig.model_validate({"providers": {"dry": {"kind": "fake", "latency": latency}},
                                        "default_provider": "dry"})


async def collect(engine: Engine, workflow: Any, inputs: Any, **options: Any) -> list[BatchItem]:
    async with engine.batch(workflow, inputs, **options) as results:
        return [item async for item in results]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Ray's ObjectRefs are asyncio futures; the trio test asks for trio itself


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A Ray cluster of this machine for the module: 2 CPUs, its node at 127.0.0.1, no dashboard."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def batch_actors() -> list[str]:
    return sorted(name for name in ray.util.list_named_actors() if name.startswith(ACTOR_PREFIX))


@pytest.mark.anyio
async def test_hundreds_of_runs_each_index_once_with_the_right_outputs(cluster: None) -> None:
    total, concurrency = 400, 100
    read = 0

    def inputs() -> Iterator[dict[str, int]]:
        nonlocal read
        for n in range(total):
            read += 1
            yield {"n": n}

    engine = Engine(config(0.05))
    backend = RayBackend(actors=2, runs_per_actor=100)
    received, ahead = 0, 0
    items: list[BatchItem] = []
    async with engine.batch(ECHO, inputs(), concurrency=concurrency, backend=backend) as results:
        async for item in results:
            received += 1
            ahead = max(ahead, read - received)
            items.append(item)
    assert sorted(item.index for item in items) == list(range(total))  # each index exactly once
    assert all(item.ok and item.error is None for item in items)
    assert all(item.result is not None and item.result.outputs == {"a": f"[fast_ai] echo {item.index}"}
               for item in items)
    assert ahead <= concurrency + 32  # inputs read as runs could start (BUFFER items may wait for us)
    assert await anyio.to_thread.run_sync(batch_actors) == []  # the batch's actors are gone with it


@pytest.mark.anyio
async def test_a_failing_input_is_its_item_with_the_original_error_type(cluster: None) -> None:
    engine = Engine(config(0.01), functions={"lookup": lookup})
    inputs: list[dict[str, Any]] = [{"n": n} for n in range(6)] + [{"n": "x"}]
    items = {item.index: item for item in await collect(engine, LOOKUP, inputs, concurrency=4,
                                                         backend=RayBackend(actors=2))}
    assert sorted(items) == list(range(7))
    assert sorted(index for index, item in items.items() if item.ok) == [0, 1, 2, 4, 5]
    failed = items[3]
    assert failed.result is not None and failed.result.status == "failed"
    assert "LookupError: no record 3" in (failed.error or "")  # the function's exception, by its own type
    assert items[6].result is None and "is not of type 'integer'" in (items[6].error or "")
    pids = {item.result.outputs["where"]["pid"] for item in items.values() if item.ok and item.result}
    assert os.getpid() not in pids  # the runs ran in the actors, not here


@pytest.mark.anyio
async def test_a_workflow_file_finds_its_relative_workflow_files_on_the_actors(cluster: None, tmp_path: Path) -> None:
    (tmp_path / "inner.yaml").write_text(json.dumps(ECHO), encoding="utf-8")
    outer = {"dsl": "orchestrion/v1", "name": "outer", "inputs": {"n": {"type": "integer"}},
             "stages": [{"type": "linear", "tasks": [{"id": "inner", "workflow": "inner.yaml",
                                                       "with": {"n": "{{ n }}"}}]}]}
    (tmp_path / "outer.yaml").write_text(json.dumps(outer), encoding="utf-8")  # the actors run elsewhere
    items = await collect(Engine(config(0)), tmp_path / "outer.yaml", [{"n": n} for n in range(4)],
                          backend=RayBackend(actors=1))
    assert sorted((item.index, item.result.outputs["inner"] if item.result else item.error) for item in items) == [
        (n, {"a": f"[fast_ai] echo {n}"}) for n in range(4)]


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_an_actor_killed_mid_batch_is_restarted_and_its_runs_retried(cluster: None) -> None:
    total = 300
    engine = Engine(config(0.2), functions={"lookup": lookup})
    items: list[BatchItem] = []
    killed = ""
    inputs = ({"n": n} for n in range(total) if n != 3)  # 3 is the input that fails on purpose
    async with engine.batch(LOOKUP, inputs, concurrency=120, backend=RayBackend(actors=2)) as results:
        async for item in results:
            items.append(item)
            if len(items) == 30:  # runs in flight on both actors: kill one, Ray restarts it
                names = await anyio.to_thread.run_sync(batch_actors)
                assert len(names) == 2
                killed = names[0]
                handle = await anyio.to_thread.run_sync(ray.get_actor, killed)
                await anyio.to_thread.run_sync(functools.partial(ray.kill, handle, no_restart=False))
    assert killed
    assert sorted(item.index for item in items) == list(range(total - 1))  # each index exactly once
    assert [item.error for item in items if not item.ok] == []
    pids = {item.result.outputs["where"]["pid"] for item in items if item.result is not None}
    assert len(pids) == 3  # the two actors, and the one that came back in place of the killed one


@pytest.mark.anyio
async def test_leaving_the_block_cancels_the_remote_runs_and_ends_the_actors(cluster: None, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    engine = Engine(config(30), store=url)  # every run waits: only a cancellation ends it

    async def inputs() -> AsyncIterator[dict[str, int]]:
        for n in range(1000):
            yield {"n": n}

    begun = time.monotonic()
    with anyio.fail_after(15):
        async with engine.batch(ECHO, inputs(), concurrency=8, backend=RayBackend(actors=2)) as results:
            with anyio.move_on_after(3):  # the runs start and wait
                async for _ in results:
                    raise AssertionError("no run ends by itself")
    assert await anyio.to_thread.run_sync(batch_actors) == []
    store = await engine.run_store()
    assert store is not None
    runs = await store.list_runs(limit=100)
    assert 1 <= len(runs) <= 8  # what was in flight, no more
    assert {run.status for run in runs} == {"cancelled"}  # each recorded its end before its actor went
    await engine.aclose()
    assert time.monotonic() - begun < 15


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_is_refused_with_a_clear_error() -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(RayBackendError, match="runs on asyncio")):
        await collect(Engine(config(0)), ECHO, [{"n": 1}], backend=RayBackend())


@pytest.mark.anyio
async def test_actors_share_one_cost_cap_through_redis(cluster: None, redis_url: str) -> None:
    """Two actors, each with its own engine, spend against one cap kept in Redis: together they never
    pass it, and the caller stops starting runs once a call was refused."""
    from engine import BudgetExceededError
    from engine.resilience.cap import RedisCap
    from engine.resilience.redis_link import RedisLink

    # About 50 calls fit the cap, taking some 3 rounds of 0.3 s at 20 in flight: long enough for both actors
    # to be up and serving, however slowly the second one starts on a loaded machine.
    limit = 0.05
    priced = EngineConfig.model_validate({
        "providers": {"dry": {"kind": "fake", "latency": 0.3}},
        "models": {"fast_ai": {"provider": "dry", "input_price": 100.0}},  # about $0.001 a call, estimated
        "budget": {"max_cost_usd": limit, "storage": redis_url, "key": "ray-batch"}})
    flow = {**LOOKUP, "stages": [{"type": "linear", "tasks": [
        {"id": "a", "model": "fast_ai", "prompt": "echo {{ n }}"},
        {"id": "where", "call": "pid_of", "with": {"n": "{{ n }}"}}]}]}
    engine = Engine(priced, functions={"pid_of": pid_of}, store=None)
    items: list[BatchItem] = []
    try:
        with pytest.raises(BudgetExceededError, match="ray-batch"):
            async with engine.batch(flow, [{"n": n} for n in range(200)], concurrency=20,
                                    backend=RayBackend(actors=2, runs_per_actor=10)) as results:
                items.extend([item async for item in results])
    finally:
        await engine.aclose()  # its Redis connections too, whatever happened
    link = RedisLink(redis_url, "budget.storage")
    spent, reserved, _ = await RedisCap(link, "ray-batch", limit).status()
    await link.aclose()
    assert 0 < len(items) < 200 and any(item.ok for item in items) and not all(item.ok for item in items)
    assert spent <= limit + 1e-9 and reserved == 0.0
    assert spent == pytest.approx(sum(item.result.totals.cost_usd for item in items if item.result is not None))
    pids = {item.result.outputs["where"] for item in items if item.ok and item.result is not None}
    assert len(pids) == 2 and os.getpid() not in pids  # both actors spent, against the one cap


def test_what_cannot_cross_to_the_workers_is_refused_before_anything_runs() -> None:
    from engine.testing import FakeModel

    with pytest.raises(ConfigError, match="lambda or a function defined inside another"):
        EngineRecipe.of(Engine(config(0), functions={"f": lambda: 1}))
    with pytest.raises(ConfigError, match="given as objects"):
        EngineRecipe.of(Engine(models=FakeModel()))
    with pytest.raises(ConfigError, match="memory:"):
        EngineRecipe.of(Engine(config(0), store="memory:"))
    recipe = EngineRecipe.of(Engine(config(0), functions={"lookup": lookup}, store="", artifacts=Path("/srv/media")))
    data = recipe.to_dict()
    assert data["functions"] == {"lookup": "tests.test_batch_ray:lookup"} and data["store"] == ""
    twin = EngineRecipe.from_dict(data).build()
    assert twin.functions["lookup"] is lookup and twin.config == config(0)
    assert twin._services.artifacts == Path("/srv/media")  # generated media land where the caller said


@pytest.mark.timeout(60)  # a cluster of its own starts in about 3 s of the 5-6 this takes
def test_cli_on_a_ray_cluster_it_starts(tmp_path: Path) -> None:
    """``orchestrion batch --backend ray --address local`` in its own process: it starts a cluster of this
    machine, runs every line there, writes every result, and stops the cluster."""
    (tmp_path / "flow.yaml").write_text(json.dumps(ECHO), encoding="utf-8")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"n": n}) + "\n" for n in range(40)) + '{"n": "x"}\n')
    command = [sys.executable, "-m", "engine", "batch", "flow.yaml", "--inputs", "in.jsonl", "--out", "out.jsonl",
               "--dry-run", "--store", "none", "--concurrency", "16", "--backend", "ray", "--address", "local"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=50, check=False)
    assert done.returncode == 1, done.stderr  # the one bad line failed, the rest ran
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(41))
    ok = [line for line in lines if line["status"] == "succeeded"]
    assert len(ok) == 40 and all(line["outputs"] == {"a": f"[fast_ai] echo {line['index']}"} for line in ok)
    assert "is not of type 'integer'" in next(line for line in lines if line["index"] == 40)["error"]
    assert "batch done: 41 input(s) done, 1 failed" in done.stderr


def test_cli_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "flow.yaml").write_text(json.dumps(ECHO), encoding="utf-8")
    (tmp_path / "in.jsonl").write_text('{"n": 1}\n')
    base = ["batch", str(tmp_path / "flow.yaml"), "--inputs", str(tmp_path / "in.jsonl"), "--out",
            str(tmp_path / "out.jsonl"), "--dry-run", "--store", "none"]
    assert main([*base, "--address", "auto"]) == 2
    assert "--address is for --backend ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main([*base, "--backend", "ray"]) == 2
    assert "pip install 'orchestrion[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
