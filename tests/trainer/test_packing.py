"""Packing (`trainer/packing.py`): one unpadded sequence per forward with a document mask gives
the embeddings, loss and gradients of the padded forward, for an encoder and a bidirectional
decoder; and a whole run trains with it."""

from __future__ import annotations

import pytest
import torch

from catalog import runs
from tests.trainer.helpers import metrics, training_env
from trainer.config import TrainConfig
from trainer.data import BatchSampler, load_mixture
from trainer.distributed import Dist
from trainer.model import load_embedder, pad, tokenize
from trainer.packing import VARLEN_SDPA, attention_for, pack
from trainer.step import Stepper
from trainer.train import train

TEXTS = [
    "a",
    "How do I reset my password?",
    "Open the settings page, choose Security, then Reset password and follow the link we email.",
    "Wie kann ich meine Bestellung stornieren?",
    "refund",
]
CPU = Dist(0, 1, torch.device("cpu"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return training_env(tmp_path_factory.mktemp("packing"), bert=True)


def embedder(env, arch: str, pooling: str = "mean", attention: str = "sdpa"):
    model, tokenizer = load_embedder(getattr(env, arch), pooling)
    assert attention_for(CPU.device, "sdpa") == VARLEN_SDPA  # and registers it with transformers
    model.backbone.set_attn_implementation(attention)
    return model.eval(), tokenizer  # eval: dropout would differ between the two layouts


@pytest.mark.parametrize(
    ("arch", "pooling", "attention"),
    [
        ("bert", "mean", VARLEN_SDPA),
        ("bert", "cls", VARLEN_SDPA),
        ("bert", "mean", "sdpa"),
        ("decoder", "mean", VARLEN_SDPA),
        ("decoder", "mean", "sdpa"),
        ("decoder", "mean", "eager"),
    ],
)
def test_packed_embeddings_equal_padded(env, arch, pooling, attention):
    model, tokenizer = embedder(env, arch, pooling, attention)
    ids = tokenize(tokenizer, TEXTS, 64)
    p = pack(ids, CPU.device, attention)
    assert p.input_ids.shape == (1, sum(map(len, ids)))
    assert p.position_ids[0].tolist() == [i for x in ids for i in range(len(x))]  # per text
    with torch.no_grad():
        padded = model(*pad(ids, tokenizer.pad_token_id, CPU.device))
        packed = model(p)
    assert packed.shape == padded.shape == (len(TEXTS), 64)
    torch.testing.assert_close(packed, padded, atol=2e-5, rtol=1e-4)
    if (
        model.is_decoder and attention == "sdpa"
    ):  # still bidirectional inside a text: its last token moves its first
        changed = [*ids[2][:-1], ids[2][-1] + 1]
        hidden = model.backbone(**pack([changed], CPU.device, attention).backbone_inputs())
        first = model.backbone(**pack([ids[2]], CPU.device, attention).backbone_inputs())
        assert not torch.allclose(hidden.last_hidden_state[0, 0], first.last_hidden_state[0, 0])


@pytest.mark.parametrize("arch", ["bert", "decoder"])
def test_packed_step_has_the_padded_loss_and_gradients(env, arch):
    """GradCache (3 chunks) with hard negatives: the same loss and gradients either way (packed
    on CPU: `varlen_sdpa`)."""
    cfg = TrainConfig(base=getattr(env, arch), batch_size=4, chunk_size=5, negatives_per_query=1)
    _, sources, _ = load_mixture(env.cat, env.mix, cfg)
    examples = BatchSampler(
        sources, batch_size=4, homogeneous_share=0.8, negatives_per_query=1, seed=3
    ).next_batch()
    results = []
    for packing in (False, True):
        model, tokenizer = embedder(env, arch)
        stepper = Stepper(model, tokenizer, cfg.override(packing=packing), CPU)
        out, tokens = stepper.backward(examples)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.loss.item(), tokens, grads))
    (loss, tokens, grads), (packed_loss, packed_tokens, packed_grads) = results
    assert packed_tokens == tokens
    assert packed_loss == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert packed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-3, msg=name)


def test_a_run_trains_with_packing(env):
    cfg = TrainConfig(
        base=env.decoder, batch_size=4, chunk_size=5, negatives_per_query=1, max_length=48,
        max_steps=2, lr=1e-3, packing=True,
    )  # fmt: skip
    result = train(env.ws, run_name="packed", mixture=env.mix, cfg=cfg)
    info = runs.get_run(env.cat, "packed")
    assert info.status == "completed" and info.config["packing"] is True
    rows = metrics(info.path)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["loss"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert (result.model_path / "modules.json").exists()
    for saved in result.model_path.rglob("*.json"):  # loads where kalmix's attention is unknown
        assert VARLEN_SDPA not in saved.read_text(), saved


def test_static_refuses_packing():
    from corpus.errors import KalmixError

    with pytest.raises(KalmixError, match="does not take packing"):
        TrainConfig(arch="static", packing=True).validate()
