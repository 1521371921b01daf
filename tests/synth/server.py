"""A small OpenAI-compatible chat server around the transformers backend, for tests and the
synthesis benchmark (not part of the product: it lives under tests/).

    python -m tests.synth.server --port 8000 [--model PATH] [--max-batch 16]

Serves `GET /v1/models` and `POST /v1/chat/completions` (non-streaming), including vLLM's
`continue_final_message` extension for assistant prefill, and `response_format`
`{"type": "json_schema", "json_schema": {"schema": ...}}`: the output is constrained to the
schema by the transformers backend's own token mask (`synth/backends/constraint.py`); a schema
it cannot compile is answered HTTP 400 naming response_format, as vLLM does. `finish_reason` is
"length" when the reply stopped at max_tokens. Concurrent requests are batched:
handler threads queue their prompt and a single generator thread takes whatever is waiting
(up to `--max-batch`, after at most `--batch-wait` seconds) into one left-padded `generate`
call, so more clients give more throughput on one CPU or GPU. Requests in one batch share the
sampling settings of the first one with the same temperature/top_p/max_tokens.

It exists so that the `openai` backend can be run and tested end to end on a machine without
vLLM or llama.cpp. For testing clients it can misbehave on purpose:

- `--fail-first 500,429,bad_json,slow`: each distinct request body first gets these answers in
  order (HTTP 500; HTTP 429 with `Retry-After`; a body that is not JSON; a reply delayed by
  `--slow-s`), then a normal one, whatever the concurrency;
- `--fail-always 500`: every request fails so;
- fault `prose`: a normal reply whose text is prose, not JSON (a server that ignores
  response_format and a model that ignores the prompt);
- `--refuse-response-format`: a request with response_format gets HTTP 400 saying it is not
  supported (as some servers answer), one without it a normal reply.

The model is loaded on the first request that needs it, so a server that only fails starts
at once. With `--port 0` it picks a free port; the first line on stdout is the base URL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from corpus.errors import KalmixError
from synth.backends import (
    Backend,
    BackendConfig,
    Completion,
    Prompt,
    SamplingParams,
    local_model_name,
    make_backend,
    resolve_local_model,
)
from synth.backends.base import JsonSchema
from synth.backends.constraint import compile_schema

FAULTS = ("500", "429", "bad_json", "slow", "prose")
PROSE = "I am happy to help! Here is an example of what such a person might write about."


class Batcher:
    """One generator thread; request threads submit prompts and wait on a future."""

    def __init__(self, config: BackendConfig, max_batch: int, wait_s: float):
        self.config = config
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.queue: queue.Queue[tuple[Prompt, SamplingParams, Future]] = queue.Queue()
        self._backend: Backend | None = None
        self.batches = 0
        threading.Thread(target=self._loop, daemon=True, name="generator").start()

    def submit(self, prompt: Prompt, params: SamplingParams) -> Future:
        future: Future = Future()
        self.queue.put((prompt, params, future))
        return future

    def _take(self) -> list[tuple[Prompt, SamplingParams, Future]]:
        items = [self.queue.get()]
        deadline = time.monotonic() + self.wait_s
        while len(items) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                items.append(self.queue.get(timeout=max(remaining, 0)))
            except queue.Empty:
                break
        return items

    def _loop(self) -> None:
        while True:
            items = self._take()
            groups: dict[tuple, list] = {}
            for item in items:
                p = item[1]
                groups.setdefault((p.temperature, p.top_p, p.max_tokens), []).append(item)
            for group in groups.values():
                try:
                    if self._backend is None:
                        self._backend = make_backend(self.config)
                    done = self._backend.generate([g[0] for g in group], group[0][1])
                    self.batches += 1
                except Exception as err:  # noqa: BLE001 - reported to every waiting request
                    for _, _, future in group:
                        future.set_exception(err)
                    continue
                for (_, _, future), completion in zip(group, done, strict=True):
                    future.set_result(completion)


def make_handler(
    batcher: Batcher,
    model_name: str,
    fail_first: list[str],
    fail_always: str | None,
    slow_s: float,
    refuse_response_format: bool = False,
) -> type[BaseHTTPRequestHandler]:
    seen: dict[str, int] = {}
    seen_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timed out) and will retry: nothing to answer

        def _json(self, status: int, data: dict, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(data).encode(), headers)

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._json(200, {"object": "list", "data": [{"id": model_name, "object": "model"}]})
            else:
                self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            fault = fail_always
            if fault is None and fail_first:
                digest = hashlib.sha256(raw).hexdigest()
                with seen_lock:
                    count = seen.get(digest, 0)
                    seen[digest] = count + 1
                fault = fail_first[count] if count < len(fail_first) else None
            if fault == "500":
                self._json(500, {"error": {"message": "injected server error"}})
                return
            if fault == "429":
                self._json(429, {"error": {"message": "injected rate limit"}}, {"Retry-After": "0"})
                return
            if fault == "bad_json":
                self._send(200, b'{"choices": [{"message": {"content": "unterminated')
                return
            if fault == "slow":
                time.sleep(slow_s)
            if fault == "prose":
                self._json(200, chat_response(model_name, Completion(PROSE, 10, 16)))
                return
            try:
                body = json.loads(raw)
                if refuse_response_format and body.get("response_format"):
                    message = "response_format of type json_schema is not supported"
                    self._json(400, {"error": {"message": message}})
                    return
                prompt, params = parse_request(body)
            except (ValueError, KeyError, TypeError) as err:
                self._json(400, {"error": {"message": f"bad request: {err}"}})
                return
            except KalmixError as err:  # a schema the constraint cannot compile
                self._json(400, {"error": {"message": f"invalid response_format: {err}"}})
                return
            try:
                completion: Completion = batcher.submit(prompt, params).result()
            except Exception as err:  # noqa: BLE001 - the client gets a 500 with the reason
                self._json(500, {"error": {"message": f"{err.__class__.__name__}: {err}"}})
                return
            self._json(200, chat_response(model_name, completion))

    return Handler


def parse_request(body: dict[str, Any]) -> tuple[Prompt, SamplingParams]:
    """Prompt and sampling settings of a chat completion request."""
    messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
    if not messages:
        raise ValueError("messages is empty")
    prefix = ""
    if body.get("continue_final_message") and messages[-1]["role"] == "assistant":
        prefix = messages.pop()["content"]
    schema = None
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        spec = response_format["json_schema"]
        schema = JsonSchema(str(spec.get("name") or "response"), spec["schema"])
        compile_schema(schema)  # a KalmixError for a schema that cannot be compiled
    params = SamplingParams(
        temperature=float(body.get("temperature", 1.0)),
        top_p=float(body.get("top_p", 1.0)),
        max_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 256),
        seed=int(body.get("seed") or 0),
    )
    return Prompt(tuple(messages), prefix, schema), params


def chat_response(model: str, completion: Completion) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str | None = None,
    max_batch: int = 16,
    batch_wait_s: float = 0.02,
    fail_first: list[str] | None = None,
    fail_always: str | None = None,
    slow_s: float = 5.0,
    threads: int = 0,
    refuse_response_format: bool = False,
) -> ThreadingHTTPServer:
    """A started server (serving on a daemon thread); `.server_address` has the real port."""
    for fault in [*(fail_first or []), *([fail_always] if fail_always else [])]:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of: {', '.join(FAULTS)}")
    model_name = local_model_name(*resolve_local_model(model))
    batcher = Batcher(
        BackendConfig(kind="transformers", model=model, batch_size=max_batch, threads=threads),
        max_batch,
        batch_wait_s,
    )
    handler = make_handler(
        batcher, model_name, fail_first or [], fail_always, slow_s, refuse_response_format
    )
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="http").start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--model", default=None, help="local folder or .gguf (default SmolLM2)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-wait", type=float, default=0.02, help="seconds to fill a batch")
    parser.add_argument("--fail-first", default="", help=f"comma-separated: {', '.join(FAULTS)}")
    parser.add_argument("--fail-always", default=None, choices=FAULTS)
    parser.add_argument("--slow-s", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--refuse-response-format",
        action="store_true",
        help="answer requests with response_format HTTP 400",
    )
    args = parser.parse_args()
    try:
        server = serve(
            args.host,
            args.port,
            args.model,
            args.max_batch,
            args.batch_wait,
            [f for f in args.fail_first.split(",") if f],
            args.fail_always,
            args.slow_s,
            args.threads,
            args.refuse_response_format,
        )
    except (KalmixError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    host, port = server.server_address[:2]
    print(f"http://{host}:{port}/v1", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
