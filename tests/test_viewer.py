"""The run viewer (engine/server/static) in a real browser: Debian's chromium driven by Playwright's async API,
against the real server on a free port (playwright cannot download its own browsers here)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from playwright.async_api import ConsoleMessage, Page, Route, async_playwright, expect

from engine import Engine
from engine.server import ServerSettings, create_app
from engine.store import MemoryStore
from engine.testing import FakeModel
from tests.support.live_server import serving

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60),
    # chromium runs beside the server on the same few CPUs: then a thread the server starts (StaticFiles reads
    # files in one) may wait for a CPU the browser holds, which the loop watchdog cannot tell from blocking
    pytest.mark.allow_blocking("chromium shares the CPUs with the server's event loop"),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); "
                                                "playwright cannot download its own browsers here"),
]

# A model's answer is untrusted: the page must show it as text, never run it.
HOSTILE = '<img src="/x" onerror="window.__injected = 1"><b>bold?</b>'

FORM_KINDS = """\
dsl: orchestrion/v1
name: form_kinds
version: 1.0.0
description: Every kind of input the viewer's form builds a field for
inputs:
  topic: {type: string, description: What to write about}
  tone: {type: string, enum: [formal, casual], default: casual}
  words: {type: integer, minimum: 1, maximum: 500, default: 50, description: How long}
  shout: {type: boolean, default: false}
stages:
  - type: linear
    tasks:
      - id: write
        model: fast_ai
        prompt: "Write {{ words }} {{ tone }} words on {{ topic }}{% if shout %}, in capitals{% endif %}."
"""

# Every value each graph node's data-state (and the run's data-status) takes, in order: a MutationObserver,
# so none is missed between two polls of the test, nor when two events of a task are applied in one go.
RECORD_STATES = """() => {
  window.__states = {};
  const push = (key, value) => {
    const seen = (window.__states[key] = window.__states[key] || []);
    if (value && seen[seen.length - 1] !== value) seen.push(value);
  };
  const key = (node) => node.dataset && (node.dataset.nodeId || (node.dataset.testid === "run-status" ? "run" : null));
  const note = (node) => {
    if (key(node)) push(key(node), node.dataset.state || node.dataset.status);
  };
  new MutationObserver((records) => {
    const changed = new Set();
    for (const record of records) {
      if (record.type === "attributes" && key(record.target)) {
        push(key(record.target), record.oldValue);  // the value before this change
        changed.add(record.target);
      }
      for (const added of record.addedNodes) {
        if (added.querySelectorAll) {
          note(added);
          added.querySelectorAll("[data-node-id]").forEach(note);
        }
      }
    }
    changed.forEach(note);  // and the value after the last change
  }).observe(document.body, {subtree: true, childList: true, attributes: true, attributeOldValue: true,
                             attributeFilter: ["data-state", "data-status"]});
}"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # playwright's async API runs on asyncio


@asynccontextmanager
async def browser_page() -> AsyncIterator[tuple[Page, list[str]]]:
    """A page in headless chromium, and the errors it logs (console errors and uncaught exceptions)."""
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"{message.text} [{message.location.get('url', '')}]")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", on_console)
            page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
            yield page, errors
        finally:
            await browser.close()


def unexpected(errors: list[str], *expected: str) -> list[str]:
    """The errors but the browser's own log lines of the failed requests a test makes on purpose
    (chromium logs every 4xx answer to fetch() as 'Failed to load resource: ... status of 422')."""
    return [error for error in errors
            if not any(error.startswith("Failed to load resource") and f"status of {status}" in error
                       for status in expected)]


def keep_screenshot(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, "not a PNG of a page"
    folder = os.environ.get("ORCHESTRION_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(folder) / path.name)


async def test_a_run_started_from_the_form_is_drawn_and_coloured_live(tmp_path: Path) -> None:
    engine = Engine(models=FakeModel({"fast_ai": HOSTILE}, latency=0.3))
    async with serving(create_app(engine)) as url, browser_page() as (page, errors):
        await page.goto(f"{url}/")
        await page.evaluate(RECORD_STATES)
        await page.get_by_test_id("template-select").select_option("research_report")
        await expect(page.get_by_test_id("input-audience")).to_have_value("business executives")  # its default
        await expect(page.locator("label[for=input-topic] .required")).to_have_count(1)
        await page.get_by_test_id("input-topic").fill("quantum computing")
        await page.get_by_test_id("template-submit").click()

        await expect(page.get_by_test_id("run-status")).to_have_text("succeeded", timeout=15_000)
        for task in ("research", "companies", "summary"):
            await expect(page.get_by_test_id(f"node-{task}")).to_have_attribute("data-state", "done")
        await expect(page.get_by_test_id("node-outlook")).to_have_attribute("data-state", "skipped")  # `when` false
        states = await page.evaluate("window.__states")
        for task in ("research", "companies", "summary"):
            assert states[task] == ["pending", "running", "done"], (task, states)
        assert states["outlook"] == ["pending", "skipped"], states
        assert states["run"][-2:] == ["running", "succeeded"], states
        await expect(page.get_by_test_id("node-research")).to_contain_text("thinking_ai")  # the model on the box
        await expect(page.get_by_test_id("node-research")).to_contain_text("tok")  # and its tokens once done
        await expect(page.locator("#total-in")).to_have_text(re.compile(r"^[1-9][\d,]*$"))  # the run's totals
        await expect(page.get_by_test_id("run-cost")).to_have_text("$0.0000")
        assert await page.locator("svg.dag path.edge").count() == 3
        assert "flowchart TD" in (await page.get_by_test_id("mermaid").text_content() or "")
        run_id = (await page.get_by_test_id("run-id").text_content() or "").strip()
        await expect(page.locator(f'[data-testid="run-item"][data-run-id="{run_id}"]')).to_contain_text("succeeded")

        await page.get_by_test_id("node-research").click()
        panel = page.get_by_test_id("task-panel")
        await expect(panel).to_be_visible()
        await expect(page.get_by_test_id("task-prompt")).to_contain_text("Research {{ topic }} for {{ audience }}")
        answer = "[thinking_ai] Research quantum computing for business executives"
        await expect(page.get_by_test_id("task-answer")).to_contain_text(answer)
        await expect(page.get_by_test_id("task-output")).to_contain_text(answer)  # the stored output

        await page.get_by_test_id("node-companies").click()
        await expect(page.get_by_test_id("task-answer")).to_have_text(HOSTILE)  # shown as text...
        await expect(page.get_by_test_id("task-output")).to_have_text(HOSTILE)
        assert await page.locator("#task-panel img, #task-panel b").count() == 0  # ...not as HTML
        assert await page.evaluate("window.__injected") is None

        await page.get_by_test_id("node-research").click()
        screenshot = tmp_path / "viewer-run.png"
        await expect(page.get_by_test_id("task-title")).to_have_text("research")
        await page.screenshot(path=str(screenshot), full_page=True, animations="disabled")
        keep_screenshot(screenshot)
        assert unexpected(errors) == []


async def test_a_form_follows_the_input_schema_and_shows_the_servers_422(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "form_kinds.yaml").write_text(FORM_KINDS, encoding="utf-8")
    engine = Engine(models=FakeModel(latency=0.1), template_dirs=[templates])
    async with serving(create_app(engine)) as url, browser_page() as (page, errors):
        await page.goto(f"{url}/")
        await page.get_by_test_id("template-select").select_option("form_kinds")
        await expect(page.get_by_test_id("input-topic")).to_have_js_property("tagName", "TEXTAREA")
        await expect(page.get_by_test_id("input-tone")).to_have_js_property("tagName", "SELECT")
        await expect(page.get_by_test_id("input-tone").locator("option:checked")).to_have_text("casual")
        await expect(page.get_by_test_id("input-words")).to_have_attribute("type", "number")
        await expect(page.get_by_test_id("input-words")).to_have_value("50")
        await expect(page.get_by_test_id("input-shout")).to_have_attribute("type", "checkbox")
        await expect(page.get_by_test_id("input-shout")).not_to_be_checked()

        await page.get_by_test_id("input-topic").fill("tides")
        await page.get_by_test_id("input-words").fill("0")  # below the minimum of 1
        await page.get_by_test_id("template-submit").click()
        error = page.get_by_test_id("form-error")
        await expect(error).to_be_visible()
        await expect(error).to_contain_text("422")
        await expect(error).to_contain_text("input 'words': 0 is less than the minimum of 1")
        await expect(page.get_by_test_id("run-view")).to_be_hidden()

        # corrected, the same form starts the run with the values of each kind of field
        await page.get_by_test_id("input-words").fill("3")
        await page.get_by_test_id("input-tone").select_option(label="formal")
        await page.get_by_test_id("input-shout").check()
        await page.get_by_test_id("template-submit").click()
        await expect(error).to_be_hidden()
        await expect(page.get_by_test_id("run-status")).to_have_text("succeeded", timeout=15_000)
        await page.get_by_test_id("node-write").click()
        await expect(page.get_by_test_id("task-output")).to_have_text(
            "[fast_ai] Write 3 formal words on tides, in capitals.")
        assert unexpected(errors, "422") == []


async def test_a_stream_that_drops_is_resumed_from_the_last_event_id() -> None:
    engine = Engine(models=FakeModel(latency=0.2))
    asked: list[str | None] = []

    async def cut_the_first_stream(route: Route) -> None:
        asked.append(route.request.headers.get("last-event-id"))
        if len(asked) > 1:
            await route.continue_()
            return
        answer = await route.fetch()  # the whole stream, then only its first three events, as if it dropped
        first = "".join(f"{block}\n\n" for block in (await answer.text()).split("\n\n")[:3])
        assert first.startswith("id: 1\n") and "id: 3\n" in first, first
        await route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=first)

    async with serving(create_app(engine)) as url, browser_page() as (page, errors):
        await page.route("**/runs/*/events", cut_the_first_stream)
        await page.goto(f"{url}/")
        await page.get_by_test_id("template-select").select_option("research_report")
        await page.get_by_test_id("input-topic").fill("tides")
        await page.get_by_test_id("template-submit").click()
        await expect(page.get_by_test_id("run-status")).to_have_text("succeeded", timeout=15_000)
        await expect(page.get_by_test_id("node-summary")).to_have_attribute("data-state", "done")
        assert asked == [None, "3"]
        await page.get_by_test_id("node-research").click()  # every delta once: none lost, none twice
        await expect(page.get_by_test_id("task-answer")).to_have_text(
            "[thinking_ai] Research tides for business executives: the state of the field, key figures and trends.")
        assert unexpected(errors) == []


async def test_a_token_protected_server_asks_for_the_token_then_lists_its_runs() -> None:
    token = "t" * 32
    engine = Engine(models=FakeModel(), store=MemoryStore())
    async with serving(create_app(engine, ServerSettings(tokens=(token,)))) as url:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            answer = await client.post("/template/research_report", json={"topic": "tides"})
            assert answer.status_code == 200, answer.text
            run_id = answer.json()["run_id"]
        async with browser_page() as (page, errors):
            await page.goto(f"{url}/")
            await expect(page.get_by_test_id("auth-message")).to_contain_text(re.compile("unauthorized", re.I))
            await expect(page.get_by_test_id("runs-list")).to_have_attribute("data-loaded", "false")

            await page.get_by_test_id("token-input").fill(token)
            await page.get_by_test_id("token-save").click()
            await expect(page.get_by_test_id("runs-list")).to_have_attribute("data-loaded", "true")
            await expect(page.get_by_test_id("auth-message")).to_be_hidden()
            item = page.locator(f'[data-testid="run-item"][data-run-id="{run_id}"]')
            await expect(item).to_contain_text("research_report")
            await expect(item).to_contain_text("succeeded")

            await item.click()  # a finished run, from the store: its own graph, its events replayed
            await expect(page.get_by_test_id("run-status")).to_have_text("succeeded")
            await expect(page.get_by_test_id("node-summary")).to_have_attribute("data-state", "done")
            await expect(page.get_by_test_id("node-outlook")).to_have_attribute("data-state", "skipped")
            await expect(page.get_by_test_id("stream-state")).to_contain_text("ended")
            assert await page.evaluate("sessionStorage.getItem('orchestrion.token')") == token
            assert unexpected(errors, "401") == []
