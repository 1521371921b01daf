"""SmolLM2 through the transformers backend, end to end into the catalog."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

from catalog import queries, versions
from catalog.versions import VersionRef
from corpus.errors import KalmixError
from kalmix.synthesis import SynthSettings, run_generate, run_personas
from synth.gate import GATE_REASONS
from tests.synth.conftest import FAST, records_meta, transformers_config

MODEL = "SmolLM2-135M-Instruct.Q4_1"


def test_personas_from_corpus_into_catalog(cat, faq):
    settings = SynthSettings(transformers_config(), replace(FAST, max_tokens=32), max_retries=1)
    report = run_personas(cat, "faq", n=3, name=None, settings=settings, show_progress=False)
    assert report.results == [VersionRef("faq-personas", 1)]
    info = versions.resolve(cat, "faq-personas")
    assert info.parent == faq and info.category == "persona" and info.operation == "synth-personas"
    removed = queries.removals_summary(cat, "faq-personas", 1).to_pylist()
    assert info.rows + sum(r["rows"] for r in removed) == 3  # each passage: a persona or a reason
    stats = info.stats["synth"]
    assert stats["jobs"] == 3 and stats["valid"] + stats["rejected"] == 3
    assert stats["requests"] >= 3 and stats["completion_tokens"] > 0
    table = info.read()
    faq_ids = set(versions.resolve(cat, "faq").read(["id"]).column("id").to_pylist())
    for row, meta in zip(table.to_pylist(), records_meta(table), strict=True):
        assert row["source"] == "synth" and row["query"].startswith("A")
        assert meta["model"] == MODEL and meta["passage_id"] in faq_ids
        assert meta["sampling"]["temperature"] == 0.0 and len(meta["template_hash"]) == 16
    again = run_personas(cat, "faq", n=3, name=None, settings=settings, show_progress=False)
    assert again.results == [VersionRef("faq-personas", 1)] and "already_registered" in again.stats


def test_generate_two_task_types_into_catalog(cat, personas):
    settings = SynthSettings(transformers_config(), replace(FAST, max_tokens=40), max_retries=0)
    report = run_generate(
        cat,
        "faq-personas",
        task_types=["sts", "classification"],
        per_persona=1,
        languages=["en"],
        name="synth-v1",
        settings=settings,
        show_progress=False,
    )
    assert sorted(map(str, report.results)) == ["synth-v1-classification@v1", "synth-v1-sts@v1"]
    assert report.rows_in == 4
    persona_ids = set(versions.resolve(cat, personas).read(["id"]).column("id").to_pylist())
    total_valid = 0
    for name, category in (
        ("synth-v1-sts", "multilingual-sts"),
        ("synth-v1-classification", "topic-classification"),
    ):
        info = versions.resolve(cat, name)
        assert info.parent == VersionRef("faq-personas", 1) and info.category == category
        removed = queries.removals_summary(cat, name, 1).to_pylist()
        assert info.rows + sum(r["rows"] for r in removed) == 2  # nothing silently dropped
        for r in removed:  # generation's, duplicates, and the semantic gate's reasons
            assert r["reason"] in ("duplicate", "backend_error", *GATE_REASONS) or r[
                "reason"
            ].startswith(("task:", "example:"))
        table = info.read()
        total_valid += table.num_rows
        for row, meta in zip(table.to_pylist(), records_meta(table), strict=True):
            assert row["source"] == "synth" and row["language"] == "en" and row["instruction"]
            assert meta["persona_id"] in persona_ids and meta["model"] == MODEL
            assert meta["sampling"]["max_tokens"] == 40 and meta["template"] in name
            if name.endswith("sts"):
                assert row["query"] and row["positive"] and len(row["negatives"]) == 1
            else:
                assert row["query"] and row["label"] and "misleading_label" in meta
    stats = versions.resolve(cat, "synth-v1-sts").stats["synth"]
    assert stats["jobs"] == 2 and stats["valid"] + stats["rejected"] == 2  # this task type's
    assert stats["requests"] >= 2 and stats["resumed_jobs"] == 0
    assert stats["run"]["jobs"] == 4 and stats["run"]["requests"] >= 4  # the whole run
    gate = stats["gate"]  # the valid examples' semantic gate, counted per task type
    assert gate["checked"] == gate["passed"] + sum(gate["rejected_by_reason"].values())
    assert gate["model"] == "all-MiniLM-L6-v2" and set(gate["rejected_by_reason"]) <= set(
        GATE_REASONS
    )
    assert versions.resolve(cat, "synth-v1-sts").params["constrain"] is True
    assert report.rows_out == total_valid


def test_generate_refuses_bad_input(cat, personas, faq, cli):
    settings = SynthSettings(transformers_config(), FAST)
    for kwargs, message in (
        ({"personas": "faq"}, "not personas"),
        ({"personas": "nope"}, "unknown dataset 'nope'"),
        ({"languages": ["xx"]}, "unknown language"),
        ({"retrieval_forms": ["tiny"]}, "unknown retrieval form"),
    ):
        args = {
            "personas": "faq-personas",
            "task_types": ["retrieval"],
            "per_persona": 1,
            "languages": ["en"],
            "name": "bad",
            "settings": settings,
            **kwargs,
        }
        try:
            run_generate(cat, args.pop("personas"), show_progress=False, **args)
        except KalmixError as err:
            assert message in str(err)
        else:
            raise AssertionError(f"no error for {kwargs}")
    result = cli(
        "synth", "generate", "--personas", "faq-personas", "--task-types", "nope", "--name", "x"
    )
    assert isinstance(result.exception, KalmixError) and "templates exist for" in str(
        result.exception
    )
    result = cli("synth", "personas", "faq", "--model", "HuggingFaceTB/SmolLM2-360M-Instruct")
    assert "huggingface-cli download" in str(result.exception)
    bad = [
        (("--backend", "openai", "--base-url", "http://127.0.0.1:1/v1"), "cannot reach"),
        (("--executor", "spark"), "unknown --executor"),
    ]
    if importlib.util.find_spec("vllm") is None:
        bad.append((("--backend", "vllm"), "pip install 'kalmix[gpu]'"))
    for args, message in bad:
        result = cli("synth", "personas", "faq", "--n", "2", *args)
        assert isinstance(result.exception, KalmixError) and message in str(result.exception)
