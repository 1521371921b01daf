import csv
import re
import sys
import types
import unicodedata

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from datasketch import MinHash, MinHashLSH

from corpus.minhash import (
    MinHashConfig,
    MinHasher,
    candidate_pairs,
    estimated_jaccard,
    lsh_params,
    signatures_parallel,
)
from corpus.sample import python_docs_records
from corpus.text import (
    ngram_spans,
    normalize,
    poly_hash32,
    poly_hash64,
    shingle_text,
    span_hashes,
)
from tests.conftest import SHARED_DATA


@pytest.fixture(scope="module")
def real_texts() -> list[str]:
    """English, German and Chinese sentences and stdlib docstrings, plus edge cases."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared evaluation data not found at {SHARED_DATA}")
    shared_data = SHARED_DATA
    stsb = list(csv.DictReader(open(shared_data / "stsb/en-test.csv", encoding="utf-8")))[:40]
    de = list(csv.DictReader(open(shared_data / "stsb/de-test.csv", encoding="utf-8")))[:20]
    zh = list(csv.DictReader(open(shared_data / "pairs_zh/LCQMC-test.csv", encoding="utf-8")))[:30]
    docs = [r["answer"] for r in python_docs_records()[:30]]
    return (
        [r["sentence1"] + " " + r["sentence2"] for r in stsb]
        + [r["sentence1"] for r in de]
        + [r["sentence1"] for r in zh]
        + docs
        + ["", "   ", "one", "two words", "iPhone 14 手机壳 推荐", "ＦＵＬＬ width, it's"]
    )


def _reference_shingles(text: str, n: int) -> list[bytes]:
    """The shingle definition written plainly: token-normalise, then word or char n-grams."""
    t = unicodedata.normalize("NFKC", text).lower().replace("'", "")
    t = re.sub(r"[\W_]+", " ", t).strip()
    letters = len(t.replace(" ", ""))
    cjk = len(re.findall(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]", t))
    char = letters > 0 and cjk / letters >= 0.1
    units = list(t.replace(" ", "")) if char else t.split()
    joiner = "" if char else " "
    if not units:
        return []
    grams = [joiner.join(units[i : i + n]) for i in range(len(units) - n + 1)]
    return [g.encode() for g in (grams or [joiner.join(units)])]


def test_normalize_matches_python_definition():
    texts = ["  Hello,\tWORLD!  ", "ＡＢＣ　ｄｅｆ", None, "x\x1fy", "it's", "你好，世界！"]
    exact = normalize(pa.array(texts)).to_pylist()
    tokens = normalize(pa.array(texts), tokens=True).to_pylist()
    assert exact == ["hello, world!", "abc def", "", "x y", "it's", "你好,世界!"]
    assert tokens == ["hello world", "abc def", "", "x y", "its", "你好 世界"]


@pytest.mark.parametrize("n", [1, 3, 5])
def test_shingles_and_span_hashes_match_reference(real_texts, n):
    norm, char = shingle_text(pa.array(real_texts))
    spans = ngram_spans(norm, char, n)
    raw = spans.data.tobytes()
    got = [[] for _ in real_texts]
    for s, e, d in zip(spans.start.tolist(), spans.end.tolist(), spans.doc.tolist(), strict=True):
        got[d].append(raw[s:e])
    assert got == [_reference_shingles(t, n) for t in real_texts]
    hashes = span_hashes(spans.data, spans.start, spans.end)
    assert hashes[:50].tolist() == [
        poly_hash64(raw[s:e]) for s, e in zip(spans.start[:50], spans.end[:50], strict=True)
    ]


@pytest.mark.parametrize("hash_name", ["poly", "sha1"])
def test_signatures_identical_to_datasketch(real_texts, hash_name):
    config = MinHashConfig(num_perm=64, seed=7, ngram=3, hash=hash_name)
    sig = MinHasher(config).signatures(pa.array(real_texts))
    for i, text in enumerate(real_texts):
        kwargs = {"hashfunc": poly_hash32} if hash_name == "poly" else {}  # sha1 is the default
        expected = MinHash(num_perm=64, seed=7, **kwargs)
        for shingle in _reference_shingles(text, 3):
            expected.update(shingle)
        assert np.array_equal(sig[i], expected.hashvalues), (i, text)


def test_parallel_signatures_equal_inline(real_texts, tmp_path, monkeypatch):
    # Streamlit (the dashboard's AppTest in the same pytest process) leaves its page installed as
    # `__main__`; spawned workers must not re-run such a script (it killed them before).
    page = tmp_path / "page.py"
    page.write_text("raise SystemExit('a foreign __main__ was re-run in a worker')\n")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(page)
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    config = MinHashConfig()
    texts = pa.array(real_texts * 3)
    inline = MinHasher(config).signatures(texts)
    seen = []
    pooled = signatures_parallel(texts, config, workers=2, batch_docs=64, on_batch=seen.append)
    assert np.array_equal(inline, pooled) and sum(seen) == len(texts)


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.95])
def test_bands_rows_as_datasketch(threshold):
    for weights in ((0.5, 0.5), (0.1, 0.9)):
        lsh = MinHashLSH(threshold=threshold, num_perm=128, weights=weights)
        assert lsh_params(threshold, 128, weights) == (lsh.b, lsh.r)


def test_candidates_found_and_jaccard_estimated():
    words = [f"w{i}" for i in range(300)]
    texts = pa.array([" ".join(words[:200]), " ".join(words[5:205]), " ".join(words[100:300])])
    config = MinHashConfig(ngram=1)
    sig = MinHasher(config).signatures(texts)
    left, right = candidate_pairs(sig, np.arange(3), *lsh_params(0.8, 128))
    assert (left.tolist(), right.tolist()) == ([0], [1])
    assert abs(estimated_jaccard(sig, left, right)[0] - 195 / 205) < 0.08
    assert pl.Series(sig[2] == sig[0]).mean() < 0.5
