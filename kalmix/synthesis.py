"""Synthesis steps on the catalog: `kalmix synth personas` and `kalmix synth generate`.

This is the glue between `synth/` (which never touches the catalog) and the catalog, beside
`kalmix/pipeline.py` for filters: resolve the input version, plan the jobs, run them resumably
in a work folder under `runs/synth/<step>-<key>/` (key = hash of everything that decides the
outputs), turn the results into records, and register them through `catalog.versions.commit`
as new versions with lineage to the input (all of a step's versions in one transaction).
Generation runs in this process or, with `--executor ray`, on Ray Data actors (one backend
each; see docs/scaling-synthesis.md); everything else stays on this driver. The heavy
libraries (torch, transformers, datasketch, requests, ray) are imported only when a step
runs, so that every `kalmix` invocation starts fast.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from catalog import versions
from catalog.db import Catalog, fetch_one
from catalog.versions import Commit, DatasetInfo, VersionInfo, VersionRef
from corpus.console import progress
from corpus.errors import KalmixError
from corpus.operator import OpResult, count_reasons
from kalmix.pipeline import StepReport
from synth.backends import BackendConfig, SamplingParams, make_backend, model_name
from synth.backends.constraint import compile_schema
from synth.generate import (
    ExampleRecipe,
    PersonaRecipe,
    RaySynth,
    Recipe,
    SynthOperator,
    examples_to_records,
    plan_examples,
    run_resumable,
    summarize,
    work_key,
)
from synth.personas import personas_to_records, sample_passages
from synth.prompts import load_persona_template, load_task_template
from synth.vocabulary import RETRIEVAL_FORMS

DEFAULT_SHARD = {"transformers": 32, "openai": 128, "vllm": 1024}


@dataclass(frozen=True)
class SynthSettings:
    """How to run the LLM: the backend, sampling, retries, the shard size for resuming, and
    where generation runs (`ray` set: Ray Data actors, else this process)."""

    backend: BackendConfig
    params: SamplingParams
    max_retries: int = 2
    shard_size: int | None = None
    ray: RaySynth | None = None

    @property
    def executor(self) -> str:
        return "inline" if self.ray is None else "ray"

    @property
    def shard(self) -> int:
        return self.shard_size or DEFAULT_SHARD.get(self.backend.kind, 64)

    def operator(self, recipe: Recipe) -> tuple[SynthOperator, str]:
        """The operator and the model name. Inline, the backend is built (and checked) here;
        under Ray only its name is resolved and each actor builds its own, so the driver never
        loads the model (nor needs vLLM or a GPU)."""
        if self.ray is not None:
            op = SynthOperator(recipe, self.params, self.max_retries, config=self.backend)
            return op, model_name(self.backend)
        backend = make_backend(self.backend)
        op = SynthOperator(recipe, self.params, self.max_retries, backend, self.backend)
        return op, backend.model_name


def _work_dir(cat: Catalog, step: str, key_params: dict[str, Any]) -> Path:
    folder = cat.workspace.runs_dir / "synth" / f"{step}-{work_key(key_params)}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(key_params, indent=2, default=str) + "\n")
    return folder


def _run(
    jobs: pa.Table, op: SynthOperator, work: Path, settings: SynthSettings, label: str, show: bool
):
    with progress(transient=True) as bar:
        task = bar.add_task(label, total=jobs.num_rows, visible=show)
        return run_resumable(
            jobs, op, work, settings.shard, lambda n: bar.advance(task, n), settings.ray
        )


def _check_target(cat: Catalog, name: str, category: str, task_type: str) -> None:
    versions.check_name(name)
    with cat.read() as con:
        row = fetch_one(con, "SELECT category, task_type FROM datasets WHERE name = ?", [name])
    if row and tuple(row) != (category, task_type):
        raise KalmixError(
            f"dataset {name!r} already exists as {row[1]} in category {row[0]!r}; "
            f"choose another --name"
        )


def _commit(
    cat: Catalog,
    parts: list[tuple[str, str, str, OpResult]],
    parent: VersionInfo,
    operation: str,
    params: dict[str, Any],
    stats: dict[str, Any],
) -> list[VersionRef]:
    """Register (name, category, task type, result) versions in one transaction."""
    return versions.commit(
        cat,
        *(
            Commit(
                name,
                result.table,
                operation,
                params,
                parent=parent.ref,
                info=DatasetInfo(name, category, task_type, source="synth", tags=("synthetic",)),
                stats={"synth": {**stats, **result.stats}},
                removals=result.removed,
            )
            for name, category, task_type, result in parts
        ),
    )


def _registered(cat: Catalog, work: Path) -> list[VersionRef] | None:
    """Refs this exact run already registered (kept in the work folder), if they still exist."""
    marker = work / "committed.json"
    if not marker.exists():
        return None
    refs = [VersionRef.parse(ref) for ref in json.loads(marker.read_text())["refs"]]
    try:
        for ref in refs:
            versions.resolve(cat, ref)
    except KalmixError:
        return None
    return refs


def _mark_registered(work: Path, refs: list[VersionRef], stats: dict[str, Any]) -> None:
    (work / "committed.json").write_text(json.dumps({"refs": list(map(str, refs)), "stats": stats}))


def _already(work: Path, operation: str, source: VersionRef, refs: list[VersionRef]) -> StepReport:
    stats = json.loads((work / "committed.json").read_text())["stats"]
    report = StepReport(operation, [source], refs, stats["jobs"], stats["valid"], stats=stats)
    report.stats["already_registered"] = str(work)
    return report


def _settings_params(settings: SynthSettings, op: SynthOperator, model: str) -> dict[str, Any]:
    return {"backend": settings.backend.kind, "model": model, **op.params()}


def run_personas(
    cat: Catalog,
    corpus: str,
    *,
    n: int,
    name: str | None,
    settings: SynthSettings,
    seed: int = 0,
    dedup_threshold: float = 0.7,
    templates: Path | None = None,
    show_progress: bool = True,
) -> StepReport:
    """Sample passages, infer one persona each, dedupe, register as a `persona` dataset."""
    start = time.perf_counter()
    source = versions.resolve(cat, corpus)
    name = name or f"{source.dataset}-personas"
    _check_target(cat, name, "persona", "retrieval")
    if n < 1:
        raise KalmixError("--n must be at least 1")
    template = load_persona_template(templates)
    table = source.read(["id", "query", "positive", "language"])
    jobs = sample_passages(table, n, seed, str(source.ref))
    if jobs.num_rows == 0:
        raise KalmixError(f"{source.ref} has no passage of 20+ characters to infer personas from")
    op, model = settings.operator(PersonaRecipe(template))
    key = {
        "step": "personas",
        "name": name,
        "source": str(source.ref),
        "content_hash": source.content_hash,
        "n": n,
        "seed": seed,
        "template_hash": template.hash,
        **_settings_params(settings, op, model),
    }
    work = _work_dir(cat, "personas", key)
    if refs := _registered(cat, work):
        return _already(work, "synth personas", source.ref, refs)
    run = _run(jobs, op, work, settings, f"personas from {source.ref}", show_progress)
    meta = {
        "source_dataset": str(source.ref),
        "model": model,
        "backend": settings.backend.kind,
        "template": "persona",
        "template_hash": template.hash,
        "sampling": settings.params.as_dict(),
    }
    result = personas_to_records(
        jobs, run.results, meta, dedup_threshold, cat.workspace.id_algorithm
    )
    stats = {**summarize(run.results), "resumed_jobs": run.resumed}
    stats["seconds"] = round(time.perf_counter() - start, 2)
    params = {
        **key,
        "dedup_threshold": dedup_threshold,
        "backend_config": settings.backend.public(),
        "executor": settings.executor,
    }
    refs = _commit(
        cat, [(name, "persona", "retrieval", result)], source, "synth-personas", params, stats
    )
    _mark_registered(work, refs, stats)
    return StepReport(
        "synth personas",
        [source.ref],
        refs,
        jobs.num_rows,
        result.table.num_rows,
        count_reasons(result.removed),
        time.perf_counter() - start,
        {**stats, **result.stats},
    )


def run_generate(
    cat: Catalog,
    personas: str,
    *,
    task_types: list[str],
    per_persona: int,
    languages: list[str],
    name: str,
    settings: SynthSettings,
    retrieval_forms: tuple[str, ...] | list[str] = RETRIEVAL_FORMS,
    templates: Path | None = None,
    show_progress: bool = True,
    constrain: bool = True,
    gate: bool = True,
) -> StepReport:
    """persona -> task -> JSON example for every persona x task type; one dataset per type.
    `constrain`: the example step decodes under each task type's JSON Schema (off: the output
    is only validated against it). `gate`: valid examples then pass the semantic quality gate
    (`synth.gate`, on the workspace's embedder); its rejections are removals like the others."""
    start = time.perf_counter()
    source = versions.resolve(cat, personas)
    if source.category != "persona":
        raise KalmixError(
            f"{source.ref} is a {source.category!r} dataset, not personas; make personas with: "
            "kalmix synth personas CORPUS"
        )
    if per_persona < 1:
        raise KalmixError("--per-persona must be at least 1")
    if not task_types or not languages:
        raise KalmixError("give at least one --task-types entry and one --languages entry")
    bad_forms = [f for f in retrieval_forms if f not in RETRIEVAL_FORMS]
    if bad_forms:
        raise KalmixError(
            f"unknown retrieval form(s) {', '.join(bad_forms)}; use: {', '.join(RETRIEVAL_FORMS)}"
        )
    loaded = {t: load_task_template(t, templates) for t in dict.fromkeys(task_types)}
    names = {t: name if len(loaded) == 1 else f"{name}-{t}" for t in loaded}
    for t, template in loaded.items():
        _check_target(cat, names[t], template.category, template.task_type)
    forms = {
        t: [f for f in retrieval_forms if f in tpl.forms] for t, tpl in loaded.items() if tpl.forms
    }
    persona_table = source.read(["id", "query", "language"])
    if persona_table.num_rows == 0:
        raise KalmixError(f"{source.ref} holds no personas")
    jobs = plan_examples(persona_table, list(loaded), per_persona, languages, forms)
    if constrain:  # a schema no backend could decode under fails here, naming its task type
        for template in loaded.values():
            compile_schema(template.output_schema())
    op, model = settings.operator(ExampleRecipe(loaded, constrain=constrain))
    key = {
        "step": "generate",
        "name": name,
        "source": str(source.ref),
        "content_hash": source.content_hash,
        "task_types": list(loaded),
        "per_persona": per_persona,
        "languages": languages,
        "retrieval_forms": list(retrieval_forms),
        "constrain": constrain,
        "gate": _gate_params(cat) if gate else None,
        "template_hashes": {t: tpl.hash for t, tpl in loaded.items()},
        **_settings_params(settings, op, model),
    }
    work = _work_dir(cat, "generate", key)
    if refs := _registered(cat, work):
        return _already(work, "synth generate", source.ref, refs)
    run = _run(jobs, op, work, settings, f"examples from {source.ref}", show_progress)
    meta = {
        "model": model,
        "backend": settings.backend.kind,
        "sampling": settings.params.as_dict(),
        "personas": str(source.ref),
    }
    results = examples_to_records(jobs, run.results, loaded, meta, cat.workspace.id_algorithm)
    if gate:
        results = _apply_gate(cat, loaded, results)
    stats = {**summarize(run.results), "resumed_jobs": run.resumed}
    stats["seconds"] = round(time.perf_counter() - start, 2)
    params = {**key, "backend_config": settings.backend.public(), "executor": settings.executor}
    parts = [(names[t], loaded[t].category, loaded[t].task_type, results[t]) for t in loaded]
    # Each version's stats are its task type's; the whole run's totals sit under "run".
    run_stats = {"run": stats, "resumed_jobs": run.resumed, "seconds": stats["seconds"]}
    refs = _commit(cat, parts, source, "synth-generate", params, run_stats)
    _mark_registered(work, refs, stats)
    removed = count_reasons(pa.concat_tables([r.removed for r in results.values()]))
    return StepReport(
        "synth generate",
        [source.ref],
        refs,
        jobs.num_rows,
        sum(r.table.num_rows for r in results.values()),
        removed,
        time.perf_counter() - start,
        {
            **stats,
            "duplicates_removed": sum(r.stats["duplicates_removed"] for r in results.values()),
            "gate_rejected": sum(
                sum(r.stats["gate"]["rejected_by_reason"].values())
                for r in results.values()
                if "gate" in r.stats
            ),
        },
    )


def _gate_embedder(cat: Catalog):
    """The workspace's embedder (settings `[embedder]`; default all-MiniLM-L6-v2), cached."""
    from filters.embedder import Embedder

    settings = cat.workspace.settings.get("embedder", {})
    return Embedder(
        settings.get("model") or None,
        cat.workspace.cache_dir,
        batch_size=int(settings.get("batch_size", 64)),
    )


def _gate_params(cat: Catalog) -> dict[str, Any]:
    from synth.gate import COPY_SIMILARITY, TASK_MARGIN

    model = cat.workspace.settings.get("embedder", {}).get("model") or "all-MiniLM-L6-v2"
    return {"model": model, "copy_similarity": COPY_SIMILARITY, "task_margin": TASK_MARGIN}


def _apply_gate(cat: Catalog, templates: dict, results: dict[str, OpResult]) -> dict:
    """Each task type's valid records through `synth.gate.QualityGate`; its removals join the
    type's removals, its counts the type's stats under "gate"."""
    from synth.gate import QualityGate

    embedder = _gate_embedder(cat)
    out = {}
    for task_type, result in results.items():
        gate = QualityGate(embedder.encode, templates[task_type], model=embedder.name)
        judged = gate(result.table)
        out[task_type] = OpResult(
            judged.table,
            pa.concat_tables([result.removed, judged.removed]),
            {**result.stats, "gate": judged.stats},
        )
    return out
