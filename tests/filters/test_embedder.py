import json
import shutil

import numpy as np
import pytest

from corpus.embedding import default_model_path
from corpus.errors import KalmixError
from filters.embedder import QUERY_TEMPLATE, Embedder

TEXTS = [
    "How do I reset my card PIN?",
    "The weather in Lisbon is sunny today.",
    "How do I reset my card PIN?",  # a duplicate: embedded once, same vector
    "A much longer sentence about transferring money between two accounts at different banks.",
    "short",
]


def test_vectors_match_plain_sentence_transformers(embedder):
    vecs = embedder.encode(TEXTS)
    assert vecs.shape == (5, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vecs[0], vecs[2])
    plain = embedder.model.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(vecs, plain, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_cache_serves_known_texts_and_embeds_only_new_ones(embedder, tmp_path):
    first = Embedder(cache_dir=tmp_path)
    a = first.encode(TEXTS)
    assert first.embedded == 4  # distinct texts
    assert list((tmp_path / "embeddings" / first.fingerprint).glob("*.keys.npy"))

    again = Embedder(cache_dir=tmp_path)  # a new run: same model fingerprint, same cache
    np.testing.assert_array_equal(again.encode(TEXTS), a)
    assert again.embedded == 0
    b = again.encode([*TEXTS, "a brand new text", "another new one"])
    assert again.embedded == 2
    np.testing.assert_array_equal(b[:5], a)

    prompted = again.encode(TEXTS[:1], prompt="query: ")  # the prompt is part of the key
    assert again.embedded == 3 and not np.allclose(prompted[0], a[0])


def test_instructions_prefix_queries_in_groups(embedder):
    queries = ["reset my PIN", "weather in Lisbon", "reset my PIN"]
    instructions = ["Retrieve a banking FAQ answer", None, "Retrieve a banking FAQ answer"]
    got = embedder.encode_queries(queries, instructions)
    prompt = QUERY_TEMPLATE.format(instruction="Retrieve a banking FAQ answer")
    np.testing.assert_allclose(got[0], embedder.encode(["reset my PIN"], prompt)[0], atol=1e-6)
    np.testing.assert_allclose(got[1], embedder.encode(["weather in Lisbon"])[0], atol=1e-6)
    np.testing.assert_array_equal(got[0], got[2])


def test_copied_st_folder_and_plain_hf_folder_load(embedder, tmp_path):
    src = default_model_path()
    st_copy = tmp_path / "exported"
    shutil.copytree(src, st_copy)  # what `kalmix train` exports: a sentence-transformers folder
    copy = Embedder(st_copy, cache_dir=tmp_path)
    assert copy.fingerprint == embedder.fingerprint  # same weights, same cache entries
    assert copy.name == "exported"

    hf = tmp_path / "hf"  # a Hugging Face folder: no modules.json, mean pooling is added
    hf.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (hf / name).symlink_to(src / name)
    plain = Embedder(hf)
    np.testing.assert_allclose(plain.encode(TEXTS[:2]), embedder.encode(TEXTS[:2]), atol=1e-4)


def test_missing_or_broken_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(KalmixError, match="model folder not found"):
        Embedder(tmp_path / "nowhere")
    with pytest.raises(KalmixError, match="not a model folder"):
        Embedder(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(KalmixError, match="cannot load an embedding model"):
        Embedder(broken).encode(["x"])
