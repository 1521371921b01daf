"""The built-in `minilm-static`: distilled once, loaded by plain sentence-transformers, usable
wherever `--model` is, with its own semantic-dedup threshold."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from catalog import versions
from corpus import static
from corpus.errors import KalmixError
from filters.embedder import Embedder
from filters.semdedup import DEFAULT_THRESHOLD, default_threshold
from tests.conftest import write_jsonl


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """minilm-static built once for the session (distillation takes ~20 s on 2 cores)."""
    cache = tmp_path_factory.mktemp("static-cache")
    return cache, static.builtin_path("minilm-static", cache)


def test_built_once_in_the_cache_and_loaded_by_sentence_transformers(built):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

    cache, folder = built
    assert folder == cache / "models" / "minilm-static"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left
    info = static.static_info(folder)
    assert info["dims"] == 256 and info["recipe"] == static.RECIPE
    before = (folder / "modules.json").stat().st_mtime_ns
    assert static.builtin_path("minilm-static", cache) == folder
    assert (folder / "modules.json").stat().st_mtime_ns == before  # not built again

    st = SentenceTransformer(str(folder), device="cpu")
    assert [type(m) for m in st] == [StaticEmbedding, Normalize]
    texts = [
        "How do I reset my card PIN?",
        "I forgot my PIN, how can I change it?",
        "The weather in Lisbon is sunny today.",
    ]
    vecs = st.encode(texts)
    assert vecs.shape == (3, 256)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.1


def test_embedder_accepts_the_name(built):
    cache, folder = built
    embedder = Embedder("minilm-static", cache)
    assert embedder.path == folder.resolve() and embedder.name == "minilm-static"
    assert embedder.dim == 256 and embedder.batch_size >= 1024
    vecs = embedder.encode(["reset my PIN", "change my PIN code", "reset my PIN"])
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vecs[0], vecs[2])
    from sentence_transformers import SentenceTransformer

    plain = SentenceTransformer(str(folder), device="cpu").encode(["change my PIN code"])
    assert np.allclose(vecs[1], plain[0], atol=1e-6)
    assert default_threshold("minilm-static") != DEFAULT_THRESHOLD
    assert default_threshold("all-MiniLM-L6-v2") == DEFAULT_THRESHOLD


def test_cli_semdedup_with_minilm_static_uses_its_threshold(built, cli, cat, ws, tmp_path):
    cache, folder = built
    shutil.copytree(folder, ws.cache_dir / "models" / "minilm-static")  # skip a second build
    rows = [
        {"question": "How do I reset my card PIN?", "answer": "In the app."},
        {"question": "How can I reset my card PIN?", "answer": "App > Card."},
        {"question": "Is there a fee for foreign payments?", "answer": "No."},
    ]
    src = write_jsonl(tmp_path / "faq.jsonl", rows)
    assert cli("ingest", str(src), "--name", "faq", "--category", "faq-retrieval").exit_code == 0
    result = cli("semdedup", "faq", "--model", "minilm-static")
    assert result.exit_code == 0, result.output
    assert "rows 3 -> 2; removed: semantic_duplicate 1" in result.output
    params = versions.resolve(cat, "faq@v2").params
    assert params["threshold"] == default_threshold("minilm-static")
    assert params["model"].endswith("models/minilm-static")
    help_text = cli("semdedup", "--help").output
    assert "minilm-static" in help_text and "0.88" in help_text
    assert "minilm-static" in cli("mine", "--help").output
    assert "minilm-static" in cli("filter", "consistency", "--help").output


def test_unknown_builtin_and_bad_dims_are_clear_errors(tmp_path):
    with pytest.raises(KalmixError, match="unknown built-in model 'nope'; known: minilm-static"):
        static.builtin_path("nope", tmp_path)
    with pytest.raises(KalmixError, match="1 to 384 dims"):
        static.distill(static.minilm_path(), 512)
    assert json.loads((static.minilm_path() / "modules.json").read_text())  # package intact
