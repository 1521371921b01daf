"""The one backend interface: what a synthesis step hands an LLM and what it gets back.

A backend takes a batch of chat prompts and returns one completion each (`Backend.generate`);
`BackendConfig` says how to build one and travels to Ray actors, which build their own. Every
backend module (`transformers`, `openai`, `vllm`) implements this and nothing else, so the
synthesis steps never know which one runs.

Assistant prefill: a `Prompt.prefix` (e.g. `{"query": "`) starts the assistant turn so a small
model is steered into the right JSON. transformers and vLLM continue the final message; the
`openai` backend sends it as a final assistant message with vLLM's `continue_final_message`
extension; `prefill=False` leaves it out for hosted APIs that reject unknown fields.
`Completion.text` never includes the prefix.

Schema-constrained decoding: a `Prompt.schema` (a `JsonSchema`: a name and a JSON Schema dict)
asks the backend to produce only output that is valid under it. `transformers` masks the
tokens that would break it at every step (`synth/backends/constraint.py`), `openai` sends it as
`response_format` (`json_schema`, strict) and `vllm` as its structured outputs. The schema
covers the completion alone (vLLM's rule after a prefilled turn), so a prompt with a schema
carries no prefix: the schema fixes the first key anyway. `Completion.finish_reason` is "length" when the
output stopped at `max_tokens`: a constrained output cut off there is incomplete, never parsed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings shared by every backend; recorded in each synthesised record's meta."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 256
    seed: int = 0

    def retry(self, attempt: int) -> SamplingParams:
        """Parameters for the `attempt`-th retry: a new seed, and sampling even if greedy
        (a greedy retry would repeat the rejected output)."""
        return SamplingParams(
            temperature=self.temperature if self.temperature > 0 else 0.7,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed + 1000 * attempt,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JsonSchema:
    """A JSON Schema the output must satisfy, and its name (the task type it belongs to)."""

    name: str
    schema: dict[str, Any]

    def key(self) -> str:
        """The schema as canonical JSON text (a cache key for compiled grammars)."""
        return json.dumps(self.schema, sort_keys=True)


@dataclass(frozen=True)
class Prompt:
    """A chat prompt: messages (system/user/assistant dicts), an optional assistant prefix and
    an optional output schema (see the module docstring)."""

    messages: tuple[dict[str, str], ...]
    prefix: str = ""
    schema: JsonSchema | None = None

    def to_json(self) -> str:
        data: dict[str, Any] = {"messages": list(self.messages), "prefix": self.prefix}
        if self.schema is not None:
            data["schema"] = {"name": self.schema.name, "schema": self.schema.schema}
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Prompt:
        data = json.loads(text)
        schema = data.get("schema")
        return cls(
            tuple(data["messages"]),
            data.get("prefix", ""),
            JsonSchema(schema["name"], schema["schema"]) if schema else None,
        )


@dataclass
class Completion:
    """Generated text (without the prefix), token counts, why it ended ("stop": an end token or
    the schema's end; "length": `max_tokens`), and the transport error if any."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    requests: int = 1  # HTTP attempts for the openai backend; 1 elsewhere
    finish_reason: str = "stop"


class Backend(Protocol):
    """What the synthesis steps need from an LLM: batched chat completion."""

    kind: str
    model_name: str

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]: ...


@dataclass(frozen=True)
class BackendConfig:
    """How to build a backend; picklable so Ray actors can build their own."""

    kind: str = "transformers"
    model: str | None = None  # a local folder or .gguf file; a served model name for openai
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1
    api_key: str | None = None  # openai: default $OPENAI_API_KEY
    batch_size: int = 16  # transformers: prompts per generate() call
    concurrency: int = 8  # openai: requests in flight
    timeout_s: float = 120.0  # openai: per request
    max_retries: int = 5  # openai: transport retries per request
    backoff_s: float = 0.5  # openai: first backoff, doubled per retry
    prefill: bool = True  # send the assistant prefix (see the module docstring)
    device: str | None = None  # transformers: cpu / cuda (default: cuda if available)
    threads: int = 0  # transformers on CPU: torch threads while generating (0: torch's default)
    prefix_cache: bool = True  # transformers: compute a batch's shared prompt prefix once
    tensor_parallel_size: int = 1  # vllm
    gpu_memory_utilization: float = 0.9  # vllm
    extra: dict[str, Any] = field(default_factory=dict)  # vllm: more vllm.LLM(...) arguments

    def public(self) -> dict[str, Any]:
        """The settings worth recording (no API key)."""
        return {k: v for k, v in asdict(self).items() if k != "api_key"}
