"""The README's "Serving" section, executed: `orchestrion serve` in its own process, each `curl` line
of the section against it, the OpenAI client snippet, the mounting snippet, and a SIGTERM that
drains it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import ROOT
from tests.support.live_server import free_port, wait_until_up

SECTION = (ROOT / "README.md").read_text().split("## Serving", 1)[1].split("\n## ", 1)[0]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`orchestrion serve --dry-run` on a free port, with a store in tmp_path."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "orchestrion"), "serve", "--dry-run", "--port", str(port),
               "--store", f"sqlite+aiosqlite:///{tmp_path}/runs.db", "--drain", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url, process)
    try:
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_curl_lines_of_the_serving_section_answer(server: tuple[str, subprocess.Popen[str]]) -> None:
    url, _ = server
    lines = [line[2:] for line in re.findall(r"```console\n(.*?)```", SECTION, flags=re.S)[0].splitlines()
             if line.startswith("$ ")]
    assert len(lines) >= 4 and any("/chat" in line for line in lines)
    for line in lines:
        arguments = [argument.replace("localhost:8000", url) for argument in shlex.split(line)]
        done = subprocess.run([*arguments, "--silent", "--show-error", "--fail-with-body"], capture_output=True,
                              text=True, timeout=30, check=False)
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        answer = json.loads(done.stdout)
        assert answer.get("error") is None and answer.get("status") in (None, "ok", "succeeded", "pending"), \
            (line, answer)
    runs = httpx.get(f"{url}/runs").json()["runs"]
    assert {run["workflow"] for run in runs} >= {"chat", "research_report"}


@pytest.mark.timeout(60)
def test_the_python_snippets_of_the_serving_section_run(server: tuple[str, subprocess.Popen[str]],
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = server
    client_snippet, mount_snippet = re.findall(r"```py\n(.*?)```", SECTION, flags=re.S)
    exec(compile(client_snippet.replace("http://localhost:8000", url), "README.md", "exec"), {})
    content, tokens = capsys.readouterr().out.rsplit(" ", 1)
    assert set(json.loads(content)) == {"report", "confidence"} and int(tokens) > 0  # the template's two outputs
    monkeypatch.chdir(tmp_path)
    (tmp_path / "orchestrion.yaml").write_text("providers:\n  fake: {kind: fake}\ndefault_provider: fake\n")
    namespace: dict[str, object] = {}
    exec(compile(mount_snippet, "README.md", "exec"), namespace)
    paths = {getattr(route, "path", None) for route in namespace["app"].routes}  # type: ignore[attr-defined]
    assert "/llm" in paths


@pytest.mark.timeout(60)
def test_sigterm_drains_the_server_and_it_exits(server: tuple[str, subprocess.Popen[str]], tmp_path: Path) -> None:
    url, process = server
    with httpx.Client(base_url=url, timeout=10) as client:
        run_id = client.post("/template/research_report?wait=false", json={"topic": "x"}).json()["run_id"]
        with client.stream("GET", f"/runs/{run_id}/events") as stream:
            process.send_signal(signal.SIGTERM)
            text = "".join(stream.iter_text())  # the stream ends: with the run, or with a shutdown event
    assert "event: run_finished" in text or "event: shutdown" in text
    started = time.monotonic()
    output = process.communicate(timeout=20)[0]
    # uvicorn shuts down gracefully, then raises the signal again so the process ends "by SIGTERM"
    assert process.returncode in (0, -signal.SIGTERM) and time.monotonic() - started < 15
    assert "Application shutdown complete" in output

    async def stored_status() -> str:
        from engine.store import open_store

        store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/runs.db")
        try:
            stored = await store.load_run(run_id)
            assert stored is not None and len(await store.load_events(run_id)) > 0
            return stored.run.status
        finally:
            await store.aclose()

    assert anyio.run(stored_status) in ("succeeded", "cancelled")  # ended, not left "running"
