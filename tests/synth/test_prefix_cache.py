"""The transformers backend's own decoding loop, on a tiny random Qwen2 model: with and without
the shared-prefix key/value cache, and with rows that end early leaving the batch, greedy
decoding must generate exactly the tokens of a plain one-prompt-at-a-time `model.generate`."""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

from synth.backends import Prompt, SamplingParams, TransformersBackend
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


def decoded(
    backend: TransformersBackend, prompts: list[Prompt], params: SamplingParams, monkeypatch
) -> tuple[list, list]:
    """(new token rows, whether it got a prefix cache) of every `_decode` call, and the
    completions."""
    calls = []
    decode = backend._decode

    def spy(input_ids, mask, prefix_cache, *args):
        rows = decode(input_ids, mask, prefix_cache, *args)
        calls.append((rows, prefix_cache is not None))
        return rows

    with monkeypatch.context() as patch:
        patch.setattr(backend, "_decode", spy)
        done = backend.generate(prompts, params)
    assert len(done) == len(prompts) and all(c.completion_tokens > 0 for c in done)
    return calls, done


def one_at_a_time(backend: TransformersBackend, prompts: list[Prompt], max_tokens: int) -> list:
    """Greedy tokens of a plain `model.generate` per prompt (no padding, no cache), through the
    first end-of-sequence token: what the batched loop must reproduce."""
    import torch

    eos = backend.model.generation_config.eos_token_id
    rows = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = backend.tokenizer(
                backend.render(prompt), return_tensors="pt", add_special_tokens=False
            )
            out = backend.model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
            new = out[0, ids.input_ids.shape[1] :].tolist()
            rows.append(new[: new.index(eos) + 1] if eos in new else new)
    return rows


@pytest.fixture
def prompts() -> list[Prompt]:
    """Seven retrieval prompts and two sts ones: in batches of 3, sorted by template then
    length, two retrieval batches share one cache; the last holds a retrieval prompt and both
    sts ones, which share a shorter prefix."""
    retrieval, sts = load_task_template("retrieval"), load_task_template("sts")
    form = {"language": "English", **retrieval.forms["short-long"]}
    return [
        retrieval.example_prompt(p, "Given a question, retrieve answers." + " More." * i, form)
        for i, p in enumerate((PERSONAS * 4)[:7])
    ] + [
        sts.example_prompt(PERSONAS[0], "Given a sentence about food.", {"language": "German"}),
        sts.example_prompt(PERSONAS[1], "Given a sentence.", {"language": "English"}),
    ]


def test_batched_decoding_generates_the_tokens_of_one_at_a_time_generate(
    tiny_lm, prompts, monkeypatch
):
    cached = TransformersBackend(transformers_config(model=str(tiny_lm), batch_size=3))
    plain = TransformersBackend(
        transformers_config(model=str(tiny_lm), batch_size=3, prefix_cache=False)
    )
    # The random model writes 12 tokens that differ between the templates; make a token only
    # the retrieval rows write at step 6 the end of sequence: the mixed last batch then drops
    # its retrieval row mid-way and decodes on with the two sts rows to the length limit. Both
    # backends use the one loaded model, so both see that end of sequence.
    params = replace(FAST, max_tokens=12)
    full = one_at_a_time(cached, prompts, 12)
    assert all(len(row) == 12 for row in full) and full[0] != full[-1]
    monkeypatch.setattr(cached.model.generation_config, "eos_token_id", full[0][5])
    expected = one_at_a_time(cached, prompts, 12)
    assert sorted({len(row) for row in expected}) == [6, 12]

    with_cache, done = decoded(cached, prompts, params, monkeypatch)
    without, plain_done = decoded(plain, prompts, params, monkeypatch)
    assert [rows for rows, _ in with_cache] == [rows for rows, _ in without]
    assert sorted(row for rows, _ in with_cache for row in rows) == sorted(expected)
    assert [len(row) for row in expected] == [c.completion_tokens for c in done]
    assert [cached.tokenizer.decode(row[:-1] if len(row) < 12 else row) for row in expected] == [
        c.text for c in done
    ]
    assert [(c.text, c.completion_tokens) for c in done] == [
        (c.text, c.completion_tokens) for c in plain_done
    ]
    assert [used for _, used in with_cache] == [True] * 3
    assert [used for _, used in without] == [False] * 3


def test_sampling_is_reproducible_with_a_seed(tiny_lm, prompts):
    backend = TransformersBackend(transformers_config(model=str(tiny_lm), batch_size=3))
    params = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=8, seed=3)
    first = [c.text for c in backend.generate(prompts, params)]
    assert [c.text for c in backend.generate(prompts, params)] == first
    assert [c.text for c in backend.generate(prompts, replace(params, seed=4))] != first


def test_batch_without_a_shared_prefix_takes_the_plain_path(tiny_lm, monkeypatch):
    prompts = [
        Prompt(({"role": "user", "content": f"Describe: {p}"},)) for p in ("a cook", "a pilot")
    ]
    backend = TransformersBackend(transformers_config(model=str(tiny_lm)))
    calls, _ = decoded(backend, prompts, replace(FAST, max_tokens=12), monkeypatch)
    assert [used for _, used in calls] == [False]


def test_decoding_uses_the_models_current_cache_keyword(tiny_lm, prompts):
    """transformers 5.24 renamed the forward's `past_key_values` to `cache`: the old name logs
    a deprecation once, warns on every call, and goes in 5.40. The prefix cache and the decoding
    loop (both paths run here) pass and read `cache`."""
    from transformers.utils import logging as hf_logging

    backend = TransformersBackend(transformers_config(model=str(tiny_lm), batch_size=3))
    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = logged.append
    logger = hf_logging.get_logger("transformers")
    hf_logging.warning_once.cache_clear()  # a deprecation logged by an earlier test logs again
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backend.generate(prompts, replace(FAST, max_tokens=4))
    finally:
        logger.removeHandler(handler)
    said = [str(w.message) for w in caught] + [r.getMessage() for r in logged]
    assert not [m for m in said if "past_key_values" in m or "cache_params" in m], said
