"""Parsing, validation, templates, job planning and persona dedup: no model needed."""

from __future__ import annotations

import json
import shutil
import sys

import pyarrow as pa
import pytest

from corpus.errors import KalmixError
from kalmix.synthesis import SynthSettings
from synth.backends import (
    BackendConfig,
    Prompt,
    SamplingParams,
    make_backend,
    model_name,
    resolve_local_model,
)
from synth.generate import ExampleRecipe, PersonaRecipe, RaySynth, parse_task, plan_examples
from synth.personas import near_duplicates, parse_persona
from synth.prompts import (
    default_template_dir,
    load_persona_template,
    load_task_template,
    task_types_available,
)
from synth.validate import extract_json, script_matches, to_record_fields, validate_example

ALL_TYPES = ["bitext", "classification", "clustering", "pair_classification", "retrieval", "sts"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('Sure! Here it is: {"query": "a b", "positive": "c"} Hope this helps.', None),
        ('{"query": "line one\nline two", "positive": "x",}', None),  # newline, trailing comma
        ('{"query": "cut off at the token lim', "truncated"),
        ("no braces at all", "no_json"),
        ('{"query": "x" "positive": "y"}', "invalid_json"),
        ('{"query": "kept", "positive": "kept too", "negative": "cut off', None),  # closed
    ],
)
def test_extract_json(text, reason):
    obj, why = extract_json(text)
    assert why == reason
    assert (obj is not None) == (reason is None)


def test_repeated_keys_keep_the_first_and_truncation_keeps_only_complete_values():
    obj, _ = extract_json('{"text": "one", "label": "a", "text": "two", "label": "b", "te')
    assert obj == {"text": "one", "label": "a"}
    obj, _ = extract_json('{"query": "q", "positive": "p is long, with a comma", "negative": "n')
    assert obj == {"query": "q", "positive": "p is long, with a comma"}


def test_validate_retrieval_example():
    t = load_task_template("retrieval")
    good = {
        "query": "how to descale a kettle",
        "positive": "Fill the kettle with equal parts vinegar and water, boil, rinse twice.",
        "negative": ["Kettles made of glass let you see the water boil and look modern."],
        "extra": "ignored",
    }
    values, reason = validate_example(good, t)
    assert reason is None
    record, extra = to_record_fields(values, t)
    assert record["query"] == good["query"] and record["negatives"] == good["negative"]
    assert extra == {}
    assert validate_example({"query": "x" * 10}, t) == (None, "missing_field")
    assert validate_example({**good, "query": "hi"}, t)[1] == "too_short"
    assert validate_example({**good, "positive": {"a": 1}}, t)[1] == "not_text"
    assert validate_example({**good, "negative": good["positive"] + " "}, t)[1] == "same_text"
    copied = {**good, "query": "How long should I boil an egg for a runny yolk?"}
    assert validate_example(copied, t)[1] == "copied_example"


def test_classification_fields_go_to_label_and_meta():
    t = load_task_template("classification")
    values, reason = validate_example(
        {"text": "My parcel never arrived.", "label": "delivery", "misleading_label": 10}, t
    )
    assert reason is None
    record, extra = to_record_fields(values, t)
    assert record["query"] == "My parcel never arrived." and record["label"] == "delivery"
    assert extra == {"misleading_label": "10"}  # numbers become text


def test_parse_persona_and_task():
    p = load_persona_template()
    assert parse_persona("A nurse on night shifts who reads drug leaflets. More text.", p) == (
        "A nurse on night shifts who reads drug leaflets.",
        None,
    )
    persona, reason = parse_persona("Persona: A nurse on night shifts\nwho reads", p)
    assert reason is None and persona == "A nurse on night shifts."
    assert parse_persona("A nurse.", p) == (None, "too_short")
    assert parse_persona("   ", p) == (None, "empty")
    assert parse_persona(p.shot_persona, p) == (None, "copied_example")
    assert parse_task("Given a recipe question, retrieve cooking guides.\nmore")[0] == (
        "Given a recipe question, retrieve cooking guides."
    )
    assert parse_task("Given a") == (None, "too_short")
    shot = "Given a question about a bike repair problem, retrieve repair guides."
    assert parse_task(shot.lower(), shot) == (None, "copied_example")


def test_templates_render_persona_language_and_form():
    assert task_types_available() == ALL_TYPES
    for task_type in ALL_TYPES:
        t = load_task_template(task_type)
        assert t.task_type == task_type and len(t.hash) == 16
        b = t.brainstorm_prompt("A nurse on night shifts.")
        assert [m["role"] for m in b.messages] == ["system", "user", "assistant", "user"]
        assert "A nurse on night shifts." in b.messages[-1]["content"]
        assert b.messages[2]["content"].startswith(b.prefix)
        assert t.brainstorm_prompt("A pilot.").messages[:-1] == b.messages[:-1]
        params = {"language": "Chinese", "target_language": "German"}
        if t.forms:
            params.update(t.forms["long-short"])
        e = t.example_prompt("A nurse.", "Given a symptom, retrieve advice.", params)
        assert [m["role"] for m in e.messages] == ["system", "user", "assistant", "user"]
        assert "Given a symptom, retrieve advice." in e.messages[-1]["content"]
        assert "Chinese" in e.messages[-1]["content"]
        assert e.messages[-1]["content"].startswith("You are a nurse.\n")
        assert e.prefix.startswith('{"')
        # Only the last turn depends on the persona, task and language: the turns before it are
        # one prefix for every job of the task type and form (computed once by the backend).
        other = t.example_prompt(
            "A pilot.", "Given a route, retrieve charts.", {**params, "language": "English"}
        )
        assert other.messages[:-1] == e.messages[:-1]
    r = load_task_template("retrieval")
    e = r.example_prompt("A nurse.", "T", {"language": "English", **r.forms["long-short"]})
    assert "detailed question" in e.messages[-1]["content"]


def test_edited_or_broken_template(tmp_path):
    folder = tmp_path / "templates"
    shutil.copytree(default_template_dir(), folder)
    original = load_task_template("sts", folder).hash
    path = folder / "sts.toml"
    path.write_text(path.read_text().replace("one sentence", "a sentence"))
    assert load_task_template("sts", folder).hash != original
    text = path.read_text()
    path.write_text(text.replace('persona = "You are $persona."', ""))
    with pytest.raises(KalmixError, match="incomplete or malformed: 'example.persona'"):
        load_task_template("sts", folder)
    path.write_text(text.replace("$task", "$nosuch"))
    with pytest.raises(KalmixError, match="nosuch"):
        load_task_template("sts", folder).example_prompt("A.", "T", {"language": "English"})
    path.write_text("task_type = [")
    with pytest.raises(KalmixError, match="not valid TOML"):
        load_task_template("sts", folder)
    with pytest.raises(KalmixError, match="available"):
        load_task_template("reranking", folder)


def test_plan_rotates_languages_and_forms():
    personas = pa.table({"id": ["p1", "p2"], "query": ["A cook.", "A pilot."]})
    forms = {"retrieval": ["short-long", "long-short", "short-short", "long-long"]}
    jobs = plan_examples(personas, ["retrieval", "bitext"], 4, ["en", "zh"], forms)
    assert jobs.num_rows == 2 * 2 * 4
    rows = jobs.to_pylist()
    assert len({r["job_id"] for r in rows}) == len(rows)
    retrieval = [(r["language"], r["form"]) for r in rows if r["task_type"] == "retrieval"]
    assert len(set(retrieval)) == 8  # every language meets every form
    bitext = [r for r in rows if r["task_type"] == "bitext"]
    assert all(r["target_language"] and r["target_language"] != r["language"] for r in bitext)
    again = plan_examples(personas, ["retrieval", "bitext"], 4, ["en", "zh"], forms)
    assert again.column("job_id") == jobs.column("job_id")
    with pytest.raises(KalmixError, match="unknown language"):
        plan_examples(personas, ["retrieval"], 1, ["xx"], forms)


def test_near_duplicate_personas():
    texts = [
        "A home cook who plans cheap weekly meals for a family.",
        "a home cook, who plans cheap weekly meals for a family!",  # exact after normalising
        "A home cook who plans cheap weekly meals for a big family.",  # near duplicate
        "A pilot who reads weather reports before every flight.",
        "一位关心孩子睡眠的母亲。",
        "一位关心孩子睡眠的父亲。",  # one character differs
    ]
    assert near_duplicates(texts, threshold=0.7) == [None, 0, 0, None, None, 4]


def test_model_resolution_never_reaches_a_hub(tmp_path):
    with pytest.raises(KalmixError, match="huggingface-cli download HuggingFaceTB/SmolLM2"):
        resolve_local_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    with pytest.raises(KalmixError, match="no such folder"):
        resolve_local_model(str(tmp_path / "missing"))
    with pytest.raises(KalmixError, match="neither"):
        resolve_local_model(str(tmp_path))
    folder, gguf = resolve_local_model(None)
    assert gguf.endswith(".gguf") and (folder / gguf).exists()


def test_backend_errors_say_what_to_do():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(KalmixError, match=r"pip install 'kalmix\[gpu\]'"):
            make_backend(BackendConfig(kind="vllm"))
    with pytest.raises(KalmixError, match="--base-url"):
        make_backend(BackendConfig(kind="openai"))
    with pytest.raises(KalmixError, match="unknown backend"):
        make_backend(BackendConfig(kind="llamafile"))
    assert Prompt.from_json(Prompt(({"role": "user", "content": "hi"},), "{").to_json()) == Prompt(
        ({"role": "user", "content": "hi"},), "{"
    )


def test_ray_driver_never_builds_the_backend():
    """Under `--executor ray` the driver only names the model: a vLLM run is planned on a
    machine without vLLM or a GPU, and each actor builds its own engine."""
    config = BackendConfig(kind="vllm", tensor_parallel_size=2)
    settings = SynthSettings(config, SamplingParams(), ray=RaySynth(actors=4, gpus_per_actor=2))
    op, name = settings.operator(PersonaRecipe(load_persona_template()))
    assert name == model_name(config) == "SmolLM2-135M-Instruct.Q4_1"
    assert op.backend is None and op.config == config and settings.executor == "ray"
    assert "vllm" not in sys.modules


def test_chinese_example_written_in_english_is_the_wrong_language():
    t = load_task_template("sts")
    english = {
        "sentence1": "The cat sleeps.",
        "sentence2": "A cat is asleep.",
        "sentence3": "Dogs bark.",
    }
    values, reason = validate_example(english, t)
    assert reason is None
    assert script_matches(values, t, ["en", ""]) and not script_matches(values, t, ["zh", ""])
    chinese = {**english, "sentence1": "这只猫在沙发上安静地睡觉。"}
    assert script_matches(validate_example(chinese, t)[0], t, ["zh", ""])
    recipe = ExampleRecipe({"sts": t})
    job = {"task_type": "sts", "language": "zh", "target_language": ""}
    assert recipe.parse("example", json.dumps(english), job, {}) == (None, "wrong_language")
