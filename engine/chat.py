"""Chat sessions: ``engine.chat(message, session_id=...)`` runs the ``chat`` template with the history.

A session keeps its messages and their token count (in memory, per engine; the
run store will keep them across processes). The history goes into the prompts,
so the engine's token gates see the whole conversation before anything is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.model.tokens import estimate_tokens
from engine.runtime.results import RunResult


@dataclass
class ChatSession:
    session_id: str
    messages: list[tuple[str, str]] = field(default_factory=list)  # (role, text), oldest first
    tokens: int = 0  # an upper estimate of the history's tokens, as the gates count it without a tokenizer

    def history(self) -> str:
        return "\n".join(f"{role}: {text}" for role, text in self.messages)

    def add(self, role: str, text: str) -> None:
        self.messages.append((role, text))
        self.tokens += estimate_tokens(f"{role}: {text}\n")


@dataclass(frozen=True)
class ChatReply:
    answer: str
    category: str | None
    session: ChatSession
    result: RunResult

    @property
    def ok(self) -> bool:
        return self.result.status == "succeeded"


def reply_from(result: RunResult, session: ChatSession) -> ChatReply:
    outputs: dict[str, Any] = result.outputs
    answer = outputs.get("answer")
    return ChatReply("" if answer is None else str(answer), outputs.get("category"), session, result)
