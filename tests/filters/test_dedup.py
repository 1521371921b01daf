import csv
import json
import random
from dataclasses import replace

import pyarrow as pa
import pytest

from catalog import versions
from catalog.versions import Commit, DatasetInfo
from corpus.errors import KalmixError
from corpus.executor import RayExecutor
from corpus.operator import DATASET_COLUMN
from corpus.sample import python_docs_records
from corpus.writer import write_table
from filters.dedup import Dedup, DedupConfig, dedup_on_ray
from filters.exact import exact_dedup
from filters.langid import LangId, LangIdConfig
from kalmix.ingest import ingest
from kalmix.pipeline import run_operator
from tests.conftest import record_table, write_jsonl


def records(queries: list[str], positives: list[str | None] | None = None, source="web"):
    return record_table(queries, positive=positives or None, source=source)


def edit_words(text: str, rng: random.Random, k: int) -> str:
    words = text.split()
    for _ in range(k):
        words[rng.randrange(len(words))] = rng.choice(["alpha", "beta", "gamma", "delta"])
    return " ".join(words)


@pytest.fixture(scope="module")
def docs() -> list[str]:
    """~150-word documents of real stdlib docstrings, minus the stdlib's own near-copies
    (bisect vs bisect_right, ...) found by exact 5-gram Jaccard: every duplicate is planted."""
    texts, words = [], []
    for record in python_docs_records():
        words += record["answer"].split()
        if len(words) >= 150:
            texts.append(" ".join(words))
            words = []
    grams = [set(zip(*(t.lower().split()[i:] for i in range(5)), strict=False)) for t in texts]
    return [
        t
        for i, t in enumerate(texts)
        if all(len(grams[i] & g) / len(grams[i] | g) < 0.5 for j, g in enumerate(grams) if j < i)
    ]


def test_planted_exact_and_near_duplicates_removed_and_nothing_else(docs):
    rng = random.Random(0)
    near = [edit_words(d, rng, 1) for d in docs[:40]]  # ~1-2% of words edited
    exact = [d.upper().replace(" ", "  ") for d in docs[40:60]]  # case and spacing only
    table = records(docs + near + exact)
    result = Dedup(DedupConfig(prefer="first", workers=1))(table)  # the original is the keeper
    removed = result.removed.to_pylist()
    ids = table.column("id").to_pylist()
    planted = set(ids[len(docs) :])
    assert {r["id"] for r in removed} == planted
    assert result.table.num_rows == len(docs)
    by_id = {r["id"]: json.loads(r["detail"]) for r in removed}
    for i, copy_id in enumerate(ids[len(docs) :]):
        assert by_id[copy_id]["dup_of"] == ids[i] and by_id[copy_id]["jaccard"] >= 0.8
    assert result.stats["exact_duplicates"] == 20 and result.stats["near_duplicates"] == 40
    assert {r["reason"] for r in removed} == {"exact_duplicate", "near_duplicate"}


def test_cjk_records_shingled_by_characters(shared_data):
    rows = list(csv.DictReader(open(shared_data / "pairs_zh/LCQMC-test.csv", encoding="utf-8")))
    long_zh = ["".join(r["sentence1"] for r in rows[i : i + 12]) for i in range(0, 600, 12)]
    edited = [t[:20] + "的" + t[21:] for t in long_zh[:10]]  # one character changed
    result = Dedup(DedupConfig(workers=1))(records(long_zh + edited))
    assert result.removed.num_rows == 10 and result.stats["near_duplicates"] == 10


def test_keeper_is_longest_or_by_priority_and_chains_are_not_trusted():
    words = [f"w{i}" for i in range(200)]
    a, b, c = (" ".join(words[k : k + 100]) for k in (0, 10, 20))  # J(a,b)=J(b,c)=.82, J(a,c)=.67
    config = DedupConfig(ngram=1, threshold=0.75, workers=1)
    result = Dedup(config)(records([a, b, c]))
    kept = result.table.column("query").to_pylist()
    assert kept == [a, c]  # b duplicates a; c is only near b, so it stays
    longer = Dedup(replace(config, prefer="longest"))(records([a, a + " extra words here"]))
    assert longer.table.column("query").to_pylist() == [a + " extra words here"]
    same = pa.concat_tables([records([a], source="web"), records([a], source="curated")])
    curated = exact_dedup(same, rule=DedupConfig(priority=("curated",)).rule)
    assert curated.table.column("source").to_pylist() == ["curated"]
    table = pa.concat_tables([records([a], source="web"), records([a + " x"], source="curated")])
    priority = Dedup(DedupConfig(ngram=1, priority=("web",), workers=1))(table)
    assert priority.table.column("source").to_pylist() == ["web"]


def test_bad_input_and_tiny_tables():
    with pytest.raises(KalmixError, match="threshold"):
        DedupConfig(threshold=0.0)
    with pytest.raises(KalmixError, match="threshold"):
        DedupConfig(threshold=1.5)
    with pytest.raises(KalmixError, match="does not exist"):
        Dedup(DedupConfig(fields=("body",)))(records(["x"]))
    with pytest.raises(KalmixError, match="not text"):
        Dedup(DedupConfig(fields=("score",)))(records(["x"]))
    one = Dedup()(records(["just one row"]))
    assert one.table.num_rows == 1 and one.removed.num_rows == 0
    empty_text = Dedup()(records(["", "", None]))
    assert empty_text.table.num_rows == 3 and empty_text.stats["without_text"] == 3


def test_cli_dedup_within_and_across_datasets(cli, cat, tmp_path, docs):
    rng = random.Random(1)
    first = [{"question": d, "answer": "a"} for d in docs[:30]]
    first += [{"question": edit_words(d, rng, 1), "answer": "a"} for d in docs[:5]]
    second = [{"question": d, "answer": "a"} for d in docs[25:60]]  # 5 shared with `first`
    ingest(cat, write_jsonl(tmp_path / "a.jsonl", first), name="a", category="faq-retrieval")
    ingest(cat, write_jsonl(tmp_path / "b.jsonl", second), name="b", category="faq-retrieval")

    result = cli("dedup", "a", "--threshold", "0.8")
    assert result.exit_code == 0, result.output
    assert "a@v1 -> a@v2: rows 35 -> 30; removed: near_duplicate 5" in result.output

    result = cli("dedup", "--across", "name IN ('a', 'b')")
    assert result.exit_code == 0, result.output
    assert "removed: exact_duplicate 5" in result.output
    lost = [v for v in ("a", "b") if versions.resolve(cat, v).operation == "dedup"]
    b = versions.resolve(cat, "b")
    assert lost == ["a", "b"] and b.rows == 30 and b.params["across"] == ["a@v2", "b@v1"]
    detail = cat.query(
        "SELECT detail FROM removals WHERE dataset = 'b' AND version = ?", [b.version]
    ).to_pylist()
    assert {json.loads(d["detail"])["dup_of_dataset"] for d in detail} == {"a"}

    assert cli("dedup", "a", "--threshold", "2").exception.args[0].startswith("--threshold")
    assert "does not exist" in str(cli("dedup", "a", "--fields", "nope").exception)
    assert "not both" in str(cli("dedup", "a", "--across", "true").exception)
    result = cli("dedup", "a")  # nothing left to remove: no new version
    assert "no new version" in result.output and versions.resolve(cat, "a").version == 2


def _sharded(cat, name: str, table: pa.Table) -> None:
    with versions.staging(cat, name) as staged:
        write_table(staged.path, table, rows_per_shard=8)
        info = DatasetInfo(name, "faq-retrieval", "retrieval")
        versions.commit(cat, Commit(name, staged, "ingest", {}, info=info))


def test_ray_executor_gives_the_local_result(cli, cat, docs, local_ray):
    rng = random.Random(3)
    a = docs[:30] + [edit_words(d, rng, 1) for d in docs[:6]] + [d.upper() for d in docs[10:13]]
    b = docs[25:50] + [edit_words(d, rng, 1) for d in docs[40:44]] + [docs[3].upper()]
    _sharded(cat, "a", records(a + ["", "!!!"]))  # two rows without shingles
    _sharded(cat, "b", records(b, source="curated"))
    config = DedupConfig(workers=1, priority=("curated",))

    a1 = versions.resolve(cat, "a")
    local = run_operator(a1, Dedup(config), "inline")
    shards = [(None, str(f)) for f in a1.files]
    on_ray = dedup_on_ray(config, RayExecutor(), shards, partitions=3)
    assert len(shards) == 6 and on_ray.stats["executor"] == "ray"
    assert local.stats["exact_duplicates"] == 3 and local.stats["near_duplicates"] == 6
    assert on_ray.table.column("id").to_pylist() == local.table.column("id").to_pylist()
    assert on_ray.removed.to_pylist() == local.removed.to_pylist()
    langid = LangId(LangIdConfig(min_score=0.9))  # row-local: Ray Data map_batches
    by_lang = [run_operator(a1, langid, executor) for executor in ("inline", "ray")]
    assert by_lang[0].removed.num_rows > 0
    assert by_lang[1].table.to_pylist() == by_lang[0].table.to_pylist()
    assert by_lang[1].removed.to_pylist() == by_lang[0].removed.to_pylist()

    # Across datasets, from the CLI: the versions and removals registered are the local ones.
    sources = [versions.resolve(cat, n).read() for n in ("a", "b")]
    expected = Dedup(config)(
        pa.concat_tables(
            t.append_column(DATASET_COLUMN, pa.array([n] * t.num_rows))
            for n, t in zip("ab", sources, strict=True)
        )
    )
    result = cli(
        "dedup",
        "--across",
        "name IN ('a', 'b')",
        "--priority",
        "source=curated",
        "--executor",
        "ray",
        "--workers",
        "1",
    )
    assert result.exit_code == 0, result.output
    for name in ("a", "b"):
        info = versions.resolve(cat, name)
        assert info.version == 2 and info.operation == "dedup"
        mine = expected.table.filter(pa.compute.equal(expected.table[DATASET_COLUMN], name))
        assert info.read().column("id").to_pylist() == mine.column("id").to_pylist()
        stored = cat.query(
            "SELECT id, reason, detail FROM removals WHERE dataset = ? AND version = 2", [name]
        ).to_pylist()
        want = [
            {k: r[k] for k in ("id", "reason", "detail")}
            for r in expected.removed.to_pylist()
            if r[DATASET_COLUMN] == name
        ]
        key = lambda r: (r["id"], r["reason"])  # noqa: E731
        assert [{**r, "detail": json.loads(r["detail"])} for r in sorted(stored, key=key)] == [
            {**r, "detail": json.loads(r["detail"])} for r in sorted(want, key=key)
        ]


def test_cli_bad_input_is_one_clear_error_and_one_row_is_a_no_op(cli, cat, tmp_path):
    row = {"question": "Where can I change the PIN of my card?", "answer": "At any cash machine."}
    ingest(cat, write_jsonl(tmp_path / "one.jsonl", [row]), name="one", category="faq-retrieval")
    evalset = write_jsonl(tmp_path / "eval.jsonl", [{"text": "an unrelated held-out sentence"}])
    against = ("--against", str(evalset))
    for args, message in [
        (("dedup", "one", "--fields", "score"), "is not text"),
        (("dedup", "one", "--ngram", "0"), "--ngram"),
        (("dedup", "one", "--executor", "spark"), "--executor"),
        (("dedup", "--across", "name = 'nothing'"), "selects no dataset"),
        (("dedup", "--across", "name = ("), "bad WHERE"),
        (("langid", "one", "--field", "nope"), "does not exist"),
        (("langid", "one", "--field", "score"), "is not text"),
        (("langid", "one", "--min-score", "-1"), "--min-score"),
        (("decontaminate", "one", *against, "--fields", "nope"), "does not exist"),
        (("decontaminate", "one", *against, "--fields", "score"), "is not text"),
        (("decontaminate", "one", *against, "--threshold", "1.5"), "--threshold"),
        (("decontaminate", "one", "--against", str(tmp_path / "gone.csv")), "no such file"),
    ]:
        error = cli(*args).exception
        assert isinstance(error, KalmixError) and message in str(error), (args, error)
    result = cli("dedup", "one")
    assert "one@v1 -> no new version (nothing changed): rows 1 -> 1; removed: none" in result.output
    assert "no new version" in cli("decontaminate", "one", *against).output
    assert versions.resolve(cat, "one").version == 1


def noisy(text: str) -> str:
    """The copy a scrape leaves: upper case, doubled spaces (normalises to `text`)."""
    return text.upper().replace(" ", "  ")


def test_default_keeper_of_exact_copies_is_the_clean_original_not_the_longest(docs):
    # Each copy comes before its original, so neither row order nor length finds the original.
    originals = docs[:4]
    copies = [noisy(docs[0]), docs[1].upper(), docs[2].replace(" ", "  "), f"\t{docs[3]}  "]
    table = records(copies + originals)
    ids = table.column("id").to_pylist()
    result = Dedup(DedupConfig(workers=1))(table)
    assert result.table.column("query").to_pylist() == originals
    removed = {r["id"]: json.loads(r["detail"])["dup_of"] for r in result.removed.to_pylist()}
    assert removed == {ids[i]: ids[4 + i] for i in range(4)}
    assert {r["reason"] for r in result.removed.to_pylist()} == {"exact_duplicate"}
    # The exact pass alone (and the Python API's exact_dedup) follows the same rule.
    exact = exact_dedup(table, rule=DedupConfig().rule)
    assert exact.table.column("query").to_pylist() == originals
    # --prefer longest and first still override: the longer copy (the upper-cased one is as
    # long as its original, so the first row breaks the tie), or the first row, stays.
    for prefer in ("longest", "first"):
        other = Dedup(DedupConfig(prefer=prefer, workers=1))(table)
        assert other.table.column("query").to_pylist() == copies
    # --priority still comes before the cleanliness tests.
    ranked = pa.concat_tables([records(copies[:1], source="curated"), records(originals[:1])])
    kept = Dedup(DedupConfig(priority=("curated",), workers=1))(ranked)
    assert kept.table.column("query").to_pylist() == copies[:1]
    with pytest.raises(KalmixError, match="cleanest, longest, first"):
        DedupConfig(prefer="shortest")


def test_default_keeper_of_near_duplicates_is_the_cleanest_not_the_longest(docs):
    rng = random.Random(7)
    noisy_near = noisy(edit_words(docs[0], rng, 2))  # longer than the original, and noisy
    padded = docs[1] + " Subscribe to our newsletter for weekly updates."  # as clean, longer
    table = records([noisy_near, docs[0], docs[1], padded])
    result = Dedup(DedupConfig(workers=1))(table)
    assert result.stats["near_duplicates"] == 2 and result.stats["exact_duplicates"] == 0
    assert result.table.column("query").to_pylist() == [docs[0], docs[1]]
    longest = Dedup(DedupConfig(prefer="longest", workers=1))(table)
    assert longest.table.column("query").to_pylist() == [noisy_near, padded]


def test_cli_dedup_keeps_the_clean_original_and_says_so_in_help(cli, cat, tmp_path, docs):
    rows = [{"question": q, "answer": "a"} for q in (noisy(docs[0]), docs[0], docs[1])]
    ingest(cat, write_jsonl(tmp_path / "n.jsonl", rows), name="n", category="faq-retrieval")
    result = cli("dedup", "n")
    assert result.exit_code == 0, result.output
    assert "n@v1 -> n@v2: rows 3 -> 2; removed: exact_duplicate 1" in result.output
    assert versions.resolve(cat, "n").read().column("query").to_pylist() == docs[:2]
    assert versions.resolve(cat, "n").params["prefer"] == "cleanest"
    result = cli("dedup", "n@v1", "--prefer", "longest")
    assert result.exit_code == 0, result.output
    kept = versions.resolve(cat, "n").read().column("query").to_pylist()
    assert kept == [noisy(docs[0]), docs[1]]
    assert "--prefer must be one of" in str(cli("dedup", "n", "--prefer", "clean").exception)
    help_text = " ".join(cli("dedup", "--help").output.split())
    assert "cleanest" in help_text and "whitespace noise" in help_text
