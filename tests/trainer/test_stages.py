"""Whole runs with the KaLM-V2 switches: multi-stage, SIGTERM + resume, Matryoshka export, soup."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from catalog import runs
from catalog.db import Catalog
from catalog.mixtures import MixtureSpec, create_mixture
from corpus.errors import KalmixError
from tests.trainer.helpers import metrics, tiny_bert, tiny_decoder, training_workspace
from trainer.checkpoint import list_checkpoints
from trainer.config import TrainConfig
from trainer.model import declared_dims
from trainer.soup import soup
from trainer.train import RunStopped, train

FAST = {"batch_size": 8, "chunk_size": 10, "negatives_per_query": 2, "max_length": 48}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    ws, mixture = training_workspace(root / "ws")
    cat = Catalog.open(ws)
    create_mixture(cat, "faq-only", MixtureSpec(datasets=["faq"]))
    bert = str(tiny_bert(root / "bert"))
    staged = TrainConfig(
        base=bert,
        **FAST,
        checkpoint_every=100,
        stages=(
            {"mixture": mixture, "max_steps": 2, "lr": 1e-3},
            {
                "mixture": "faq-only@v1",
                "max_steps": 2,
                "lr": 5e-4,
                "focal_gamma": 2.0,
                "mix_negatives": 2,
                "matryoshka_dims": [32, 16],
                "matryoshka_weights": [1.0, 0.5],
            },
        ),
    )
    whole = train(ws, run_name="staged", cfg=staged)
    return SimpleNamespace(ws=ws, cat=cat, mix=mixture, bert=bert, staged=staged, whole=whole)


def test_stages_run_in_one_row_with_their_own_mixture_and_settings(env):
    info = runs.get_run(env.cat, "staged")
    assert info.status == "completed" and info.mixture_ref == "faq-only@v1"  # the last stage's
    assert [s["mixture"] for s in info.config["stages"]] == [env.mix, "faq-only@v1"]
    assert [s["mixture"] for s in info.summary["stages"]] == [env.mix, "faq-only@v1"]
    rows = metrics(info.path)
    assert [r["stage"] for r in rows] == [1, 1, 2, 2] and [r["step"] for r in rows] == [1, 2, 3, 4]
    # each stage has its own schedule: 2 steps, no warm-up, linear decay from its own lr
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4])
    # Matryoshka: the export declares its dims and loads truncated.
    from sentence_transformers import SentenceTransformer

    assert declared_dims(env.whole.model_path) == [32, 16]
    st = SentenceTransformer(str(env.whole.model_path), device="cpu", truncate_dim=16)
    assert st.encode(["a short question"]).shape == (1, 16)


def test_stage_settings_are_checked(env):
    cases = [
        ({"stages": ({"max_steps": 1},)}, None, "stage 1 has no mixture"),
        ({"stages": ({"mixture": env.mix, "seed": 3},)}, None, "'seed' is set for the whole run"),
        ({"stages": ({"mixture": env.mix, "lrr": 3},)}, None, "unknown training setting 'lrr'"),
        ({"stages": ({"mixture": env.mix},)}, env.mix, "drop the mixture argument"),
        ({"matryoshka_dims": (128,), "max_steps": 1}, env.mix, "exceed the model's 64"),
    ]
    for settings, mixture, message in cases:
        cfg = TrainConfig(base=env.bert, **FAST, **settings)
        with pytest.raises(KalmixError, match=message):
            train(env.ws, run_name="bad-stage", mixture=mixture, cfg=cfg)
    assert runs.get_run(env.cat, "bad-stage") is None


def test_sigterm_checkpoints_marks_interrupted_and_resumes_bit_for_bit(env):
    def terminate(step: int, _record: dict) -> None:
        # Sent after step 2 was recorded, so it is seen where a kill during step 3 would be:
        # step 3 (in the second stage, between periodic checkpoints) finishes, then the run stops.
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)  # Ray, started by an earlier test, installs one
    with pytest.raises(RunStopped, match="stopped by SIGTERM after step 3 of 4"):
        train(env.ws, run_name="killed", cfg=env.staged, on_step=terminate)
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
    info = runs.get_run(env.cat, "killed")
    assert info.status == "interrupted" and "--resume" in info.error
    assert info.finished_at is not None and info.summary["steps"] == 3
    assert [p.name for p in list_checkpoints(info.path)] == ["step-000003"]
    resumed = train(env.ws, run_name="killed", resume=True)
    assert runs.get_run(env.cat, "killed").status == "completed" and resumed.steps == 4
    a = load_file(env.whole.model_path / "model.safetensors")
    b = load_file(resumed.model_path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in metrics(info.path)] == [r["loss"] for r in metrics(env.whole.model_path.parent)]  # fmt: skip


def test_soup_averages_same_architecture_runs_and_refuses_others(env, tmp_path, cli):
    one = train(
        env.ws,
        run_name="other-seed",
        mixture=env.mix,
        cfg=TrainConfig(base=env.bert, **FAST, max_steps=1, seed=7, lr=1e-3),
    )
    result = cli(
        "-w", str(env.ws.root), "soup", "staged", "other-seed", "--weights", "3,1",
        "--out-run", "soup",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    info = runs.get_run(env.cat, "soup")
    assert info.kind == "soup" and info.status == "completed"
    assert info.config["parts"] == ["staged", "other-seed"] and info.config["weights"] == [
        0.75,
        0.25,
    ]
    a = load_file(env.whole.model_path / "model.safetensors")
    b = load_file(one.model_path / "model.safetensors")
    mixed = load_file(info.model_path / "model.safetensors")
    assert all(torch.allclose(mixed[k], 0.75 * a[k] + 0.25 * b[k], atol=1e-6) for k in a)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(info.model_path), device="cpu")
    assert st.encode(["hello"]).shape == (1, 64) and declared_dims(info.model_path) == [32, 16]

    decoder = str(tiny_decoder(tmp_path / "qwen2"))
    cfg = TrainConfig(base=decoder, **FAST, max_steps=1)
    train(env.ws, run_name="decoder", mixture=env.mix, cfg=cfg)
    with pytest.raises(
        KalmixError, match="cannot soup staged with decoder: different architecture"
    ):
        soup(env.ws, ["staged", "decoder"], out_run="bad-soup")
    for parts, weights, message in (
        (["staged"], None, "at least two runs"),
        (["staged", "nope"], None, "unknown run 'nope'"),
        (["staged", "other-seed"], [1.0], "2 runs"),
        (["staged", "other-seed"], None, "already exists"),
    ):
        out = "soup" if message == "already exists" else "bad-soup"
        with pytest.raises(KalmixError, match=message):
            soup(env.ws, parts, out_run=out, weights=weights)
    assert runs.get_run(env.cat, "bad-soup") is None
