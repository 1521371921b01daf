"""Whole runs on a real mixture: catalog row, metrics, export, resume, failures, 2 processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from catalog import runs
from catalog.mixtures import MixtureSpec, create_mixture
from corpus.errors import KalmixError
from kalmix.ingest import ingest
from tests.trainer.helpers import (
    cut_and_resumed,
    metrics,
    train_two_processes,
    training_env,
)
from trainer.config import TrainConfig
from trainer.data import load_mixture
from trainer.model import default_base
from trainer.train import train

FAST = {"batch_size": 8, "chunk_size": 10, "negatives_per_query": 2, "max_length": 48}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return training_env(tmp_path_factory.mktemp("train"), bert=True)


def weights(model_path: Path) -> dict[str, torch.Tensor]:
    return load_file(model_path / "model.safetensors")


def test_minilm_run_records_exports_and_learns(env):
    from sentence_transformers import SentenceTransformer

    cfg = TrainConfig(**FAST, max_steps=2, lr=5e-5).override(
        batch_size=4, negatives_per_query=1, max_length=32
    )
    result = train(env.ws, run_name="minilm", mixture=env.mix, cfg=cfg)
    info = runs.get_run(env.cat, "minilm")
    assert info.status == "completed" and info.finished_at is not None and info.error is None
    assert info.mixture_ref == env.mix and info.base_model == str(default_base())
    assert info.config["batch_size"] == 4 and info.config["temperature"] == 0.01
    assert info.summary["steps"] == 2 and info.summary["model_path"] == "runs/minilm/model"
    assert info.model_path == result.model_path
    rows = metrics(info.path)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "accuracy"):
        assert all(r[key] >= 0 for r in rows), key
    st = SentenceTransformer(str(result.model_path), device="cpu")
    faq = "Given a question, retrieve the FAQ answer that best addresses the question"
    assert st.prompts["Retrieval-query"] == f"Instruct: {faq}\nQuery: "
    assert st.prompts["query"] == st.prompts["Retrieval-query"] and "STS" in st.prompts
    assert "Classification" in st.prompts and st.prompts["document"] == ""
    base = SentenceTransformer(str(default_base()), device="cpu")
    text = ["How long should I boil an egg for a soft yolk?"]
    moved = 1 - float((st.encode(text) @ base.encode(text).T)[0, 0])
    assert 0 < moved < 0.1


def test_instructions_are_the_category_default_unless_the_record_has_one(env, tmp_path):
    own = tmp_path / "own.jsonl"
    own.write_text(
        "".join(
            json.dumps({"q": f"question {i}", "a": f"answer {i}", "instruction": "Answer it"})
            + "\n"
            for i in range(4)
        )
    )
    ingest(env.cat, own, name="own", category="faq-retrieval", mapping="query=q,positive=a")
    create_mixture(env.cat, "instr", MixtureSpec(datasets=["own", "intents"]))
    _, sources, _ = load_mixture(env.cat, "instr@v1", TrainConfig())
    rng = np.random.default_rng(0)
    by_name = {s.name: s.example(int(s.rows[0]), rng, 1) for s in sources}
    assert by_name["own"].query.startswith("Instruct: Answer it\nQuery: question")
    intent = env.cat.query(
        "SELECT instruction FROM categories WHERE name = 'customer-support-intent'"
    ).to_pylist()[0]["instruction"]
    assert by_name["intents"].query.startswith(f"Instruct: {intent}\nQuery: ")
    assert not by_name["intents"].positive.startswith("Instruct")


def test_interrupted_run_resumes_bit_for_bit(env):
    cfg = TrainConfig(base=env.bert, **FAST, max_steps=4, checkpoint_every=2, lr=1e-3)
    whole, info, resumed = cut_and_resumed(env.ws, env.mix, cfg, "cut")
    assert info.status == "interrupted" and "after step 3" in info.error
    assert runs.get_run(env.cat, "cut").status == "completed" and resumed.steps == 4
    a, b = weights(whole.model_path), weights(resumed.model_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_failure_marks_the_run_failed(env):
    def fail(step: int, _record: dict) -> None:
        raise RuntimeError("disk on fire")

    cfg = TrainConfig(base=env.decoder, **FAST, max_steps=2)
    with pytest.raises(RuntimeError, match="disk on fire"):
        train(env.ws, run_name="doomed", mixture=env.mix, cfg=cfg, on_step=fail)
    info = runs.get_run(env.cat, "doomed")
    assert info.status == "failed" and info.error == "RuntimeError: disk on fire"
    assert info.finished_at is not None and info.summary["steps"] == 1


def test_bad_input_is_refused_before_a_run_row_is_written(env, tmp_path, cli):
    cfg = TrainConfig(base=env.decoder, **FAST, max_steps=1)
    cases = [
        ("nosuch@v1", cfg, "unknown mixture 'nosuch'"),
        ("mix@v9", cfg, "mix has versions: v1"),
        (env.mix, cfg.override(base=str(tmp_path / "nope")), "no such model folder"),
        (env.mix, cfg.override(batch_size=5000), "larger than the 308 usable training rows"),
    ]
    for mixture, bad, message in cases:
        with pytest.raises(KalmixError, match=message):
            train(env.ws, run_name="bad", mixture=mixture, cfg=bad)
    assert runs.get_run(env.cat, "bad") is None
    with pytest.raises(KalmixError, match="nothing to resume"):
        train(env.ws, run_name="bad", resume=True)
    result = cli(
        "-w", str(env.ws.root), "train", env.mix, "--out-run", "via-cli", "--base", env.decoder,
        "--batch-size", "8", "--max-steps", "1", "--negatives", "1", "--max-length", "32",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert runs.get_run(env.cat, "via-cli").config["negatives_per_query"] == 1
    again = cli("-w", str(env.ws.root), "train", env.mix, "--out-run", "via-cli")
    assert isinstance(again.exception, KalmixError) and "already exists" in str(again.exception)
    resumed = cli("-w", str(env.ws.root), "train", "--out-run", "via-cli", "--resume", "--lr", "1")
    assert "saved settings; drop: lr" in str(resumed.exception)
    help_text = cli("train", "--help").output
    assert "Example: kalmix train" in help_text and "0.01" in help_text


def test_two_gloo_processes_match_one_process_on_the_same_global_batch(env):
    """Same global batch: per-step losses and final weights agree (float summation order aside)."""
    cfg = TrainConfig(base=env.decoder, **FAST, max_steps=2, lr=1e-3)
    train_two_processes(env.ws, "two", env.mix, cfg)
    one = train(env.ws, run_name="one", mixture=env.mix, cfg=cfg)
    two = runs.get_run(env.cat, "two")
    assert two.status == "completed" and two.summary["processes"] == 2
    losses_one = [r["loss"] for r in metrics(one.model_path.parent)]
    losses_two = [r["loss"] for r in metrics(two.path)]
    assert losses_one == pytest.approx(losses_two, rel=1e-4)
    # Adam divides by the gradient's root mean square, so float noise in a near-zero gradient
    # can move a weight by a visible fraction of lr: compare against what 2 steps can move.
    a, b = weights(one.model_path), weights(two.model_path)
    assert all((a[k] - b[k]).abs().max() <= 0.05 * 2 * cfg.lr for k in a)
    start = load_file(Path(env.decoder) / "model.safetensors")
    assert any(not torch.allclose(start[k], a[k], atol=1e-4) for k in start)  # it did train
