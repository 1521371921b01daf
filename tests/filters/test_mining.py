import json

import numpy as np
import pyarrow as pa
import pytest

from catalog import versions
from catalog.queries import versions_of
from catalog.versions import Commit, DatasetInfo
from corpus.embedding import default_model_path
from corpus.errors import KalmixError
from corpus.schema import RECORD_SCHEMA
from filters.consistency import embed_pairs
from filters.mining import (
    HardNegativeMiner,
    MiningConfig,
    language_key,
    parse_range,
    pool_candidates,
)
from filters.topk import topk
from tests.conftest import write_jsonl
from tests.filters.embedding_data import (
    banking_pairs,
    records,
    stsb_mixed_pairs,
)


@pytest.fixture
def banking(shared_data):
    return banking_pairs(shared_data)


@pytest.fixture
def mixed(shared_data):
    return stsb_mixed_pairs(shared_data)


def _with_languages(table, languages):
    column = table.schema.get_field_index("language")
    return table.set_column(column, "language", pa.array(languages, pa.string()))


def _language_of(table) -> dict[str, str | None]:
    """The language of each positive (the pool's texts here)."""
    positives, langs = table.column("positive").to_pylist(), table.column("language").to_pylist()
    return dict(zip(positives, langs, strict=True))


def _other_language(result, language_of: dict[str, str | None]) -> list[bool]:
    """Per mined negative: is it known to be in another language than its row?"""
    return [
        language_of[neg] is not None and language_of[neg] != row["language"]
        for row in result.table.to_pylist()
        for neg in row["negatives"]
    ]


def _false_negative_share(table, result) -> float:
    """Share of mined negatives whose Banking77 intent is the positive's (a false negative)."""
    intent = dict(
        zip(table.column("query").to_pylist(), table.column("label").to_pylist(), strict=True)
    )
    mined = [(row["label"], neg) for row in result.table.to_pylist() for neg in row["negatives"]]
    return float(np.mean([intent[neg] == label for label, neg in mined]))


def test_margin_guard_lowers_false_negatives_on_banking77(banking, embedder):
    without = HardNegativeMiner(embedder, MiningConfig(margin=None))(banking)
    guarded = HardNegativeMiner(embedder, MiningConfig(margin=0.1))(banking)
    share_without = _false_negative_share(banking, without)
    share_guarded = _false_negative_share(banking, guarded)
    print(
        f"\nBanking77 {banking.num_rows} pairs, 7 negatives from ranks 10:100 of "
        f"{without.stats['pool']} texts: same-intent (false) negatives {share_without:.1%} "
        f"without the guard, {share_guarded:.1%} with margin 0.1 "
        f"({guarded.stats['rows_short']} rows got fewer than 7)"
    )
    assert share_without < 0.15  # mostly from other intents
    assert share_guarded < share_without


def test_negatives_respect_window_guard_and_seed(banking, embedder):
    table = banking.slice(0, 300)
    config = MiningConfig(negatives=5, start=5, end=60, margin=0.05)
    first = HardNegativeMiner(embedder, config)(table)
    assert HardNegativeMiner(embedder, config)(table).table.equals(first.table)
    other_seed = HardNegativeMiner(
        embedder, MiningConfig(negatives=5, start=5, end=60, margin=0.05, seed=1)
    )(table)
    assert not other_seed.table.column("negatives").equals(first.table.column("negatives"))
    assert first.removed.num_rows == 0 and first.table.num_rows == 300
    for row in first.table.to_pylist():
        mining = json.loads(row["meta"])["mining"]
        negs = row["negatives"]
        assert len(negs) <= 5 and len(set(negs)) == len(negs)
        assert row["positive"] not in negs and row["query"] not in negs
        assert all(5 < r <= 60 for r in mining["ranks"]) and len(mining["ranks"]) == len(negs)
        assert all(s <= mining["positive_score"] - 0.05 + 1e-4 for s in mining["scores"])


def test_teacher_scores_for_positive_and_negatives(banking, embedder):
    table = banking.slice(0, 100)
    result = HardNegativeMiner(embedder, MiningConfig(), teacher=embedder)(table)
    for row in result.table.to_pylist():
        meta = json.loads(row["meta"])
        teacher, mining = meta["teacher_scores"], meta["mining"]
        assert len(teacher) == 1 + len(row["negatives"])
        # the teacher is the same model here, so it must agree with the mined scores
        np.testing.assert_allclose(
            teacher, [mining["positive_score"], *mining["scores"]], atol=2e-3
        )
    assert result.stats["teacher"] == embedder.name


def test_bad_config_and_task_types_are_refused(embedder):
    with pytest.raises(KalmixError, match="widen the range"):
        MiningConfig(negatives=7, start=10, end=12)
    with pytest.raises(KalmixError, match="START:END"):
        parse_range("10-100")
    with pytest.raises(KalmixError, match="--relative"):
        MiningConfig(relative=1.5)
    clustering = records(["a"], [None], task_type="clustering", label=["x"])
    with pytest.raises(KalmixError, match="hard-negative mining applies to retrieval-style"):
        HardNegativeMiner(embedder)(clustering)


def test_cli_mines_into_a_new_version(cli, cat, tmp_path, banking):
    rows = [
        {"question": q, "answer": p}
        for q, p in zip(
            banking.column("query").to_pylist()[:40],
            banking.column("positive").to_pylist()[:40],
            strict=True,
        )
    ]
    src = write_jsonl(tmp_path / "b.jsonl", rows)
    assert cli("ingest", str(src), "--name", "b", "--category", "faq-retrieval").exit_code == 0
    teacher = str(default_model_path())  # any local model folder; here the same model
    args = ("--negatives", "3", "--range", "2:20", "--margin", "0.05", "--teacher", teacher)
    result = cli("mine", "b", *args)
    assert result.exit_code == 0, result.output
    assert "mine: b@v1 -> b@v2: rows 40 -> 40" in result.output
    v2 = versions.resolve(cat, "b@v2")
    assert v2.params["negatives"] == 3 and v2.params["range"] == "2:20"
    assert v2.params["teacher"] == teacher
    table = v2.read()
    assert sum(len(n) for n in table.column("negatives").to_pylist()) > 40
    meta = json.loads(table.column("meta")[0].as_py())
    negatives = table.column("negatives")[0].as_py()
    assert "mining" in meta and len(meta["teacher_scores"]) == 1 + len(negatives)


def test_cli_bad_input_is_one_clear_error_and_no_new_version(cli, cat, tmp_path):
    src = write_jsonl(tmp_path / "faq.jsonl", [{"question": "q", "answer": "a"}])
    assert cli("ingest", str(src), "--name", "faq", "--category", "faq-retrieval").exit_code == 0
    info = DatasetInfo("void", "faq-retrieval", "retrieval")
    versions.commit(cat, Commit("void", RECORD_SCHEMA.empty_table(), "ingest", {}, info=info))
    missing = str(tmp_path / "no-model")
    cases = [
        (("mine", "faq", "--range", "20"), "START:END"),
        (("mine", "faq", "--range", "30:20"), "0 <= START < END"),
        (("mine", "faq", "--negatives", "0"), "at least 1"),
        (("mine", "faq", "--margin", "-0.1"), "--margin must be >= 0"),
        (("mine", "faq", "--index", "hnsw"), "--index must be one of"),
        (("mine", "faq", "--model", missing), "model folder not found"),
        (("mine", "faq", "--teacher", missing), "model folder not found"),
        (("mine", "void"), "is empty"),
        (("mine", "faq@v7"), "does not exist"),
        (("filter", "consistency", "faq", "--top-k", "0"), "--top-k must be at least 1"),
        (("filter", "consistency", "faq", "--model", missing), "model folder not found"),
        (("filter", "consistency", "faq", "--pool", "nope"), "unknown dataset"),
        (("filter", "consistency", "void"), "is empty"),
    ]
    for args, message in cases:
        result = cli(*args)
        assert isinstance(result.exception, KalmixError), (args, result.output)
        assert message in str(result.exception) and "\n" not in str(result.exception), args
    for name in ("faq", "void"):
        assert versions_of(cat, name).num_rows == 1


HARD = {"start": 2, "end": 30}  # the 90-text mixed pool is small: a window of its hardest texts


def test_negatives_stay_in_the_query_language_on_a_mixed_pool(mixed, embedder):
    language_of = _language_of(mixed)
    same = HardNegativeMiner(embedder, MiningConfig(**HARD))(mixed)
    cross = HardNegativeMiner(embedder, MiningConfig(**HARD, cross_lingual=True))(mixed)
    share_same = np.mean(_other_language(same, language_of))
    share_cross = np.mean(_other_language(cross, language_of))
    print(
        f"\nSTS-B en/de/fr, {mixed.num_rows} pairs, 7 negatives from ranks 2:30: other-language "
        f"negatives {share_cross:.1%} with --cross-lingual, {share_same:.1%} by default "
        f"({same.stats['cross_lingual_skipped']} other-language window candidates skipped, "
        f"{same.stats['rows_short']} rows short)"
    )
    assert share_same == 0 and share_cross > 0.2
    assert same.stats["mined"] == cross.stats["mined"] == 7 * mixed.num_rows
    assert same.stats["cross_lingual"] is False and cross.stats["cross_lingual"] is True
    assert cross.stats["cross_lingual_skipped"] == 0
    # the count: other-language texts in each row's window of the unrestricted ranking
    pairs = embed_pairs(mixed, embedder)
    hits = topk(pairs.query_vectors, pairs.pool_vectors, HARD["end"], exclude=pairs.exclude)
    window = [[language_of[pairs.pool[i]] for i in row[HARD["start"] :]] for row in hits.indices]
    expected = sum(
        lang != row_lang
        for langs, row_lang in zip(window, mixed.column("language").to_pylist(), strict=True)
        for lang in langs
    )
    assert same.stats["cross_lingual_skipped"] == expected > 0
    params = HardNegativeMiner(embedder, MiningConfig(cross_lingual=True)).params()
    assert params["cross_lingual"] is True


def test_each_language_is_mined_as_if_it_were_alone(mixed, embedder):
    en = mixed.filter(pa.compute.equal(mixed.column("language"), "en"))
    alone = HardNegativeMiner(embedder, MiningConfig(**HARD))(en)
    together = HardNegativeMiner(embedder, MiningConfig(**HARD))(mixed)
    rows = {r["id"]: r for r in together.table.to_pylist()}
    for row in alone.table.to_pylist():
        assert rows[row["id"]]["negatives"] == row["negatives"]
        assert json.loads(rows[row["id"]]["meta"]) == json.loads(row["meta"])
    assert alone.stats["cross_lingual_skipped"] == 0


def test_one_language_mines_the_same_negatives_as_cross_lingual(banking, embedder):
    table = banking.slice(0, 300)
    default = HardNegativeMiner(embedder, MiningConfig(negatives=5, start=5, end=60))(table)
    cross = HardNegativeMiner(
        embedder, MiningConfig(negatives=5, start=5, end=60, cross_lingual=True)
    )(table)
    assert default.table.equals(cross.table)
    assert default.stats["cross_lingual_skipped"] == 0
    # unknown languages beside the one known one change nothing either
    unknown = _with_languages(table, [None, "", "und", "EN-us"] * 75)
    assert (
        HardNegativeMiner(embedder, MiningConfig(negatives=5, start=5, end=60))(unknown)
        .table.column("negatives")
        .equals(default.table.column("negatives"))
    )


def test_unknown_languages_exclude_nothing(mixed, embedder):
    langs = mixed.column("language").to_pylist()
    language_of = _language_of(mixed)
    # French rows lose their language: their queries may take anything, their texts go anywhere
    blurred = _with_languages(mixed, [None if x == "fr" else x for x in langs])
    result = HardNegativeMiner(embedder, MiningConfig(**HARD))(blurred)
    got = {
        (row["language"], language_of[neg])
        for row in result.table.to_pylist()
        for neg in row["negatives"]
    }
    assert ("en", "de") not in got and ("de", "en") not in got
    assert ("en", "fr") in got and ("de", "fr") in got  # unknown texts are allowed
    assert {(None, "en"), (None, "de")} & got  # unknown queries take other languages too
    assert language_key("fr-CA") == "fr" and language_key(" mul ") is None
    assert language_key("") is None and language_key(None) is None


def test_pool_texts_carry_their_records_language(mixed, embedder):
    lang = mixed.column("language")
    en = mixed.filter(pa.compute.equal(lang, "en"))
    others = mixed.filter(pa.compute.not_equal(lang, "en"))
    texts, languages = pool_candidates([others])
    assert len(texts) == others.num_rows and set(languages) == {"de", "fr"}
    from_pool = set(texts)
    default = HardNegativeMiner(embedder, MiningConfig(**HARD), texts, pool_languages=languages)(en)
    assert not {n for negs in default.table.column("negatives").to_pylist() for n in negs} & (
        from_pool
    )
    assert default.stats["cross_lingual_skipped"] > 0
    # without their languages the pool texts are unknown, and so allowed
    unknown = HardNegativeMiner(embedder, MiningConfig(**HARD), texts)(en)
    assert {n for negs in unknown.table.column("negatives").to_pylist() for n in negs} & from_pool
    with pytest.raises(KalmixError, match="pool_languages has 1 entries"):
        HardNegativeMiner(embedder, MiningConfig(**HARD), texts, pool_languages=["de"])(en)


def test_cli_mines_in_the_query_language(cli, cat, tmp_path, mixed):
    def ingest(name, table):
        rows = [
            {"question": r["query"], "answer": r["positive"], "language": r["language"]}
            for r in table.to_pylist()
        ]
        src = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        args = ("ingest", str(src), "--name", name, "--category", "faq-retrieval")
        assert cli(*args).exit_code == 0

    lang = mixed.column("language")
    ingest("mixed", mixed)
    ingest("others", mixed.filter(pa.compute.not_equal(lang, "en")))
    ingest("en", mixed.filter(pa.compute.equal(lang, "en")))
    language_of = _language_of(mixed)

    result = cli("mine", "mixed", "--range", "2:30")
    assert result.exit_code == 0, result.output
    assert "other-language candidates skipped" in result.output
    v2 = versions.resolve(cat, "mixed@v2")
    assert v2.params["cross_lingual"] is False and v2.stats["operator"]["cross_lingual_skipped"] > 0
    table = v2.read()
    for row in table.to_pylist():
        assert all(language_of[n] == row["language"] for n in row["negatives"])
    result = cli("mine", "mixed@v1", "--range", "2:30", "--cross-lingual")
    assert result.exit_code == 0, result.output
    assert "other languages allowed (--cross-lingual)" in result.output
    v3 = versions.resolve(cat, "mixed@v3")
    assert v3.params["cross_lingual"] is True
    rows = v3.read().to_pylist()
    assert any(language_of[n] != r["language"] for r in rows for n in r["negatives"])

    # --pool datasets: their texts carry their records' languages
    result = cli("mine", "en", "--range", "2:30", "--pool", "others")
    assert result.exit_code == 0, result.output
    negatives = {
        n
        for negs in versions.resolve(cat, "en@v2").read().column("negatives").to_pylist()
        for n in negs
    }
    assert negatives and all(language_of[n] == "en" for n in negatives)
