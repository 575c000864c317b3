"""The cost cap holds: a call without ``max_tokens`` is bounded by what the budget can pay.

Ten tasks at once, each wanting a 2,500-token answer, against ``limits.max_cost_usd``:
with a provider that keeps to ``max_tokens`` the run never spends past the cap; with
one that ignores it, past the cap by no more than each concurrent call's own overrun.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from engine import BudgetExceededError, Engine, ModelError, ModelRequest, ModelResponse, Usage
from engine.config import EngineConfig, HttpProviderConfig, ModelConfig
from engine.model.client import Message
from engine.model.prices import DEFAULT_OUTPUT_ESTIMATE, Price, prompt_bound
from engine.resilience.budget import MIN_ANSWER_TOKENS, Budget, SpendStage
from engine.resilience.call import Call, RunContext
from engine.runtime.results import TaskResult
from engine.testing import FakeModel, capture_events
from tests.support.fault_server import FaultServer, running_fault_server

pytestmark = pytest.mark.anyio

PRICE = Price(input=3.0, output=15.0)  # dollars per million tokens
WANTED = 2_500  # the answer each task would give if nothing bounded it
CONCURRENCY = 10


class Writer:
    """A provider whose answers run to ``wanted`` tokens: cut at ``max_tokens`` if it ``honours`` it.

    It records what each call was sent, and how many calls were in flight at once.
    """

    def __init__(self, *, honours: bool, wanted: int = WANTED) -> None:
        self.honours, self.wanted = honours, wanted
        self.sent: list[int | None] = []
        self.in_flight = self.most_in_flight = 0

    async def __call__(self, request: ModelRequest) -> ModelResponse:
        self.sent.append(request.max_tokens)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        # Long enough for a wave of tasks to be in flight together; staggered, so that calls settle
        # one by one and later tasks start while others are still in flight.
        await anyio.sleep(0.01 * (1 + len(self.sent) % CONCURRENCY))
        self.in_flight -= 1
        tokens = self.wanted if not self.honours or request.max_tokens is None else min(self.wanted, request.max_tokens)
        prompt = sum((len(m.content) + 3) // 4 for m in request.messages)  # within the budget's bound on it
        finish = "stop" if tokens == self.wanted else "length"
        return ModelResponse("w" * tokens, Usage(prompt, tokens), finish_reason=finish)


def capped(tasks: int, limit: float | None, **defaults: Any) -> dict[str, Any]:
    limits = {"max_concurrency": CONCURRENCY} | ({} if limit is None else {"max_cost_usd": limit})
    return {"dsl": "orchestrion/v1", "name": "cap", "limits": limits, "defaults": {"model": "fast_ai", **defaults},
            "stages": [{"type": "linear", "tasks": [
                {"id": f"t{i}", "prompt": f"write {i}", "critical": False} for i in range(tasks)]}]}


async def spend(writer: Writer, document: dict[str, Any]) -> float:
    result = await Engine(models=FakeModel({"fast_ai": writer}), prices={"fast_ai": PRICE}).run(document)
    assert result.status == "succeeded", result.error  # refused calls fail only their non-critical tasks
    return result.totals.cost_usd


def reservation(max_tokens: int) -> float:
    """What a `write N` call at ``max_tokens`` reserves: its prompt's bound, and a full answer."""
    prompt = prompt_bound(ModelRequest("fast_ai", (Message("user", "write 0"),)))
    return PRICE.cost(Usage(prompt, max_tokens))


# -- the engine ----------------------------------------------------------------------------------

async def test_ten_concurrent_unbounded_answers_stay_within_the_cap() -> None:
    writer = Writer(honours=True)
    spent = await spend(writer, capped(CONCURRENCY, 0.20))
    assert writer.most_in_flight == CONCURRENCY
    assert spent <= 0.20  # $0.375 when each call was reserved at 1,024 tokens but sent without a bound
    assert writer.sent == [DEFAULT_OUTPUT_ESTIMATE] * CONCURRENCY  # the budget pays for ten full bounds


async def test_the_last_calls_are_given_what_is_left_then_refused() -> None:
    writer = Writer(honours=True)
    spent = await spend(writer, capped(CONCURRENCY, 0.10))
    full = [bound for bound in writer.sent if bound == DEFAULT_OUTPUT_ESTIMATE]
    rest = [bound for bound in writer.sent if bound != DEFAULT_OUTPUT_ESTIMATE]
    assert len(full) == 6 and len(rest) == 1 and rest[0] is not None  # 6 at $0.0154, then the remainder
    reserved = len(full) * reservation(DEFAULT_OUTPUT_ESTIMATE) + reservation(rest[0])
    assert reserved <= 0.10 < reserved + PRICE.output / 1e6  # the largest answer the remainder pays for
    assert spent <= 0.10 and len(writer.sent) == 7  # the other three could not pay for 16 tokens


@pytest.mark.parametrize("tasks", [CONCURRENCY, 3 * CONCURRENCY])
@pytest.mark.parametrize("wanted", [WANTED, 12_500])
async def test_a_provider_that_ignores_max_tokens_overruns_by_one_call_per_slot(tasks: int, wanted: int) -> None:
    writer = Writer(honours=False, wanted=wanted)
    spent = await spend(writer, capped(tasks, 0.20))
    overrun = PRICE.cost(Usage(0, wanted - DEFAULT_OUTPUT_ESTIMATE))
    assert spent > 0.20  # it did overrun: the cap is passed, by the calls already in flight only
    assert spent <= 0.20 + CONCURRENCY * overrun
    assert tasks == CONCURRENCY or len(writer.sent) < tasks  # once settled past the cap, nothing more is sent


async def test_an_explicit_max_tokens_is_sent_and_reserved_as_is() -> None:
    writer = Writer(honours=True)
    spent = await spend(writer, capped(CONCURRENCY, 0.20, max_tokens=2_000))
    assert writer.sent == [2_000] * 6  # $0.03 reserved each: six fit under $0.20, the other four are refused
    assert spent <= 0.20


async def test_without_a_limit_the_request_is_unchanged_and_nothing_is_estimated(monkeypatch) -> None:
    def never(*args: Any) -> Any:
        raise AssertionError("estimated without a limit")

    monkeypatch.setattr("engine.resilience.budget.prompt_bound", never)
    monkeypatch.setattr("engine.resilience.budget.estimate_usage", never)
    writer = Writer(honours=True)
    spent = await spend(writer, capped(CONCURRENCY, None))
    assert writer.sent == [None] * CONCURRENCY and spent == pytest.approx(CONCURRENCY * PRICE.cost(Usage(2, WANTED)))


async def test_each_model_of_a_fallback_chain_is_bounded_at_its_own_price() -> None:
    def refuse(request: ModelRequest) -> ModelError:
        return ModelError("bad_request", "no", model=request.model)

    fake = FakeModel({"medium_ai": refuse, "fast_ai": "ok"})
    prices = {"medium_ai": Price(input=3.0, output=1_000.0), "fast_ai": PRICE}
    document = capped(1, 0.10, model=["medium_ai", "fast_ai"])
    result = await Engine(models=fake, prices=prices).run(document)
    assert result.tasks["t0"].output == "ok"
    medium, fast = fake.calls
    assert medium.max_tokens == 99 and fast.max_tokens == DEFAULT_OUTPUT_ESTIMATE  # $0.10 pays 99 at $1,000/M


async def test_a_streamed_call_is_sent_the_bound_too() -> None:
    writer = Writer(honours=True)
    engine = Engine(models=FakeModel({"fast_ai": writer}), prices={"fast_ai": PRICE})
    with capture_events(engine) as events:  # somebody listens: the answer is streamed
        result = await engine.run(capped(2, 0.02))
    assert any(event.type == "token_delta" for event in events)
    assert writer.sent[0] == DEFAULT_OUTPUT_ESTIMATE and writer.sent[1] is not None and writer.sent[1] < 400
    assert result.totals.cost_usd <= 0.02


# -- the spend stage alone -----------------------------------------------------------------------

def call_with(limit: float | None) -> Call:
    return Call("task", RunContext(budget=Budget(limit)), TaskResult("task"))


REQUEST = ModelRequest("fast_ai", (Message("user", "write 0"),))


def test_the_bound_is_the_largest_answer_the_unreserved_budget_pays_for() -> None:
    stage, call = SpendStage({"fast_ai": PRICE}), call_with(0.01)
    call.run.budget.reserve(0.004, "other")  # another call's pending spend is not this call's to use
    bounded = stage.bound(REQUEST, call)
    assert bounded.max_tokens is not None and bounded.messages == REQUEST.messages
    assert reservation(bounded.max_tokens) <= 0.006 < reservation(bounded.max_tokens + 1)
    stage.enter(bounded, call)
    assert call.reserved == pytest.approx(reservation(bounded.max_tokens))  # reserved: exactly what it may cost


def test_a_budget_that_cannot_pay_a_minimal_answer_refuses_the_call() -> None:
    stage, call = SpendStage({"fast_ai": PRICE}), call_with(reservation(MIN_ANSWER_TOKENS - 1))
    bounded = stage.bound(REQUEST, call)
    assert bounded.max_tokens == MIN_ANSWER_TOKENS
    with pytest.raises(BudgetExceededError):
        stage.enter(bounded, call)


@pytest.mark.parametrize(("limit", "request_", "prices"), [
    (None, REQUEST, {"fast_ai": PRICE}),  # no limit
    (1.0, ModelRequest("fast_ai", REQUEST.messages, max_tokens=5_000), {"fast_ai": PRICE}),  # its own bound
    (1.0, REQUEST, {}),  # answers that cost nothing
])
def test_the_bound_leaves_other_requests_alone(limit: float | None, request_: ModelRequest,
                                               prices: dict[str, Price]) -> None:
    assert SpendStage(prices).bound(request_, call_with(limit)) is request_


# -- over HTTP -----------------------------------------------------------------------------------

@pytest.fixture
def server() -> Iterator[FaultServer]:
    with running_fault_server() as running:
        yield running


@pytest.fixture
async def http_engine(server: FaultServer) -> Any:
    provider = HttpProviderConfig(kind="openai", base_url=server.url, api_key="sk-cost-cap", timeout=5)
    model = ModelConfig(provider="local", model="m-fast", input_price=PRICE.input, output_price=PRICE.output)
    made: list[Engine] = []

    def make(**options: Any) -> Engine:
        made.append(Engine(EngineConfig(providers={"local": provider}, models={"fast_ai": model}), **options))
        return made[-1]

    yield make
    for engine in made:
        await engine.aclose()


EngineFactory = Callable[..., Engine]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_the_bound_is_in_the_body_sent_to_the_server(server: FaultServer, http_engine: EngineFactory,
                                                           stream: bool) -> None:
    server.default, server.hang_seconds = "hang", 0.1  # slow answers: all three calls are in flight together
    engine = http_engine(stream_tokens=stream)
    with capture_events(engine):
        result = await engine.run(capped(3, 0.04))
    assert result.status == "succeeded", result.error
    assert [body["stream"] for body in server.requests] == [stream] * 3
    bounds = sorted(body["max_tokens"] for body in server.requests)  # the third gets what the first two left
    assert bounds[1:] == [DEFAULT_OUTPUT_ESTIMATE] * 2 and MIN_ANSWER_TOKENS <= bounds[0] < DEFAULT_OUTPUT_ESTIMATE


async def test_without_a_limit_no_max_tokens_is_sent(server: FaultServer, http_engine: EngineFactory) -> None:
    result = await http_engine().run(capped(2, None))
    assert result.status == "succeeded" and all("max_tokens" not in body for body in server.requests)
