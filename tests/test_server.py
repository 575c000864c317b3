"""The HTTP adapter against a real uvicorn server on 127.0.0.1, driven by httpx: every route, the error
paths, auth, limits, events over SSE and WebSocket (order, late joiners, Last-Event-ID), cancel, resume,
a restart on the same store, and 500 concurrent runs against a loopback provider."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import jsonschema
import pytest
import websockets

from engine import Engine, ModelError
from engine.cli import main as cli_main
from engine.server import ServerSettings, create_app
from engine.server.errors import ERROR_SCHEMA
from engine.store import MemoryStore
from engine.testing import FakeModel
from tests.support.fault_server import FaultServer, running_fault_server
from tests.support.live_server import serving

pytestmark = pytest.mark.anyio
TOKEN = "t0ken-" + "x" * 26


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn runs on asyncio


def flow(tasks: int = 2, *, stage: str = "linear", model: str = "fast_ai", name: str = "flow") -> dict[str, Any]:
    return {"dsl": "orchestrion/v1", "name": name, "inputs": {"topic": {"type": "string", "default": "tea"}},
            "stages": [{"name": "work", "type": stage, "tasks": [
                {"id": f"t{i}", "model": model, "prompt": f"part {i} of {{{{ topic }}}}"} for i in range(tasks)]}],
            "outputs": {"first": "{{ t0 }}"}}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    jsonschema.validate(body, ERROR_SCHEMA)  # one error shape everywhere
    error: dict[str, Any] = body["error"]
    assert error["status"] == response.status_code
    return error


async def sse_events(client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None,
                     stop_after: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The events of an SSE stream (data parsed, with their ids checked), and its raw lines."""
    events: list[dict[str, Any]] = []
    lines: list[str] = []
    current_id: str | None = None
    async with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            lines.append(line)
            if line.startswith("id: "):
                current_id = line[4:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                if "seq" in event:
                    assert current_id == str(event["seq"])
                events.append(event)
                if stop_after is not None and len(events) >= stop_after:
                    break
    return events, lines


async def abandoned_post(client: httpx.AsyncClient, path: str, body: Any, *, after: float) -> None:
    """A client that sends a request and goes away ``after`` seconds, before the answer: its own connection,
    closed by us (an httpx request cancelled mid-flight can leave its socket to the garbage collector)."""
    payload = json.dumps(body).encode()
    host, port = client.base_url.host, client.base_url.port
    assert port is not None
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        await anyio.sleep(after)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Any]:
    """A factory: an app on a real server for an engine, and an httpx client for it."""
    async def serve(engine: Engine, settings: ServerSettings | None = None, token: str | None = None) -> Any:
        stack.push_async_callback(engine.aclose)  # closed after its server stopped
        url = await stack.enter_async_context(serving(create_app(engine, settings)))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=20, headers=headers))
        return client

    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        yield serve


# -- the seed routes ------------------------------------------------------------------------------------

async def test_template_chat_and_catalog_routes_answer_as_the_seed_systems_did(served: Any, tmp_path: Path) -> None:
    engine = Engine(models=FakeModel(), store=f"sqlite+aiosqlite:///{tmp_path}/runs.db")
    client = await served(engine)
    health = await client.get("/health")
    assert health.json()["status"] == "ok" and health.json()["store"] == {"configured": True, "reachable": True}
    # curl -d sends form data: the body is read as JSON whatever its content type
    report = await client.post("/template/research_report", content='{"topic": "solar"}',
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert report.status_code == 200 and report.json()["status"] == "succeeded"
    assert "solar" in report.json()["tasks"]["research"]["output"]
    chat = await client.post("/chat", content='{"message": "hello there", "session_id": "s1"}')
    assert chat.status_code == 200 and chat.json()["status"] == "succeeded" and "hello there" in chat.json()["answer"]
    again = await client.post("/chat", json={"message": "and again", "session_id": "s1"})
    assert "hello there" in again.json()["answer"]  # the session's history went into the second turn's prompt
    templates = {t["name"]: t for t in (await client.get("/templates")).json()["templates"]}
    assert templates["research_report"]["inputs"]["required"] == ["topic"]
    detail = (await client.get("/templates/research_report")).json()
    assert detail["mermaid"].startswith("flowchart TD") and {n["id"] for n in detail["graph"]["nodes"]} >= {"research"}
    models = {row["alias"] for row in (await client.get("/models")).json()["models"]}
    assert {"fast_ai", "thinking_ai"} <= models
    addons = (await client.get("/addons")).json()["addons"]
    assert len(addons) >= 50 and {"name", "category", "description"} == set(addons[0])
    stats = (await client.get("/stats")).json()
    assert stats["total"]["calls"] >= 3 and "thinking_ai" in stats["by_model"]
    runs = (await client.get("/runs")).json()["runs"]
    assert {run["workflow"] for run in runs} >= {"research_report", "chat"}


async def test_a_workflow_in_the_body_runs_as_dsl_text_object_or_seed_format(served: Any) -> None:
    client = await served(Engine(models=FakeModel()))
    as_object = await client.post("/workflow", json={"workflow": flow(), "inputs": {"topic": "rain"}})
    assert as_object.status_code == 200 and as_object.json()["outputs"]["first"] == "[fast_ai] part 0 of rain"
    as_text = await client.post("/workflow", json={"workflow": json.dumps(flow(), indent=2)})
    assert as_text.status_code == 200 and as_text.json()["outputs"]["first"] == "[fast_ai] part 0 of tea"
    seed = json.loads((Path(__file__).parent.parent / "examples" / "seed_article.json").read_text())
    as_seed = await client.post("/workflow", json={"workflow": seed, "inputs": {"topic": "tides"}})
    assert as_seed.status_code == 200 and as_seed.json()["status"] == "succeeded"


# -- errors as the CLI gives them --------------------------------------------------------------------------

BROKEN = """dsl: orchestrion/v1
name: broken
stages:
  - name: s
    type: linear
    tasks:
      - id: a
        model: fast_ai
        promt: hi
"""


async def test_an_invalid_workflow_is_a_422_with_the_problems_validate_prints(
        served: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client = await served(Engine(models=FakeModel()))
    response = await client.post("/workflow", json={"workflow": BROKEN})
    error = error_of(response)
    assert response.status_code == 422 and error["type"] == "invalid_workflow"
    (tmp_path / "broken.yaml").write_text(BROKEN)
    assert cli_main(["validate", "--format", "json", str(tmp_path / "broken.yaml")]) == 1
    printed = json.loads(capsys.readouterr().out)
    cli = [(p["path"], p["line"], p["column"], p["message"], p["hint"]) for p in _problems(printed)]
    http = [(p["path"], p["line"], p["column"], p["message"], p["hint"]) for p in error["problems"]]
    assert http == cli and http[0][1] == 9  # promt, on line 9


def _problems(printed: Any) -> list[dict[str, Any]]:
    """The problems of `validate --format json` (a list of files, each with its problems)."""
    files = printed if isinstance(printed, list) else printed.get("files", [])
    return [problem for file in files for problem in file["problems"]]


async def test_bad_requests_get_clear_4xx_answers_in_one_shape(served: Any) -> None:
    client = await served(Engine(models=FakeModel()))
    unknown = await client.post("/template/research_reprot", json={"topic": "x"})
    assert unknown.status_code == 404 and "research_report" in error_of(unknown)["message"]  # did you mean
    missing = await client.post("/template/research_report", json={"topik": "x"})
    assert missing.status_code == 422 and "topik" in error_of(missing)["message"]
    assert error_of(await client.post("/template/research_report", content="{not json")).get("type") == "invalid_json"
    assert (await client.post("/template/research_report", content="[1, 2]")).status_code == 422
    no_message = await client.post("/chat", json={"session_id": "x"})
    assert no_message.status_code == 422 and error_of(no_message)["problems"][0]["path"] == "message"
    assert error_of(await client.get("/runs/nope"))["type"] == "unknown_run"
    assert error_of(await client.get("/no/such/route"))["type"] == "not_found"
    assert error_of(await client.delete("/runs"))["type"] == "method_not_allowed"
    deep = await client.post("/workflow", content="[" * 5000 + "]" * 5000)
    assert deep.status_code == 400 and error_of(deep)["type"] == "too_deep"


async def test_a_workflow_from_the_network_names_templates_never_files(served: Any, tmp_path: Path) -> None:
    client = await served(Engine(models=FakeModel()))
    answers = []
    for reference in ("/etc/passwd", "/etc/no-such-file.yaml", "../../secret.yaml"):
        document = flow(1)
        document["stages"][0]["tasks"] = [{"id": "sub", "workflow": reference}]
        response = await client.post("/workflow", json={"workflow": document})
        error = error_of(response)
        assert response.status_code == 422 and error["problems"][0]["code"] == "file_reference"
        answers.append(error["problems"][0]["message"].replace(reference, "<ref>"))
    assert len(set(answers)) == 1  # the same answer whether the file exists or not
    document = flow(1)
    document["stages"][0]["tasks"] = [{"id": "sub", "workflow": "research_report", "with": {"topic": "x"}}]
    document["outputs"] = {"report": "{{ sub.report }}"}
    assert (await client.post("/workflow", json={"workflow": document})).json()["status"] == "succeeded"


async def test_a_failed_run_is_a_200_with_its_error_or_a_502_naming_the_task(served: Any) -> None:
    failing = FakeModel({"fast_ai": ModelError("bad_request", "the model refused")})
    client = await served(Engine(models=failing))
    failed = await client.post("/workflow", json={"workflow": flow(1)})
    assert failed.status_code == 200 and failed.json()["status"] == "failed"
    assert "the model refused" in failed.json()["error"]
    raised = await client.post("/workflow?raise=true", json={"workflow": flow(1)})
    error = error_of(raised)
    assert raised.status_code == 502 and error["type"] == "run_failed" and error["task"] == "t0"


async def test_a_body_over_the_limit_is_413_before_it_is_read_and_no_run_is_recorded(served: Any) -> None:
    store = MemoryStore()
    client = await served(Engine(models=FakeModel(), store=store), ServerSettings(max_body_bytes=4096))
    big = {"workflow": flow(1), "inputs": {"topic": "x" * 10_000}}
    declared = await client.post("/workflow", json=big)
    assert declared.status_code == 413 and error_of(declared)["type"] == "body_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused as it passes the limit
        for _ in range(100):
            yield b" " * 1024

    chunked = await client.post("/workflow", content=chunks())
    assert chunked.status_code == 413
    assert await store.list_runs() == []
    assert (await client.post("/workflow", json={"workflow": flow(1)})).status_code == 200  # the server goes on


# -- auth, limits, CORS, secrets ------------------------------------------------------------------------------

async def test_every_route_but_health_needs_the_token(served: Any) -> None:
    settings = ServerSettings(tokens=(TOKEN, "another-token-of-32-characters!!"))
    client = await served(Engine(models=FakeModel()), settings)
    assert (await client.get("/health")).status_code == 200
    for method, path in [("GET", "/runs"), ("GET", "/templates"), ("GET", "/models"), ("GET", "/addons"),
                         ("POST", "/template/research_report"), ("POST", "/chat"), ("POST", "/workflow"),
                         ("GET", "/runs/x/events"), ("GET", "/v1/models")]:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
            response = await client.request(method, path, headers=headers, json={"topic": "x"})
            assert response.status_code == 401, (method, path, headers)
            assert error_of(response)["type"] == "unauthorized" and TOKEN not in response.text
            assert response.headers["www-authenticate"].startswith("Bearer")
    ok = await client.post("/template/research_report", json={"topic": "x"},
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and TOKEN not in ok.text


async def test_runs_in_flight_per_token_are_capped_with_a_429(served: Any) -> None:
    settings = ServerSettings(max_runs_per_token=2)
    client = await served(Engine(models=FakeModel(latency=2.0)), settings)
    started = [await client.post("/workflow?wait=false", json={"workflow": flow(1)}) for _ in range(2)]
    assert [response.status_code for response in started] == [202, 202]
    third = await client.post("/workflow?wait=false", json={"workflow": flow(1)})
    assert third.status_code == 429 and third.headers["retry-after"] == "1"
    assert error_of(third)["type"] == "too_many_runs"
    for response in started:
        await client.post(f"/runs/{response.json()['run_id']}/cancel?wait=true")
    assert (await client.post("/workflow?wait=false", json={"workflow": flow(1)})).status_code == 202


async def test_cors_is_off_unless_an_origin_is_configured(served: Any) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    closed = await served(Engine(models=FakeModel()))
    assert "access-control-allow-origin" not in (await closed.options("/workflow", headers=preflight)).headers
    opened = await served(Engine(models=FakeModel()), ServerSettings(cors_origins=("https://app.example",)))
    allowed = await opened.options("/workflow", headers=preflight)
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    other = await opened.options("/workflow", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


@pytest.fixture
def provider() -> Iterator[FaultServer]:
    """An OpenAI-compatible server on 127.0.0.1 (started and stopped outside the event loop: it blocks)."""
    with running_fault_server() as server:
        yield server


async def test_a_key_in_the_configuration_never_reaches_a_response(served: Any, tmp_path: Path, provider: FaultServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-server-suite-secret-000111"
    monkeypatch.setenv("SERVER_SUITE_KEY", secret)
    provider.default = "401echo"
    config = tmp_path / "orchestrion.yaml"
    config.write_text(f"providers:\n  p:\n    kind: openai\n    base_url: {provider.url}\n"
                      "    api_key: ${SERVER_SUITE_KEY}\nmodels:\n  fast_ai: {provider: p, model: m}\n")
    client = await served(Engine.from_file(config))
    texts = [(await client.post("/workflow", json={"workflow": flow(1)})).text,
             (await client.get("/models")).text, (await client.get("/health")).text]
    run_id = json.loads(texts[0])["run_id"]
    texts.append((await client.get(f"/runs/{run_id}")).text)
    texts.append("\n".join((await sse_events(client, f"/runs/{run_id}/events"))[1]))
    assert json.loads(texts[0])["status"] == "failed"
    assert all(secret not in text for text in texts)


# -- detached runs, live events, cancel, resume -------------------------------------------------------------

async def test_a_detached_run_answers_at_once_and_its_status_walks_to_succeeded(served: Any) -> None:
    client = await served(Engine(models=FakeModel(latency=1.0)))
    started = time.perf_counter()
    response = await client.post("/workflow?wait=false", json={"workflow": flow(2, stage="inline")})
    elapsed = time.perf_counter() - started
    assert response.status_code == 202 and elapsed < 0.9  # the run takes 2 s
    run_id = response.json()["run_id"]
    assert response.headers["location"] == f"/runs/{run_id}" and response.json()["events"].endswith("/events")
    seen = []
    with anyio.fail_after(10):
        while not seen or seen[-1] not in ("succeeded", "failed"):
            status = (await client.get(f"/runs/{run_id}")).json()["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            await anyio.sleep(0.05)
    assert seen[-1] == "succeeded" and "running" in seen and set(seen) <= {"pending", "running", "succeeded"}
    graph = (await client.get(f"/runs/{run_id}/graph")).json()  # no store: the graph of the run held here
    assert [node["id"] for node in graph["graph"]["nodes"]] == ["t0", "t1"]
    assert graph["graph"]["edges"] == [["t0", "t1"]]
    listed = (await client.get("/runs")).json()["runs"][0]
    assert listed["run_id"] == run_id and listed["input_tokens"] > 0 and listed["ended_at"] is not None


async def test_events_arrive_in_order_and_a_late_subscriber_misses_none(served: Any) -> None:
    client = await served(Engine(models=FakeModel(latency=0.3)))
    run_id = (await client.post("/workflow?wait=false", json={"workflow": flow(3, stage="inline")})).json()["run_id"]
    early, late, by_socket = [], [], []

    async def early_reader() -> None:
        early.extend((await sse_events(client, f"/runs/{run_id}/events"))[0])

    async def late_reader() -> None:
        await anyio.sleep(0.45)  # mid-run: the first task has finished
        late.extend((await sse_events(client, f"/runs/{run_id}/events"))[0])

    async def socket_reader() -> None:
        await anyio.sleep(0.2)
        url = str(client.base_url).replace("http://", "ws://") + f"/runs/{run_id}/ws"
        async with websockets.connect(url) as socket:
            async for message in socket:
                by_socket.append(json.loads(message))

    async with anyio.create_task_group() as group:
        for reader in (early_reader, late_reader, socket_reader):
            group.start_soon(reader)
    types = [event["type"] for event in early]
    assert types[0] == "run_started" and types[-1] == "run_finished" and early[-1]["status"] == "succeeded"
    assert [event["seq"] for event in early] == list(range(1, len(early) + 1))
    assert late == early and by_socket == early
    finished = [event["task_id"] for event in early if event["type"] == "task_finished"]
    assert finished == ["t0", "t1", "t2"]  # inline: in order
    replay = (await sse_events(client, f"/runs/{run_id}/events"))[0]
    assert replay == early  # after the end: the whole run, at once


async def test_a_stream_resumed_with_last_event_id_has_no_gap_and_no_duplicate(served: Any) -> None:
    client = await served(Engine(models=FakeModel(latency=0.2)))
    run_id = (await client.post("/workflow?wait=false", json={"workflow": flow(3, stage="inline")})).json()["run_id"]
    first, _ = await sse_events(client, f"/runs/{run_id}/events", stop_after=3)  # the socket is dropped
    rest, _ = await sse_events(client, f"/runs/{run_id}/events", headers={"Last-Event-ID": str(first[-1]["seq"])})
    whole, _ = await sse_events(client, f"/runs/{run_id}/events")
    assert first + rest == whole and rest[0]["seq"] == 4


async def test_a_quiet_stream_gets_heartbeat_comments_without_ids_and_stream_headers(served: Any) -> None:
    client = await served(Engine(models=FakeModel(latency=1.0)), ServerSettings(heartbeat_seconds=0.2))
    run_id = (await client.post("/workflow?wait=false", json={"workflow": flow(1)})).json()["run_id"]
    async with client.stream("GET", f"/runs/{run_id}/events") as response:
        assert response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
        lines = [line async for line in response.aiter_lines()]
    pings = [index for index, line in enumerate(lines) if line == ": ping"]
    assert len(pings) >= 3  # a 1 s task, a ping every 0.2 s
    ids = [line for line in lines if line.startswith("id: ")]
    assert ids == [f"id: {n}" for n in range(1, len(ids) + 1)]  # pings never carry or move an id


async def test_cancel_stops_a_run_with_no_event_after_its_end(served: Any) -> None:
    store = MemoryStore()
    client = await served(Engine(models=FakeModel(latency=5.0), store=store))
    run_id = (await client.post("/workflow?wait=false", json={"workflow": flow(2)})).json()["run_id"]
    await anyio.sleep(0.2)
    cancelled = await client.post(f"/runs/{run_id}/cancel?wait=true")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    events, _ = await sse_events(client, f"/runs/{run_id}/events")
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "cancelled"
    assert (await store.load_run(run_id)).run.status == "cancelled"  # type: ignore[union-attr]
    again = await client.post(f"/runs/{run_id}/cancel")
    assert again.status_code == 409 and error_of(again)["type"] == "run_ended"


async def test_an_awaited_run_whose_client_goes_away_is_cancelled(served: Any) -> None:
    client = await served(Engine(models=FakeModel(latency=5.0)))
    await abandoned_post(client, "/workflow", {"workflow": flow(1)}, after=0.5)
    with anyio.fail_after(5):
        while True:
            runs = (await client.get("/runs")).json()["runs"]
            if runs and runs[0]["status"] == "cancelled":
                break
            await anyio.sleep(0.05)


async def test_a_failed_run_resumes_over_http_and_its_events_go_on(served: Any) -> None:
    model = FakeModel({"fast_ai": ["first", "second"],
                       "medium_ai": [ModelError("bad_request", "down for now"), "recovered"]})
    store = MemoryStore()
    client = await served(Engine(models=model, store=store))
    document = flow(2, stage="inline")
    document["stages"][0]["tasks"][1]["model"] = "medium_ai"
    failed = (await client.post("/workflow", json={"workflow": document})).json()
    assert failed["status"] == "failed"
    resumed = await client.post(f"/runs/{failed['run_id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "succeeded"
    assert len(model.calls_to("fast_ai")) == 1  # t0's answer was kept
    events, _ = await sse_events(client, f"/runs/{failed['run_id']}/events")
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert [event["status"] for event in events if event["type"] == "run_finished"
            and event["run_id"] == failed["run_id"]] == ["failed", "succeeded"]


async def test_after_a_restart_the_events_replay_from_the_store(served: Any, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/runs.db"
    first = Engine(models=FakeModel(), store=url)
    async with serving(create_app(first)) as base, httpx.AsyncClient(base_url=base) as client:
        run_id = (await client.post("/workflow", json={"workflow": flow(2)})).json()["run_id"]
        before, _ = await sse_events(client, f"/runs/{run_id}/events")
        held = (await client.get(f"/runs/{run_id}")).json()
    await first.aclose()
    second = Engine(models=FakeModel(), store=url)
    client = await served(second)
    after, _ = await sse_events(client, f"/runs/{run_id}/events")
    assert after == before and after[-1]["type"] == "run_finished"
    shown = (await client.get(f"/runs/{run_id}")).json()
    assert shown["status"] == "succeeded" and shown["tasks"]["t1"]["output"] == "[fast_ai] part 1 of tea"
    assert set(shown) - {"inputs"} == set(held) and set(shown["tasks"]["t1"]) == set(held["tasks"]["t1"])
    assert shown["outputs"] == held["outputs"] and shown["totals"]["input_tokens"] == held["totals"]["input_tokens"]
    graph = (await client.get(f"/runs/{run_id}/graph")).json()
    assert {node["id"] for node in graph["graph"]["nodes"]} == {"t0", "t1"}
    await second.aclose()


async def test_a_run_started_on_one_server_streams_from_another_on_the_same_store(served: Any,
                                                                                  tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/runs.db"
    one, two = Engine(models=FakeModel(latency=0.3), store=url), Engine(models=FakeModel(), store=url)
    client_one, client_two = await served(one), await served(two)
    run_id = (await client_one.post("/workflow?wait=false",
                                    json={"workflow": flow(3, stage="inline")})).json()["run_id"]
    await anyio.sleep(0.2)
    from_two, _ = await sse_events(client_two, f"/runs/{run_id}/events")  # polled from the store
    from_one, _ = await sse_events(client_one, f"/runs/{run_id}/events")
    assert from_two == from_one and from_two[-1]["status"] == "succeeded"
    elsewhere = await client_two.post(f"/runs/{run_id}/cancel")
    assert elsewhere.status_code == 409
    await one.aclose()
    await two.aclose()


# -- the service around it ------------------------------------------------------------------------------------

async def test_the_openapi_document_lists_every_route(served: Any) -> None:
    client = await served(Engine(models=FakeModel()))
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in ("/chat", "/workflow", "/template/{name}", "/templates", "/templates/{name}", "/models", "/addons",
                 "/health", "/health/ready", "/stats", "/runs", "/runs/{run_id}", "/runs/{run_id}/cancel",
                 "/runs/{run_id}/resume", "/runs/{run_id}/events", "/runs/{run_id}/graph",
                 "/v1/chat/completions", "/v1/models"):
        assert path in paths, path
    assert "requestBody" in paths["/chat"]["post"]
    assert (await client.get("/docs")).status_code == 200


async def test_readiness_fails_when_the_store_does_not_answer_and_liveness_holds(served: Any) -> None:
    class DeadStore(MemoryStore):
        async def list_runs(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError("connection refused")

    client = await served(Engine(models=FakeModel(), store=DeadStore()))
    ready = await client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["store"]["reachable"] is False
    assert (await client.get("/health")).status_code == 200


async def test_shutdown_drains_refuses_new_runs_and_ends_streams(tmp_path: Path) -> None:
    store = MemoryStore()
    app = create_app(Engine(models=FakeModel(latency=3.0), store=store), ServerSettings(drain_seconds=0.5))
    hub = app.state.orchestrion.hub
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        run_id = (await client.post("/workflow?wait=false", json={"workflow": flow(1)})).json()["run_id"]
        seen: list[str] = []

        async def watch() -> None:
            seen.extend((await sse_events(client, f"/runs/{run_id}/events"))[1])

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            await anyio.sleep(0.3)
            hub.begin_drain()  # what SIGTERM does first
        refused = await client.post("/workflow", json={"workflow": flow(1)})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert (await client.get("/health/ready")).status_code == 503
    assert "event: shutdown" in seen
    assert hub.drained.is_set() and (await store.load_run(run_id)).run.status == "cancelled"  # type: ignore[union-attr]


async def test_the_adapter_mounts_in_an_existing_app_with_its_lifespan(tmp_path: Path) -> None:
    from fastapi import FastAPI

    adapter = create_app(Engine(models=FakeModel()))
    host = FastAPI(lifespan=adapter.router.lifespan_context)

    @host.get("/own")
    async def own() -> dict[str, str]:
        return {"app": "host"}

    host.mount("/llm", adapter)
    async with serving(host) as base, httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/own")).json() == {"app": "host"}
        detached = await client.post("/llm/workflow?wait=false", json={"workflow": flow(1)})
        assert detached.status_code == 202 and detached.headers["location"].startswith("/llm/runs/")
        events, _ = await sse_events(client, detached.headers["location"] + "/events")
        assert events[-1]["status"] == "succeeded"


@pytest.mark.timeout(120)
@pytest.mark.allow_blocking("500 requests at once: one loop iteration runs hundreds of ready callbacks, "
                            "which the watchdog cannot tell from a blocking call")
async def test_500_concurrent_runs_over_http_against_a_loopback_provider_lose_nothing(
        tmp_path: Path, provider: FaultServer) -> None:
    from engine.config import EngineConfig, HttpProviderConfig, ModelConfig

    config = EngineConfig(providers={"p": HttpProviderConfig(kind="openai", base_url=provider.url, api_key="k")},
                          models={"fast_ai": ModelConfig(provider="p", model="m")})
    engine = Engine(config, store=f"sqlite+aiosqlite:///{tmp_path}/runs.db")
    async with engine_closed(engine):
        results, stored = await _load(engine)
    assert [response.status_code for response in results] == [200] * 500
    outputs = {response.json()["outputs"]["first"] for response in results}
    assert outputs == {f"answer:part 0 of n{index}" for index in range(500)}
    assert len(stored) == 500 and {run.status for run in stored} == {"succeeded"}


@asynccontextmanager
async def engine_closed(engine: Engine) -> AsyncIterator[Engine]:
    try:
        yield engine
    finally:
        await engine.aclose()


async def _load(engine: Engine) -> tuple[list[httpx.Response], list[Any]]:
    results: list[httpx.Response] = []
    limits = httpx.Limits(max_connections=500)
    async with serving(create_app(engine, ServerSettings(max_runs_per_token=500))) as base, \
            httpx.AsyncClient(base_url=base, timeout=100, limits=limits) as client:
        async def one(index: int) -> None:
            results.append(await client.post("/workflow", json={"workflow": flow(1), "inputs": {"topic": f"n{index}"}}))

        async with anyio.create_task_group() as group:
            for index in range(500):
                group.start_soon(one, index)
        store = await engine.run_store()
        assert store is not None
        return results, await store.list_runs(limit=1000)


async def test_a_create_retried_with_the_same_idempotency_key_gives_the_same_run(served: Any) -> None:
    store = MemoryStore()
    client = await served(Engine(models=FakeModel(latency=0.3), store=store))
    key = {"Idempotency-Key": "order-42"}
    first = await client.post("/workflow?wait=false", json={"workflow": flow(1)}, headers=key)
    second = await client.post("/workflow?wait=false", json={"workflow": flow(1)}, headers=key)
    assert first.status_code == second.status_code == 202 and first.json()["run_id"] == second.json()["run_id"]
    awaited = await client.post("/workflow", json={"workflow": flow(1)}, headers=key)
    assert awaited.json()["run_id"] == first.json()["run_id"] and awaited.json()["status"] == "succeeded"
    other = await client.post("/workflow?wait=false", json={"workflow": flow(1)}, headers={"Idempotency-Key": "43"})
    assert other.json()["run_id"] != first.json()["run_id"]
    assert len(await store.list_runs()) == 2


async def test_clients_join_a_running_run_and_see_the_same_result(served: Any) -> None:
    client = await served(Engine(models=FakeModel(latency=0.5)))
    run_id = (await client.post("/workflow?wait=false", json={"workflow": flow(1)})).json()["run_id"]
    results: list[dict[str, Any]] = []

    async def join() -> None:
        results.append((await client.get(f"/runs/{run_id}?wait=true")).json())

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(join)
    assert len(results) == 3 and all(result == results[0] for result in results)
    assert results[0]["status"] == "succeeded" and results[0]["outputs"]["first"] == "[fast_ai] part 0 of tea"
    started = time.perf_counter()
    assert (await client.get(f"/runs/{run_id}?wait=true")).json() == results[0]
    assert time.perf_counter() - started < 0.5  # after the end: at once


async def test_with_on_disconnect_continue_an_awaited_run_outlives_its_client(served: Any) -> None:
    client = await served(Engine(models=FakeModel(latency=0.6)), ServerSettings(on_disconnect="continue"))
    await abandoned_post(client, "/workflow", {"workflow": flow(1)}, after=0.2)
    run_id = (await client.get("/runs")).json()["runs"][0]["run_id"]
    finished = (await client.get(f"/runs/{run_id}?wait=true")).json()
    assert finished["status"] == "succeeded"
