"""A real crash: `orchestrion run` killed with SIGKILL midway, `orchestrion resume` finishes it.

The models are a real OpenAI-compatible server on 127.0.0.1 that counts the
requests per prompt; the store is a SQLite file. No call that finished before
the kill is made again, and the outputs are those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fault_server import FaultServer, running_fault_server

TASKS = 20


def workflow() -> dict[str, object]:
    """Five chains of four tasks side by side; each task reads the one before it in its chain."""
    tasks = [{"id": f"t{n:02}", "prompt": f"step {n}" + (f" after {{{{ t{n - 1:02} }}}}" if n % 4 else "")}
             for n in range(TASKS)]
    chains = [{"type": "inline", "tasks": tasks[start:start + 4]} for start in range(0, TASKS, 4)]
    return {"dsl": "orchestrion/v1", "name": "long", "defaults": {"model": "medium_ai", "retry": None},
            "limits": {"max_concurrency": 2}, "stages": [{"type": "linear", "tasks": chains}],
            "outputs": {"all": "{{ [" + ", ".join(f"t{n:02}" for n in range(TASKS)) + "] }}"}}


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with running_fault_server() as running:
        running.chooser = lambda body: "hang"  # every answer takes `hang_seconds`: the run lasts a while
        running.hang_seconds = 0.15
        yield running


def orchestrion(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})


def prompts_served(server: FaultServer) -> Counter[str]:
    return Counter(body["messages"][-1]["content"] for body in server.requests)


def task_of(prompt: str) -> str:
    """``step 7 after ...`` -> ``t07``."""
    return f"t{int(prompt.split()[1]):02}"


@pytest.mark.timeout(120)
def test_a_run_killed_midway_resumes_without_repeating_a_finished_call(tmp_path: Path, server: FaultServer) -> None:
    (tmp_path / "flow.json").write_text(json.dumps(workflow()))
    (tmp_path / "orchestrion.yaml").write_text(
        f"providers:\n  loop: {{kind: openai, base_url: '{server.url}', api_key: k, timeout: 5}}\n"
        f"default_provider: loop\nstore: {{url: 'sqlite+aiosqlite:///{tmp_path / 'runs.db'}'}}\n")

    running = orchestrion("run", "flow.json", "-q", cwd=tmp_path)
    deadline = time.monotonic() + 60
    while len(server.requests) < TASKS // 2 and time.monotonic() < deadline and running.poll() is None:
        time.sleep(0.01)
    running.send_signal(signal.SIGKILL)
    _, err = running.communicate(timeout=10)  # and its pipes closed
    assert running.returncode == -signal.SIGKILL, err
    served_before = prompts_served(server)
    assert 0 < len(served_before) < TASKS

    listing = subprocess.run([sys.executable, "-m", "engine", "runs", "--json"], cwd=tmp_path, text=True,
                             capture_output=True, check=True)
    (run,) = json.loads(listing.stdout)
    assert run["status"] == "running"  # the process died without a word: its heartbeat stops
    shown = subprocess.run([sys.executable, "-m", "engine", "runs", "show", run["run_id"], "--json"], cwd=tmp_path,
                           text=True, capture_output=True, check=True)
    finished = {task_id for task_id, task in json.loads(shown.stdout)["tasks"].items()
                if task["status"] == "succeeded"}
    assert finished

    # Its heartbeat is fresh, but its process is gone from this host: no --force needed.
    resumed = orchestrion("resume", run["run_id"], "--json", "-q", cwd=tmp_path)
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    result = json.loads(out)
    served = prompts_served(server)
    repeated = {task_of(prompt) for prompt, count in served.items() if count > 1}
    assert not repeated & finished, repeated  # only calls in flight at the kill were made again
    # In flight: at most two calls running (max_concurrency), and answers whose commit had not returned
    # yet (a task leaves the concurrency cap before its checkpoint); a handful, never the finished ones.
    assert len(repeated) <= 4, repeated
    assert {task_of(prompt) for prompt in served} == {f"t{n:02}" for n in range(TASKS)}

    server.requests.clear()
    whole = subprocess.run([sys.executable, "-m", "engine", "run", "flow.json", "--json", "-q", "--store", "none"],
                           cwd=tmp_path, text=True, capture_output=True, check=True)
    assert result["outputs"] == json.loads(whole.stdout)["outputs"]
    assert result["status"] == "succeeded"
