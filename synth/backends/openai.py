"""The `openai` backend: any OpenAI-compatible HTTP server (`vllm serve`, llama.cpp's server,
a hosted API).

Requests run on a bounded thread pool with timeouts, retries with exponential backoff and
jitter, `Retry-After` on 429, and retries on 5xx and on malformed response bodies. A prompt that
still fails comes back with `error` set, so the caller counts it as rejected instead of losing
it. The assistant prefix goes as a final assistant message with vLLM's `continue_final_message`
extension unless `prefill` is off (see `synth.backends.base`).

A prompt with a schema is sent with `response_format` = `{"type": "json_schema", "json_schema":
{"name", "schema", "strict": true}}` (vLLM, llama.cpp's server and OpenAI honour it). A server
that refuses it (HTTP 400 or 422 whose body mentions response_format or json_schema) gets the
request again without it, and every later one too: the output is then unconstrained and only
validated, and the backend says so once, on one warning line.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from corpus.console import err_console
from corpus.errors import KalmixError
from synth.backends.base import BackendConfig, Completion, Prompt, SamplingParams


class OpenAIBackend:
    """Chat completions over HTTP against any OpenAI-compatible server."""

    kind = "openai"

    def __init__(self, config: BackendConfig):
        import requests

        if not config.base_url:
            raise KalmixError(
                "the openai backend needs --base-url, e.g. http://127.0.0.1:8000/v1 for "
                "`vllm serve`"
            )
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self.api_key = config.api_key or os.environ.get("OPENAI_API_KEY") or ""
        self._requests = requests
        self._local = threading.local()
        self._constrain = True  # off once the server refused response_format
        self._warn_lock = threading.Lock()
        self.model_name = self._served_model(config.model)

    def _session(self):
        if not hasattr(self._local, "session"):
            session = self._requests.Session()
            if self.api_key:
                session.headers["Authorization"] = f"Bearer {self.api_key}"
            self._local.session = session
        return self._local.session

    def _served_model(self, model: str | None) -> str:
        """`model`, or the first model the server lists. The list is asked for either way: an
        unreachable server fails here, in one line, instead of after every job's retries."""
        try:
            reply = self._session().get(
                f"{self.base_url}/models", timeout=min(self.config.timeout_s, 30.0)
            )
        except self._requests.RequestException as err:
            raise KalmixError(
                f"cannot reach the server at {self.base_url} ({err.__class__.__name__}): start "
                "it (e.g. `vllm serve MODEL` or llama.cpp's `llama-server -m MODEL.gguf`) or fix "
                "--base-url"
            ) from None
        if model:
            return model  # servers without a model list work when the name is given
        try:
            reply.raise_for_status()
            return reply.json()["data"][0]["id"]
        except (self._requests.RequestException, ValueError, KeyError, IndexError) as err:
            raise KalmixError(
                f"cannot list models at {self.base_url}/models ({err.__class__.__name__}: "
                f"{err}); check --base-url, or pass --model with the served model name"
            ) from None

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        workers = max(1, min(self.config.concurrency, len(prompts)))
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda p: self._complete(p, params), prompts))

    def _body(self, prompt: Prompt, params: SamplingParams) -> dict[str, Any]:
        messages = list(prompt.messages)
        body: dict[str, Any] = {
            "model": self.model_name,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
        }
        if prompt.prefix and self.config.prefill:
            messages.append({"role": "assistant", "content": prompt.prefix})
            body.update(continue_final_message=True, add_generation_prompt=False)
        body["messages"] = messages
        if prompt.schema is not None and self._constrain:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": prompt.schema.name,
                    "schema": prompt.schema.schema,
                    "strict": True,
                },
            }
        return body

    def _refused_schema(self, reply: Any, body: dict[str, Any]) -> bool:
        """True (and constraining off from now on, said once) when the server refused the
        request's response_format."""
        if "response_format" not in body or reply.status_code not in (400, 422):
            return False
        text = reply.text.lower()
        if "response_format" not in text and "json_schema" not in text:
            return False
        with self._warn_lock:
            if self._constrain:
                self._constrain = False
                err_console.print(
                    f"warning: {self.base_url} refused response_format (HTTP "
                    f"{reply.status_code}); generating without schema constraints, the output "
                    "is only validated"
                )
        return True

    def _complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        body = self._body(prompt, params)
        url = f"{self.base_url}/chat/completions"
        error = "no attempt"
        for attempt in range(self.config.max_retries + 1):
            wait = self.config.backoff_s * (2**attempt) * (0.5 + random.random())
            try:
                reply = self._session().post(url, json=body, timeout=self.config.timeout_s)
                if self._refused_schema(reply, body):
                    body.pop("response_format")  # the same request, unconstrained
                    reply = self._session().post(url, json=body, timeout=self.config.timeout_s)
            except self._requests.RequestException as err:
                error = f"transport: {err.__class__.__name__}"
            else:
                if reply.status_code == 200:
                    parsed = _parse_chat_reply(reply, prompt.prefix)
                    if isinstance(parsed, Completion):
                        parsed.requests = attempt + 1
                        return parsed
                    error = parsed
                elif reply.status_code == 429 or reply.status_code >= 500:
                    error = f"http {reply.status_code}"
                    if reply.status_code == 429:
                        wait = max(wait, _retry_after(reply))
                elif reply.status_code in (401, 403):
                    raise KalmixError(
                        f"{url} refused the API key (HTTP {reply.status_code}): set "
                        "OPENAI_API_KEY or pass --api-key"
                    )
                else:
                    raise KalmixError(
                        f"{url} rejected the request (HTTP {reply.status_code}): "
                        f"{reply.text[:300]}"
                        + ("; try --no-prefill" if prompt.prefix and self.config.prefill else "")
                    )
            if attempt < self.config.max_retries:
                time.sleep(min(wait, 60.0))
        return Completion("", error=error, requests=self.config.max_retries + 1)


def _retry_after(reply: Any) -> float:
    try:
        return float(reply.headers.get("Retry-After", 0))
    except ValueError:
        return 0.0


def _parse_chat_reply(reply: Any, prefix: str) -> Completion | str:
    """A Completion, or the reason the body is unusable (a retryable error)."""
    try:
        data = reply.json()
        choice = data["choices"][0]
        text = choice["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        return "malformed response"
    if prefix and text.startswith(prefix):  # servers that echo the prefilled turn
        text = text[len(prefix) :]
    usage = data.get("usage") or {}
    return Completion(
        text,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
    )
