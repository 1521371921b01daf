"""Decoders become bidirectional (proved on outputs), encoders stay as they are, export loads."""

from __future__ import annotations

import json

import pytest
import torch

from corpus.errors import KalmixError
from tests.trainer.helpers import tiny_decoder
from trainer.model import default_base, export_sentence_transformers, load_embedder, pad


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    return {f: tiny_decoder(root / f, f) for f in ("qwen2", "qwen3", "llama")}


def first_token_outputs(backbone, input_ids, mask):
    with torch.no_grad():
        return backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, 0]


def last_token_moves_first(backbone, tokenizer, padded: bool) -> bool:
    """Whether changing a sequence's last token changes its first token's output.

    With `padded`, the sequence is the shorter row of a right-padded batch of two.
    """
    short = tokenizer("how long do I boil an egg")["input_ids"]
    rows = [short, short + tokenizer(" for a soft yolk?")["input_ids"]] if padded else [short]
    changed = [list(r) for r in rows]
    changed[0][-1] = (changed[0][-1] + 1) % 1000
    a = first_token_outputs(backbone, *pad(rows, tokenizer.pad_token_id, torch.device("cpu")))
    b = first_token_outputs(backbone, *pad(changed, tokenizer.pad_token_id, torch.device("cpu")))
    return not torch.allclose(a[0], b[0], atol=1e-6)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_decoder_attention_is_bidirectional(decoders, family, attention):
    model, tokenizer = load_embedder(str(decoders[family]), "mean")
    assert model.is_decoder and model.pooling == "mean"
    backbone = model.backbone.eval()
    backbone.set_attn_implementation(attention)
    for padded in (False, True):
        assert last_token_moves_first(backbone, tokenizer, padded), (family, attention, padded)
    # Control: the same weights with causal attention do not see the future, so the check
    # above would have caught a model that silently stayed causal.
    backbone.config.is_causal = True
    for padded in (False, True):
        assert not last_token_moves_first(backbone, tokenizer, padded)


def test_encoder_is_kept_and_pooling_read_from_the_base():
    model, tokenizer = load_embedder("", "auto")
    assert not model.is_decoder and model.pooling == "mean" and model.dim == 384
    ids = tokenizer(["a cat sat on the mat", "stocks fell sharply"])["input_ids"]
    emb = model.eval()(*pad(ids, tokenizer.pad_token_id, torch.device("cpu")))
    assert torch.allclose(emb.norm(dim=1), torch.ones(2))


def test_bad_base_models(tmp_path):
    with pytest.raises(KalmixError, match="no such model folder"):
        load_embedder(str(tmp_path / "missing"), "mean")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("not a model")
    with pytest.raises(KalmixError, match="holds no model"):
        load_embedder(str(tmp_path / "notes"), "mean")
    with pytest.raises(KalmixError, match="never downloads"):
        load_embedder("Qwen/Qwen2-0.5B", "mean")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen2"}')
    with pytest.raises(KalmixError, match="cannot load it as a model"):
        load_embedder(str(broken), "mean")
    st = tmp_path / "with-dense"
    st.mkdir()
    (st / "config.json").write_text("{}")
    modules = [
        {"idx": 0, "name": "0", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    ]
    (st / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(KalmixError, match="Dense module"):
        load_embedder(str(st), "mean")
    assert default_base().exists()


def test_exported_decoder_loads_bidirectional_with_prompts(decoders, tmp_path):
    from sentence_transformers import SentenceTransformer

    model, tokenizer = load_embedder(str(decoders["qwen2"]), "mean")
    model.eval()
    prompts = {"query": "Instruct: find the answer\nQuery: ", "document": ""}
    out = export_sentence_transformers(
        model, tokenizer, tmp_path / "model", prompts=prompts, max_length=64
    )
    assert json.loads((out / "config.json").read_text())["is_causal"] is False
    st = SentenceTransformer(str(out), device="cpu")
    assert st.prompts["query"] == prompts["query"] and st.max_seq_length == 64
    texts = ["how long do I boil an egg", "why is the sky blue at noon"]
    ids = tokenizer(texts)["input_ids"]
    with torch.no_grad():
        ours = model(*pad(ids, tokenizer.pad_token_id, torch.device("cpu")))
    theirs = st.encode(texts, convert_to_tensor=True)
    assert torch.allclose(ours, theirs, atol=1e-5)
    with_prompt = st.encode(texts, prompt_name="query", convert_to_tensor=True)
    assert not torch.allclose(with_prompt, theirs, atol=1e-3)
    assert last_token_moves_first(st[0].auto_model.eval(), tokenizer, padded=False)
    assert last_token_moves_first(st[0].auto_model.eval(), tokenizer, padded=True)
