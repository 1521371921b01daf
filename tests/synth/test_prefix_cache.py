"""Shared-prefix key/value caching in the transformers backend, on a tiny random Qwen2 model:
the cached path must generate exactly the tokens of the plain left-padded path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from synth.backends import Prompt, TransformersBackend
from synth.prompts import load_task_template
from tests.synth.conftest import FAST, PERSONAS, transformers_config
from tests.trainer.helpers import tiny_decoder

# ChatML, as Qwen2 writes it; the truncated test tokenizer has no chat template of its own.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Qwen2 causal LM with the truncated Qwen tokenizer and a chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_decoder(tmp_path_factory.mktemp("qwen2"))
    torch.manual_seed(0)  # the LM head the base decoder lacks
    AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    return folder


def generated_ids(backend: TransformersBackend, prompts: list[Prompt], monkeypatch) -> list:
    """The new token ids of every `model.generate` call, and whether it got a prefix cache."""
    calls = []
    generate = backend.model.generate

    def spy(**kwargs):
        output = generate(**kwargs)
        new = output[:, kwargs["input_ids"].shape[1] :].tolist()
        calls.append((new, "past_key_values" in kwargs))
        return output

    with monkeypatch.context() as patch:
        patch.setattr(backend.model, "generate", spy)
        done = backend.generate(prompts, replace(FAST, max_tokens=12))
    assert len(done) == len(prompts) and all(c.completion_tokens > 0 for c in done)
    return calls


def test_prefix_cache_generates_the_same_tokens(tiny_lm, monkeypatch):
    retrieval, sts = load_task_template("retrieval"), load_task_template("sts")
    form = {"language": "English", **retrieval.forms["short-long"]}
    prompts = [
        retrieval.example_prompt(p, "Given a question, retrieve answers." + " More." * i, form)
        for i, p in enumerate((PERSONAS * 4)[:7])
    ] + [
        sts.example_prompt(PERSONAS[0], "Given a sentence about food.", {"language": "German"}),
        sts.example_prompt(PERSONAS[1], "Given a sentence.", {"language": "English"}),
    ]
    # Batches of 3, sorted by template then length: two retrieval batches share one cache; the
    # last holds a retrieval prompt and both sts ones, which share a shorter prefix.
    cached = TransformersBackend(transformers_config(model=str(tiny_lm), batch_size=3))
    plain = TransformersBackend(
        transformers_config(model=str(tiny_lm), batch_size=3, prefix_cache=False)
    )
    with_cache = generated_ids(cached, prompts, monkeypatch)
    without = generated_ids(plain, prompts, monkeypatch)
    assert [new for new, _ in with_cache] == [new for new, _ in without]
    assert [used for _, used in with_cache] == [True] * 3
    assert [used for _, used in without] == [False] * 3


def test_batch_without_a_shared_prefix_takes_the_plain_path(tiny_lm, monkeypatch):
    prompts = [
        Prompt(({"role": "user", "content": f"Describe: {p}"},)) for p in ("a cook", "a pilot")
    ]
    backend = TransformersBackend(transformers_config(model=str(tiny_lm)))
    assert [used for _, used in generated_ids(backend, prompts, monkeypatch)] == [False]
