"""`kalmix train --arch static`: the token-table proxy through the same trainer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from catalog import runs
from corpus.errors import KalmixError
from tests.conftest import SHARED_DATA
from tests.trainer.helpers import (
    cut_and_resumed,
    metrics,
    train_two_processes,
    training_env,
)
from trainer.config import ARCH_DEFAULTS, TrainConfig
from trainer.data import BatchSampler, load_mixture
from trainer.distributed import Dist
from trainer.model import default_base, load_model
from trainer.static import StaticEmbedder, export_static, pack
from trainer.step import Stepper, encode_batch
from trainer.train import train

SMALL = {"batch_size": 8, "negatives_per_query": 2, "max_length": 48}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return training_env(tmp_path_factory.mktemp("static"))


def table(model_path: Path) -> torch.Tensor:
    return load_file(model_path / "model.safetensors")["embedding.weight"]


def test_static_run_records_the_recipe_and_exports_a_static_folder(env):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

    cfg = TrainConfig(arch="static", **SMALL, max_steps=3, matryoshka_dims=(256, 64))
    result = train(env.ws, run_name="static", mixture=env.mix, cfg=cfg)
    info = runs.get_run(env.cat, "static")
    assert info.status == "completed" and info.base_model == str(default_base())
    for key, value in ARCH_DEFAULTS["static"].items():
        if key != "batch_size":
            assert info.config[key] == value, key
    assert info.config["arch"] == "static" and info.config["dims"] == 256
    rows = metrics(info.path)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] > 0 for r in rows)
    st = SentenceTransformer(str(result.model_path), device="cpu")
    assert [type(m) for m in st] == [StaticEmbedding, Normalize]
    assert st.get_embedding_dimension() == 256
    assert not any(st.prompts.values())  # trained without instructions: none at inference
    config = json.loads((result.model_path / "config_sentence_transformers.json").read_text())
    assert config["matryoshka_dims"] == [256, 64]
    assert config["kalmix_static"]["init"] == "random" and config["kalmix_static"]["max_length"]
    tokenizer = json.loads((result.model_path / "tokenizer.json").read_text())
    assert tokenizer["truncation"]["max_length"] == 48 and tokenizer["padding"] is None
    assert table(result.model_path).shape == (30522, 256)


def test_exported_folder_gives_the_trainer_embeddings(env, tmp_path):
    """Same tokens (no special tokens, same truncation) and the same pooling as in training."""
    from sentence_transformers import SentenceTransformer

    cfg = TrainConfig(arch="static", max_length=12, base=str(default_base()))
    torch.manual_seed(0)
    model, tokenizer = load_model(cfg)
    texts = [
        "How do I reset my card PIN?",
        "a",
        "Ünïcode façade, CJK 中文 and emoji 🙂 text",
        "word " * 40,  # longer than max_length: truncated the same way at inference
    ]
    ids = tokenizer(texts, truncation=True, max_length=cfg.max_length)["input_ids"]
    assert max(len(x) for x in ids) == 12
    with torch.no_grad():
        ours = model(*pack(ids, torch.device("cpu"))).numpy()
    out = export_static(model, tokenizer, tmp_path / "model", prompts={}, max_length=12)
    theirs = SentenceTransformer(str(out), device="cpu").encode(texts)
    assert np.allclose(ours, theirs, atol=1e-6)
    backend = SentenceTransformer(str(out), device="cpu")[0].tokenizer
    assert [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)] == [
        list(x) for x in ids
    ]


def test_interrupted_static_run_resumes_bit_for_bit(env):
    cfg = TrainConfig(arch="static", **SMALL, max_steps=4, checkpoint_every=2)
    whole, _, resumed = cut_and_resumed(env.ws, env.mix, cfg, "s-cut")
    assert resumed.steps == 4 and runs.get_run(env.cat, "s-cut").config["arch"] == "static"
    assert torch.equal(table(whole.model_path), table(resumed.model_path))


def test_distilled_init_ranks_a_paraphrase_above_an_unrelated_text(env):
    from sentence_transformers import SentenceTransformer

    cfg = TrainConfig(arch="static", init="distill", **SMALL, max_steps=1, lr=1e-5)
    result = train(env.ws, run_name="s-distill", mixture=env.mix, cfg=cfg)
    assert (env.ws.cache_dir / "models" / "minilm-static").is_dir()  # distilled once, cached
    st = SentenceTransformer(str(result.model_path), device="cpu")
    a, b, c = st.encode(
        [
            "How long should I boil an egg for a soft yolk?",
            "What is the cooking time for a soft-boiled egg?",
            "The train to Berlin leaves from platform nine.",
        ]
    )
    assert a @ b > a @ c + 0.1


def test_the_static_step_uses_only_the_slots_a_batch_needs(env):
    """Shrinking the candidate slots to the batch's negatives changes nothing in the loss or
    the gradient (masked slots add nothing)."""
    cfg = TrainConfig(arch="static", batch_size=16, negatives_per_query=7, base=str(default_base()))
    _, sources, _ = load_mixture(env.cat, env.mix, cfg)
    sampler = BatchSampler(
        sources, batch_size=16, homogeneous_share=1.0, negatives_per_query=7, seed=3
    )
    examples = next(b for b in iter(sampler.next_batch, None) if max(map(_negs, b)) < 7)
    torch.manual_seed(0)
    model, tokenizer = load_model(cfg)
    stepper = Stepper(model, tokenizer, cfg, Dist(0, 1, torch.device("cpu")))
    out, _ = stepper.backward(examples)
    assert stepper.slots == 1 + max(map(_negs, examples)) < 8
    compact = model.embedding.weight.grad.clone()
    model.zero_grad()
    stepper.slots = 8
    full = stepper.backward_batch(encode_batch(examples, tokenizer, slots=8, max_length=512))
    assert full.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)
    assert torch.allclose(model.embedding.weight.grad, compact, atol=1e-7)


def _negs(example) -> int:
    return len(example.negatives)


def test_queries_carry_no_instruction_unless_asked(env):
    _, sources, _ = load_mixture(env.cat, env.mix, TrainConfig(arch="static"))
    rng = np.random.default_rng(0)
    faq = next(s for s in sources if s.name == "faq")
    assert not faq.example(int(faq.rows[0]), rng, 1).query.startswith("Instruct")
    on = TrainConfig(arch="static", query_instructions=True)
    _, sources, _ = load_mixture(env.cat, env.mix, on)
    faq = next(s for s in sources if s.name == "faq")
    assert faq.example(int(faq.rows[0]), rng, 1).query.startswith("Instruct: ")


def test_options_that_do_not_apply_are_one_line_errors(env, cli):
    base = TrainConfig(arch="static", **SMALL, max_steps=1)
    cases = [
        ({"compile": True}, "arch static does not take compile"),
        ({"gradient_checkpointing": True}, "does not take gradient_checkpointing"),
        ({"pooling": "cls"}, "does not take pooling = cls"),
        ({"precision": "bf16"}, "does not take precision = bf16"),
        ({"base": env.decoder}, "qwen2 decoder"),
    ]
    for changes, message in cases:
        with pytest.raises(KalmixError, match=message):
            train(env.ws, run_name="s-bad", mixture=env.mix, cfg=base.override(**changes))
    gguf = env.root / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(KalmixError, match="does not take a GGUF base"):
        base.override(base=str(gguf))
    with pytest.raises(KalmixError, match="init and dims are settings of arch = static"):
        TrainConfig(init="distill").validate()
    assert runs.get_run(env.cat, "s-bad") is None
    ws = ("-w", str(env.ws.root))
    for args, message in [
        (("--arch", "static", "--compile"), "does not take compile"),
        (("--arch", "static", "--gradient-checkpointing"), "does not take gradient_check"),
        (("--arch", "static", "--chunk-size", "8"), "does not take --chunk-size"),
        (("--arch", "static", "--base", env.decoder), "qwen2 decoder"),
        (("--arch", "static", "--base", str(gguf)), "GGUF base"),
        (("--init", "distill"), "apply to --arch static only"),
        (("--dims", "64"), "apply to --arch static only"),
        (("--arch", "nope"), "arch 'nope'"),
        (("--arch", "static", "--init", "magic"), "init 'magic'"),
    ]:
        result = cli(*ws, "train", env.mix, "--out-run", "s-bad", *args)
        assert isinstance(result.exception, KalmixError), (args, result.output)
        assert message in str(result.exception) and "\n" not in str(result.exception)
    assert runs.get_run(env.cat, "s-bad") is None
    help_text = " ".join(re.sub("[│╭╮╰╯─]", " ", cli("train", "--help").output).split())
    assert "--arch" in help_text and "batch 512, lr 0.1, 3 epochs" in help_text


def test_cli_trains_a_static_model(env, cli):
    result = cli(
        "-w", str(env.ws.root), "train", env.mix, "--arch", "static", "--out-run", "s-cli",
        "--dims", "32", "--batch-size", "8", "--max-steps", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    info = runs.get_run(env.cat, "s-cli")
    assert info.config["dims"] == 32 and info.config["lr"] == 0.1
    assert table(info.model_path).shape[1] == 32


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="shared evaluation data not found")
def test_kalmix_eval_scores_a_static_run(env, monkeypatch):
    from trainer.evaluation.run import EvalConfig, evaluate

    monkeypatch.setenv("KALMIX_EVAL_DATA", str(SHARED_DATA))
    cfg = TrainConfig(arch="static", **SMALL, max_steps=1)
    train(env.ws, run_name="s-eval", mixture=env.mix, cfg=cfg)
    tasks = ("KalmixSTSBRetrieval", "KalmixSNIPSClassification")
    report = evaluate(env.cat, "s-eval", EvalConfig(tasks=tasks, limit=50, subsets=("en",)))
    assert {r.task for r in report.rows} == set(tasks)
    assert all(0 <= r.main_score <= 1 and r.run == "s-eval" for r in report.rows)


def test_static_model_class_is_an_embedding_bag():
    model = StaticEmbedder(10, 4)
    out = model(torch.tensor([1, 2, 3]), torch.tensor([0, 2]))
    assert out.shape == (2, 4) and torch.allclose(out.norm(dim=1), torch.ones(2))
    mean = model.embedding.weight[1:3].mean(dim=0)
    assert torch.allclose(out[0], mean / mean.norm())


def test_kept_gradient_buffer_equals_the_dense_gradient():
    """The sparse bag gradient written into the kept buffer (only the last step's rows
    re-zeroed) is the dense gradient, step after step; and its norm is the dense norm."""
    torch.manual_seed(0)
    model = StaticEmbedder(50, 8)
    dense = torch.nn.EmbeddingBag(50, 8, mode="mean")
    dense.weight.data.copy_(model.embedding.weight.data)
    for ids, offsets in (([1, 2, 2, 7], [0, 3]), ([3, 4, 9, 9, 9], [0, 1, 4])):
        ids, offsets = torch.tensor(ids), torch.tensor(offsets)
        model.zero_grad()
        dense.zero_grad()
        weights = torch.randn(len(offsets), 8)
        (model(ids, offsets) * weights).sum().backward()
        model.densify_grad()
        torch.nn.functional.normalize(dense(ids, offsets), dim=-1).mul(weights).sum().backward()
        assert torch.allclose(model.embedding.weight.grad, dense.weight.grad, atol=1e-6)
        assert torch.isclose(model.grad_norm, dense.weight.grad.norm(), atol=1e-6)


def test_two_gloo_processes_match_one_process(env):
    """Data parallel: the full candidate slots, a fully re-zeroed buffer and all-reduced
    gradients give the one-process run (float summation order aside)."""
    cfg = TrainConfig(arch="static", **SMALL, max_steps=3)
    train_two_processes(env.ws, "s-two", env.mix, cfg)
    one = train(env.ws, run_name="s-one", mixture=env.mix, cfg=cfg)
    two = runs.get_run(env.cat, "s-two")
    assert two.status == "completed" and two.summary["processes"] == 2
    assert [r["loss"] for r in metrics(one.model_path.parent)] == pytest.approx(
        [r["loss"] for r in metrics(two.path)], rel=1e-4
    )
    assert torch.allclose(table(one.model_path), table(two.model_path), atol=0.05 * 3 * cfg.lr)
