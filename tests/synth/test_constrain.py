"""Schema-constrained decoding with SmolLM2: the transformers backend's token mask, the openai
backend's response_format against the bundled server (which honours it with the same mask),
the fallback where a server refuses it, prose from a server that ignores it, and truncation."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator

from catalog import versions
from corpus.errors import KalmixError
from kalmix.synthesis import SynthSettings, run_generate
from synth.backends import BackendConfig, OpenAIBackend, Prompt, SamplingParams
from synth.backends.base import JsonSchema
from synth.backends.constraint import compile_schema
from synth.backends.transformers import TransformersBackend
from synth.generate import ExampleRecipe, SynthOperator, plan_examples, run_recipe
from synth.prompts import Field, default_template_dir, load_task_template, task_types_available
from tests.synth.conftest import PERSONAS, start_server, transformers_config

PATIENT = {"timeout_s": 900.0}  # the server loads the model on its first request
SAMPLED = SamplingParams(temperature=0.9, top_p=0.95, max_tokens=96, seed=3)


def _tight(task_type: str):
    """The task type's template with every text at most 60 characters, so that a constrained
    example always fits in 96 tokens."""
    template = load_task_template(task_type)
    return replace(template, fields=tuple(replace(f, max_chars=60) for f in template.fields))


def _example_prompts(templates, constrain: bool) -> list[Prompt]:
    prompts = []
    for template in templates:
        params = {"language": "English", "target_language": "German"}
        if template.forms:
            params.update(template.forms["short-long"])
        task = template.example["shot_task"]
        prompts.append(template.example_prompt(PERSONAS[0], task, params, constrain))
    return prompts


@pytest.fixture(scope="module")
def backend():
    return TransformersBackend(transformers_config())


def test_constrained_outputs_always_parse_and_pass_the_schema(backend):
    templates = [_tight(t) for t in task_types_available()]
    prompts = _example_prompts(templates, constrain=True)
    assert all(p.schema is not None and p.prefix == "" for p in prompts)
    done = backend.generate(prompts, SAMPLED)
    for template, completion in zip(templates, done, strict=True):
        assert completion.finish_reason == "stop", completion.text
        obj = json.loads(completion.text)  # strict JSON, nothing to repair
        assert list(obj) == [f.key for f in template.fields]
        assert not list(Draft202012Validator(template.schema).iter_errors(obj))


def test_constraints_keep_the_shared_prefix_cache_and_batched_loop(backend):
    """Constrained greedy output is the same with and without the shared-prefix cache, in one
    batch of constrained and unconstrained rows (rows ending early leave the batch)."""
    templates = [_tight(t) for t in ("sts", "clustering", "retrieval")]
    prompts = _example_prompts(templates, constrain=True) + _example_prompts(templates, False)
    greedy = replace(SAMPLED, temperature=0.0, max_tokens=48)
    cached = backend.generate(prompts, greedy)
    uncached = TransformersBackend(transformers_config(prefix_cache=False)).generate(
        prompts, greedy
    )
    assert [c.text for c in cached] == [c.text for c in uncached]
    assert len({c.completion_tokens for c in cached}) > 1  # rows ended at different steps
    for template, completion in zip(templates, cached[:3], strict=True):
        if completion.finish_reason == "stop":
            assert not list(
                Draft202012Validator(template.schema).iter_errors(json.loads(completion.text))
            )


def test_prose_prompt_still_gives_schema_json(backend):
    """The mask decides, not the prompt: asked for a poem, the model still writes the object."""
    schema = JsonSchema("poem", _tight("sts").schema)
    poem = ({"role": "user", "content": "Write a short poem about the sea."},)
    plain, constrained = backend.generate(
        [Prompt(poem), Prompt(poem, schema=schema)], replace(SAMPLED, temperature=0.0)
    )
    assert not plain.text.lstrip().startswith("{")
    assert not list(Draft202012Validator(schema.schema).iter_errors(json.loads(constrained.text)))


class _ExampleOnly:
    """The example step alone, for a fixed task description (a real recipe, one step)."""

    steps = ("example",)

    def __init__(self, template):
        self.recipe = ExampleRecipe({template.task_type: template})
        self.template = template

    def prompt(self, step, job, outputs):
        task = self.template.example["shot_task"]
        return self.template.example_prompt(job["persona"], task, {"language": "English"}, True)

    def parse(self, step, text, job, outputs):
        return self.recipe.parse(step, text, job, {"task": ""})


def test_constrained_output_cut_at_max_tokens_is_truncated_not_parsed(backend):
    template = load_task_template("sts")
    jobs = [
        {
            "job_id": f"j{i}",
            "persona": p,
            "task_type": "sts",
            "language": "en",
            "target_language": "",
        }
        for i, p in enumerate(PERSONAS)
    ]
    rows = run_recipe(
        _ExampleOnly(template), jobs, backend, replace(SAMPLED, max_tokens=14), max_retries=1
    )
    for row in rows:
        assert not row["ok"] and row["reason"] == "example:truncated"
        assert row["raw"].startswith('{"sentence1": "')
    assert all(json.loads(r["attempts"]) == {"example": 2} for r in rows)


def test_uncompilable_schema_is_an_error_naming_the_task_type(backend, cat, personas):
    template = load_task_template("sts")
    broken = replace(template, fields=(Field("sentence1", "query", min_chars=50, max_chars=10),))
    with pytest.raises(KalmixError, match="task type 'sts'.*unsatisfiable"):
        compile_schema(broken.output_schema())
    prompt = broken.example_prompt(PERSONAS[0], "Given a sentence.", {"language": "English"}, True)
    with pytest.raises(KalmixError, match="task type 'sts'"):
        backend.generate([prompt], SAMPLED)
    folder = cat.workspace.root / "templates"
    folder.mkdir()
    text = (default_template_dir() / "sts.toml").read_text()
    (folder / "sts.toml").write_text(
        text.replace("min_chars = 8\n", "min_chars = 8\nmax_chars = 4\n", 1)
    )
    settings = SynthSettings(transformers_config(), SAMPLED, max_retries=0)
    args = dict(task_types=["sts"], per_persona=1, languages=["en"], name="bad", templates=folder)
    with pytest.raises(KalmixError, match="task type 'sts'"):
        run_generate(cat, "faq-personas", settings=settings, show_progress=False, **args)


@pytest.fixture(scope="module")
def server():
    proc, url = start_server("--max-batch", "8", "--threads", "1")
    yield url
    proc.kill()
    proc.wait()


def test_openai_sends_response_format_and_the_server_honours_it(server):
    backend = OpenAIBackend(BackendConfig(kind="openai", base_url=server, **PATIENT))
    templates = [_tight(t) for t in ("sts", "classification", "pair_classification")]
    prompts = _example_prompts(templates, constrain=True)
    body = backend._body(prompts[0], SAMPLED)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "sts", "schema": templates[0].schema, "strict": True},
    }
    assert "continue_final_message" not in body  # a schema instead of the prefix
    done = backend.generate(prompts, SAMPLED)
    for template, completion in zip(templates, done, strict=True):
        assert completion.error is None and completion.finish_reason == "stop"
        obj = json.loads(completion.text)
        assert not list(Draft202012Validator(template.schema).iter_errors(obj))
    poem = Prompt(({"role": "user", "content": "Write a short poem about the sea."},))
    schema = JsonSchema("poem", templates[0].schema)
    [constrained] = backend.generate([replace(poem, schema=schema)], SAMPLED)
    assert not list(Draft202012Validator(schema.schema).iter_errors(json.loads(constrained.text)))
    [cut] = backend.generate([prompts[0]], replace(SAMPLED, max_tokens=6))
    assert cut.finish_reason == "length"


def test_refused_response_format_falls_back_and_warns_once(capsys):
    proc, url = start_server("--refuse-response-format", "--max-batch", "8", "--threads", "1")
    try:
        backend = OpenAIBackend(
            BackendConfig(kind="openai", base_url=url, concurrency=3, **PATIENT)
        )
        prompts = _example_prompts([load_task_template("sts")] * 3, constrain=True)
        for _ in range(2):
            done = backend.generate(prompts, replace(SAMPLED, max_tokens=8))
            assert [c.error for c in done] == [None, None, None]
            assert all(c.completion_tokens > 0 for c in done)
        warnings = [line for line in capsys.readouterr().err.splitlines() if "refused" in line]
        assert len(warnings) == 1 and "response_format" in warnings[0]
        assert "response_format" not in backend._body(prompts[0], SAMPLED)
    finally:
        proc.kill()
        proc.wait()


def test_prose_from_a_server_that_ignores_the_schema_is_rejected_and_the_run_goes_on():
    proc, url = start_server("--fail-always", "prose")  # answers without loading a model
    try:
        backend = OpenAIBackend(BackendConfig(kind="openai", base_url=url, backoff_s=0.01))
        types = ["sts", "classification"]
        jobs = plan_examples(
            pa.table({"id": ["p1", "p2"], "query": PERSONAS[:2]}), types, 1, ["en"], {}
        )
        op = SynthOperator(
            ExampleRecipe({t: load_task_template(t) for t in types}),
            SAMPLED,
            max_retries=1,
            backend=backend,
        )
        result = op(jobs)
        assert result.stats["jobs"] == 4 and result.stats["valid"] == 0
        assert result.stats["rejected_by_reason"] == {"example:no_json": 4}
        assert result.removed.num_rows == 4
    finally:
        proc.kill()
        proc.wait()


def test_cli_no_constrain_and_no_gate_are_recorded(cat, personas, cli):
    common = ["--personas", "faq-personas", "--task-types", "sts", "--per-persona", "1"]
    common += ["--max-tokens", "24", "--max-retries", "0", "--threads", "1", "--temperature", "0"]
    result = cli("synth", "generate", *common, "--name", "plain", "--no-constrain", "--no-gate")
    assert result.exception is None, result.output
    params = versions.resolve(cat, "plain").params
    assert params["constrain"] is False and params["gate"] is None
    assert "gate" not in versions.resolve(cat, "plain").stats["synth"]
