import csv
import json

import polars as pl
import pyarrow as pa
import pytest

from catalog import versions
from corpus.errors import KalmixError
from filters.langid import LangId, LangIdConfig, predict
from kalmix.ingest import ingest
from tests.conftest import write_jsonl


def sentences(shared_data, name: str, n: int) -> list[str]:
    with open(shared_data / name, encoding="utf-8", newline="") as f:
        return [r["sentence1"] for r in csv.DictReader(f)][:n]


def test_languages_of_real_sentences(shared_data):
    langs = ("en", "de", "fr", "es", "pl")
    texts = [t for lang in langs for t in sentences(shared_data, f"stsb/{lang}-test.csv", 60)]
    pred = predict(pl.Series(texts))
    for i, lang in enumerate(langs):
        got = pred.language[i * 60 : (i + 1) * 60]
        assert (got == lang).mean() >= 0.9, (lang, list(got))


def test_script_settles_chinese_japanese_korean(shared_data):
    zh = sentences(shared_data, "pairs_zh/LCQMC-test.csv", 300)
    pred = predict(pl.Series(zh))
    assert (pred.language == "zh").mean() >= 0.97 and pred.corrected > 0
    extra = predict(
        pl.Series(["今日はいい天気ですね", "오늘 날씨가 좋네요", "杭州哪里好玩", "", "123"])
    )
    assert list(extra.language) == ["ja", "ko", "zh", "und", "und"]
    assert extra.score[2] >= 0.5 and extra.score[3] == 0.0


def _table(texts: list[str | None]) -> pa.Table:
    n = len(texts)
    return pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "query": texts,
            "language": ["und"] * n,
            "_dataset": ["d"] * n,
        }
    )


def test_operator_fills_language_and_filters():
    texts = [
        "Where is the nearest train station?",
        "Wo ist der nächste Bahnhof?\nIch finde ihn nicht.",  # fastText rejects raw newlines
        "最近的火车站在哪里？",
        "hmm",  # English by fastText, but with a score of about 0.12
    ]
    result = LangId(LangIdConfig(keep=("en", "zh"), min_score=0.3))(_table(texts))
    assert result.table.column("language").to_pylist() == ["en", "zh"]
    assert result.table.column("lang_score").type == pa.float32()
    assert "_dataset" in result.table.column_names
    removed = {r["id"]: (r["reason"], json.loads(r["detail"])) for r in result.removed.to_pylist()}
    assert removed["r1"][0] == "language" and removed["r1"][1]["language"] == "de"
    assert removed["r3"][0] == "language_score" and removed["r3"][1]["field"] == "query"
    everything = LangId()(_table(texts))
    assert everything.removed.num_rows == 0 and everything.table.num_rows == 4
    with pytest.raises(KalmixError, match="min-score"):
        LangIdConfig(min_score=2.0)
    with pytest.raises(KalmixError, match="does not exist"):
        LangId(LangIdConfig(field="body"))(_table(texts))


def test_cli_langid_registers_version_with_scores(cli, cat, tmp_path):
    rows = [
        {"question": "Please tell me how to reset the password for my account.", "answer": "a"},
        {"question": "Comment puis-je changer le code de ma carte bancaire ?", "answer": "b"},
        {"question": "如何重置我的密码？", "answer": "使用重置链接。"},
    ]
    ingest(cat, write_jsonl(tmp_path / "f.jsonl", rows), name="f", category="faq-retrieval")
    result = cli("langid", "f", "--keep", "en,zh")
    assert result.exit_code == 0, result.output
    assert "f@v1 -> f@v2: rows 3 -> 2; removed: language 1" in result.output
    info = versions.resolve(cat, "f")
    table = info.read()
    assert table.column("language").to_pylist() == ["en", "zh"]
    assert min(table.column("lang_score").to_pylist()) > 0.5
    assert info.stats["languages"] == {"en": 1, "zh": 1}

    result = cli("langid", "f", "--keep", "xx")  # removes everything: an empty version, recorded
    assert "f@v2 -> f@v3: rows 2 -> 0; removed: language 2" in result.output
    assert "is empty" in str(cli("dedup", "f").exception)
    evalset = write_jsonl(tmp_path / "eval.jsonl", [{"text": "a held-out test sentence"}])
    assert "is empty" in str(cli("decontaminate", "f", "--against", str(evalset)).exception)
