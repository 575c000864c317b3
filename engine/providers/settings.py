"""What each provider kind is configured with (``providers:`` in ``orchestrion.yaml``), and the one
table of kinds: the name a configuration uses, its settings, and the class that serves it.

The classes are imported only when a provider of their kind is built, so
httpx and llama-cpp-python cost nothing to an engine that does not use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr

from engine.dsl.models import StrictModel


class _Provider(StrictModel):
    rpm: int | None = Field(None, ge=1, description="Requests per minute; calls wait when the limit is near.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute; calls wait when the limit is near.")


class FakeProviderConfig(_Provider):
    """Answers from ``engine.testing.FakeModel``: scripted per alias, else an echo."""

    kind: Literal["fake"] = Field(description="Provider kind.")
    answers: dict[str, Any] = Field(default_factory=dict,
                                    description="Scripted answers per alias (a list is served in order).")
    latency: float = Field(0.0, ge=0, description="Seconds each answer takes.")
    echo: bool = Field(True, description="Echo the prompt for aliases without answers.")


class HttpProviderConfig(_Provider):
    """A model service over HTTP: any OpenAI-compatible API, Anthropic's Messages API, or Gemini."""

    kind: Literal["openai", "anthropic", "gemini"] = Field(description="Which wire format the service speaks.")
    base_url: str | None = Field(None, description="The API's root URL (default: the vendor's public one).")
    api_key: SecretStr | None = Field(None, description='The key, usually "${ENV_VAR}"; never logged.')
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers on every request.")
    timeout: float = Field(600.0, gt=0, description="Seconds before an HTTP request gives up (read timeout).")
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to establish a connection.")
    max_connections: int = Field(32, ge=1, description="Connections the provider's HTTP client may open.")
    structured_output: Literal["json_schema", "json_object", "prompt"] = Field(
        "json_schema", description="How `openai` providers ask for JSON: OpenAI's `json_schema` response format; "
        "`json_object` with a `schema` (llama.cpp server); or only the instruction in the prompt.")
    poll_interval: float = Field(
        10.0, gt=0, description="Seconds before the first poll of a long-running operation (a Veo video); each "
        "next wait is 1.5 times longer, at most 60 s. The task's `timeout` bounds the whole operation.")


class LlamaCppProviderConfig(_Provider):
    """A GGUF model run in process by llama.cpp (``orchestrion[local]``)."""

    kind: Literal["llama_cpp"] = Field(description="Provider kind.")
    model_path: str | None = Field(None, description="A .gguf file (default: the packaged Gemma 3 270M).")
    n_ctx: int = Field(8192, ge=256, description="Context window the model is loaded with, in tokens.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads (default: llama.cpp's choice).")
    seed: int = Field(0, description="Sampling seed, for repeatable answers.")
    prompt_format: Literal["auto", "chat", "completion"] = Field(
        "auto", description="How requests are put to the model: `chat` renders the turns with the model's chat "
        "template (Gemma's turns if the GGUF has none); `completion` writes them as a plain Question/Answer "
        "transcript for a pretrained base model to continue; `auto` uses `chat` when the GGUF has a chat "
        "template, else `completion` (the packaged base model).")


ProviderConfig = Annotated[
    FakeProviderConfig | HttpProviderConfig | LlamaCppProviderConfig, Field(discriminator="kind")
]


@dataclass(frozen=True, slots=True)
class ProviderKind:
    """A kind of provider: its settings model, and ``module:Class`` of its client."""

    settings: type[StrictModel]
    client: str


PROVIDER_KINDS: dict[str, ProviderKind] = {
    "fake": ProviderKind(FakeProviderConfig, "engine.providers.fake:FakeModel"),
    "openai": ProviderKind(HttpProviderConfig, "engine.providers.openai:OpenAIProvider"),
    "anthropic": ProviderKind(HttpProviderConfig, "engine.providers.anthropic:AnthropicProvider"),
    "gemini": ProviderKind(HttpProviderConfig, "engine.providers.gemini:GeminiProvider"),
    "llama_cpp": ProviderKind(LlamaCppProviderConfig, "engine.providers.llama_cpp:LlamaCppProvider"),
}

