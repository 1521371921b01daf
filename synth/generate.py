"""Running synthesis: recipes of LLM steps over jobs, with retries, stats and resumable shards.

A *job* is one unit of output (a passage to turn into a persona; a persona x task type x
language example). A *recipe* is the list of LLM steps a job goes through: personas take one
step (`persona`), examples two (`task`: persona -> task description, `example`: task -> JSON).
Each step runs batched over all pending jobs; an output that fails its parser is retried up to
`max_retries` times with a new seed, then the job is rejected with `step:reason` (for example
`example:truncated`). Rejections are results too: they are counted and recorded as removals.
The example step is schema-constrained unless `ExampleRecipe(constrain=False)`: its prompts
carry the task type's JSON Schema (`TaskTemplate.output_schema`), and a constrained output that
stopped at `max_tokens` is rejected as `truncated` without being parsed (a cut-off object is
valid JSON only up to its cut). An unconstrained one may still be closed after its last
complete value (`synth.validate.extract_json`).

`SynthOperator` is an operator of the contract (`corpus.operator`): a job table in, an
`OpResult` out (one result row per job, the rejected jobs as removals, the run's stats), no
catalog; it builds its backend lazily, so it can also be handed to Ray Data `map_batches` (one
backend per actor). `run_resumable` is the driver: it runs the shards here or, with `RaySynth`,
on Ray actors, writes each finished shard of results into a work folder as a Parquet file (atomic
rename), and on a rerun skips every job whose result is already there, so a killed run
continues where it stopped. Jobs the backend never answered (`backend_error`) are redone on a
rerun, and a shard with no answer at all stops the run: a dead server is not worth a retry
storm over every remaining job.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpus import storage
from corpus.errors import KalmixError
from corpus.operator import Operator, OpResult, split_by_mask
from corpus.schema import DEFAULT_ID_ALGORITHM, RECORD_SCHEMA, attach_ids
from corpus.text import normalized
from synth.backends import Backend, BackendConfig, Prompt, SamplingParams, make_backend
from synth.personas import job_id, parse_persona, rejection_removals
from synth.prompts import PersonaTemplate, TaskTemplate, language_name
from synth.validate import extract_json, script_matches, to_record_fields, validate_example

RESULTS = pa.schema(
    [
        ("job_id", pa.string()),
        ("ok", pa.bool_()),
        ("reason", pa.string()),
        ("outputs", pa.string()),  # JSON: step -> parsed value
        ("raw", pa.string()),  # last raw output (or backend error) of a rejected job
        ("attempts", pa.string()),  # JSON: step -> attempts used
        ("requests", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
    ]
)

EXAMPLE_JOBS = pa.schema(
    [
        ("job_id", pa.string()),
        ("persona_id", pa.string()),
        ("persona", pa.string()),
        ("task_type", pa.string()),
        ("form", pa.string()),
        ("language", pa.string()),
        ("target_language", pa.string()),
        ("k", pa.int64()),
    ]
)


BACKEND_ERROR = "backend_error"  # no answer after the backend's own retries: redone on resume


class Recipe(Protocol):
    steps: tuple[str, ...]

    def prompt(self, step: str, job: dict, outputs: dict) -> Prompt: ...

    def parse(self, step: str, text: str, job: dict, outputs: dict) -> tuple[Any, str | None]: ...


@dataclass(frozen=True)
class PersonaRecipe:
    template: PersonaTemplate
    steps: tuple[str, ...] = ("persona",)

    def prompt(self, step: str, job: dict, outputs: dict) -> Prompt:
        return self.template.prompt(job["passage"])

    def parse(self, step: str, text: str, job: dict, outputs: dict) -> tuple[Any, str | None]:
        return parse_persona(text, self.template)


TASK_WORDS = (5, 60)  # a task description shorter or longer than this is not one


@dataclass(frozen=True)
class ExampleRecipe:
    templates: dict[str, TaskTemplate]
    steps: tuple[str, ...] = ("task", "example")
    constrain: bool = True  # the example step's output is constrained to its JSON Schema

    def prompt(self, step: str, job: dict, outputs: dict) -> Prompt:
        template = self.templates[job["task_type"]]
        if step == "task":
            return template.brainstorm_prompt(job["persona"])
        params = {"language": language_name(job["language"])}
        if job["target_language"]:
            params["target_language"] = language_name(job["target_language"])
        if job["form"]:
            params.update(template.forms[job["form"]])
        return template.example_prompt(job["persona"], outputs["task"], params, self.constrain)

    def parse(self, step: str, text: str, job: dict, outputs: dict) -> tuple[Any, str | None]:
        template = self.templates[job["task_type"]]
        if step == "task":
            return parse_task(text, template.brainstorm["shot_task"])
        obj, reason = extract_json(text)
        if obj is None:
            return None, reason
        values, reason = validate_example(obj, template)
        languages = [job["language"], job["target_language"]]
        if values is not None and not script_matches(values, template, languages):
            return None, "wrong_language"
        return values, reason


def parse_task(text: str, shot_task: str = "") -> tuple[str | None, str | None]:
    """The first line of a brainstormed task description, if it has a sensible length and is
    not the one-shot example's task."""
    line = next((s for s in text.strip().splitlines() if s.strip()), "").strip().strip("\"'*")
    words = len(line.split())
    if words == 0:
        return None, "empty"
    if words < TASK_WORDS[0]:
        return None, "too_short"
    if words > TASK_WORDS[1]:
        return None, "too_long"
    if shot_task:
        said, shot = normalized([line, shot_task], tokens=True)
        if said == shot:
            return None, "copied_example"
    return line, None


def run_recipe(
    recipe: Recipe,
    jobs: list[dict],
    backend: Backend,
    params: SamplingParams,
    max_retries: int,
) -> list[dict]:
    """Run every step over all jobs in batches; retry failed parses; one result per job."""
    states = [
        {
            "job": job,
            "outputs": {},
            "attempts": {},
            "reason": None,
            "raw": None,
            "failed": False,
            "requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
        for job in jobs
    ]
    for step in recipe.steps:
        pending = [s for s in states if not s["failed"]]
        for attempt in range(max_retries + 1):
            if not pending:
                break
            prompts = [recipe.prompt(step, s["job"], s["outputs"]) for s in pending]
            done = backend.generate(prompts, params if attempt == 0 else params.retry(attempt))
            retry = []
            for state, prompt, completion in zip(pending, prompts, done, strict=True):
                state["requests"] += completion.requests
                state["prompt_tokens"] += completion.prompt_tokens
                state["completion_tokens"] += completion.completion_tokens
                state["attempts"][step] = attempt + 1
                if completion.error:  # the backend already retried the transport
                    state.update(reason=BACKEND_ERROR, raw=completion.error, failed=True)
                    continue
                text = prompt.prefix + completion.text
                if prompt.schema is not None and completion.finish_reason == "length":
                    # cut off mid-object: never parsed partially
                    value, reason = None, "truncated"
                else:
                    value, reason = recipe.parse(step, text, state["job"], state["outputs"])
                if reason is None:
                    state["outputs"][step] = value
                    state["reason"] = None
                else:
                    state.update(reason=f"{step}:{reason}", raw=text)
                    retry.append(state)
            pending = retry
        for state in pending:
            state["failed"] = True
    return [
        {
            "job_id": s["job"]["job_id"],
            "ok": not s["failed"],
            "reason": s["reason"] if s["failed"] else None,
            "outputs": json.dumps(s["outputs"], ensure_ascii=False),
            "raw": s["raw"] if s["failed"] else None,
            "attempts": json.dumps(s["attempts"]),
            "requests": s["requests"],
            "prompt_tokens": s["prompt_tokens"],
            "completion_tokens": s["completion_tokens"],
        }
        for s in states
    ]


class SynthOperator(Operator):
    """Job table -> `OpResult`: a result row per job (schema `RESULTS`, the ledger a resumable
    run keeps), the rejected jobs as removals, `summarize`'s stats. Give it a backend, or a
    config to build one on first use (in a Ray actor, say)."""

    def __init__(
        self,
        recipe: Recipe,
        sampling: SamplingParams,
        max_retries: int,
        backend: Backend | None = None,
        config: BackendConfig | None = None,
    ):
        if backend is None and config is None:
            raise ValueError("SynthOperator needs a backend or a backend config")
        self.recipe = recipe
        self.sampling = sampling
        self.max_retries = max_retries
        self.backend = backend
        self.config = config

    def __call__(self, jobs: pa.Table) -> OpResult:
        if self.backend is None:
            self.backend = make_backend(self.config)
        rows = run_recipe(
            self.recipe, jobs.to_pylist(), self.backend, self.sampling, self.max_retries
        )
        results = pa.Table.from_pylist(rows, schema=RESULTS)
        return OpResult(results, rejection_removals(results), summarize(results))

    def params(self) -> dict[str, Any]:
        """What decides the outputs besides the backend: the sampling and the retries."""
        return {"sampling": self.sampling.as_dict(), "max_retries": self.max_retries}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "backend": None}  # actors build their own


class _RayJobs:
    """What a Ray actor maps over job blocks: one `SynthOperator` (its own backend), giving
    back the result rows, the one table a `map_batches` batch can be."""

    def __init__(self, **operator: Any) -> None:
        self.op = SynthOperator(**operator)

    def __call__(self, jobs: pa.Table) -> pa.Table:
        return self.op(jobs).table


def work_key(params: dict[str, Any]) -> str:
    """The resume key: a hash of everything that decides a run's outputs."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ResumableRun:
    results: pa.Table
    resumed: int  # jobs whose results were already in the work folder


@dataclass(frozen=True)
class RaySynth:
    """Runs a `SynthOperator` as Ray Data `map_batches` on a pool of actors, one backend each.

    The pending jobs go to Ray as blocks of `shard_size` rows; each actor builds its backend
    once from the operator's config (loads the model, or starts a vLLM engine on its GPUs) and
    maps whole blocks, so a block is one `generate` call, the same batch the inline driver
    makes: with greedy decoding the results are identical to `--executor inline`. Result
    blocks stream back to the driver as they finish, which writes each one as a shard file, so
    a killed Ray run resumes like a local one (with either executor).

    `address` None starts or joins a local Ray; "auto" or "ray://head:10001" joins a cluster.
    `gpus_per_actor` is what each actor reserves (vLLM: its tensor-parallel size); with
    `actors` = the number of GPUs this is vLLM data-parallel across the cluster.
    """

    address: str | None = None
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0

    def map(self, op: SynthOperator, jobs: pa.Table, shard_size: int) -> Iterator[pa.Table]:
        from corpus.executor import RayExecutor

        if op.config is None:
            raise ValueError("a SynthOperator for Ray needs a backend config, not a backend")
        ray = RayExecutor(address=self.address)._ray()
        blocks = [jobs.slice(s, shard_size) for s in range(0, jobs.num_rows, shard_size)]
        ds = ray.data.from_arrow(blocks).map_batches(
            _RayJobs,
            fn_constructor_kwargs={
                "recipe": op.recipe,
                "sampling": op.sampling,
                "max_retries": op.max_retries,
                "config": op.config,
            },
            batch_size=None,  # one block, one batch: the inline driver's shard
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=max(1, min(self.actors, len(blocks)))),
            num_cpus=self.cpus_per_actor,
            num_gpus=self.gpus_per_actor or None,
        )
        yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)


def run_resumable(
    jobs: pa.Table,
    op: SynthOperator,
    work_dir: Path,
    shard_size: int,
    on_progress: Callable[[int], None] | None = None,
    ray: RaySynth | None = None,
) -> ResumableRun:
    """Run `op` over the jobs not yet done in `work_dir`, one shard file per `shard_size` jobs
    (per finished Ray block with `ray`)."""
    parts = work_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    with open(work_dir / "lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KalmixError(
                f"another process is running this same synthesis ({work_dir}); wait for it"
            ) from None
        done = [pq.read_table(p) for p in sorted(parts.glob("part-*.parquet"))]
        # A job the backend could not answer (server down, every retry spent) is redone on a
        # rerun; a job whose output was judged (valid or rejected) is not.
        done_ids = pa.array(
            [
                job
                for t in done
                for job, reason in zip(
                    t.column("job_id").to_pylist(), t.column("reason").to_pylist(), strict=True
                )
                if reason != BACKEND_ERROR
            ],
            pa.string(),
        )
        todo = jobs.filter(pc.invert(pc.is_in(jobs.column("job_id"), value_set=done_ids)))
        resumed = jobs.num_rows - todo.num_rows
        if on_progress and resumed:
            on_progress(resumed)
        shard_size = max(1, shard_size)
        if ray is not None and todo.num_rows:
            finished = ray.map(op, todo, shard_size)
        else:
            finished = (
                op(todo.slice(s, shard_size)).table for s in range(0, todo.num_rows, shard_size)
            )
        for result in finished:
            failed = result.column("reason").to_pylist()
            if result.num_rows and all(r == BACKEND_ERROR for r in failed):
                raise KalmixError(
                    f"the backend answered none of the last {result.num_rows} jobs "
                    f"({result.column('raw')[0].as_py()}): check the server, then run the same "
                    f"command again to continue ({len(done)} finished shards are kept)"
                )
            name = f"part-{len(done):05d}-{os.getpid()}.parquet"
            with storage.replaced(parts / name) as tmp:
                pq.write_table(result, tmp)
            done.append(result)
            if on_progress:
                on_progress(result.num_rows)
    results = pa.concat_tables(done) if done else RESULTS.empty_table()
    # One result per job, in job order: the newest, for a job redone after a backend error.
    latest = {jid: i for i, jid in enumerate(results.column("job_id").to_pylist())}
    order = [latest[j] for j in jobs.column("job_id").to_pylist()]
    return ResumableRun(results.take(pa.array(order, pa.int64())), resumed)


def plan_examples(
    personas: pa.Table,
    task_types: list[str],
    per_persona: int,
    languages: list[str],
    forms: dict[str, list[str]],
) -> pa.Table:
    """Jobs: each persona x task type x `per_persona`, languages and forms in rotation.

    Languages cycle fastest and forms change every len(languages) jobs, so with two languages
    and four retrieval forms every language meets every form.
    """
    for code in languages:
        language_name(code)
    rows: dict[str, list] = {name: [] for name in EXAMPLE_JOBS.names}
    ids = personas.column("id").to_pylist()
    texts = personas.column("query").to_pylist()
    for p, (pid, persona) in enumerate(zip(ids, texts, strict=True)):
        for task_type in task_types:
            type_forms = forms.get(task_type) or [""]
            for k in range(per_persona):
                n = p * per_persona + k
                language = languages[n % len(languages)]
                form = type_forms[(n // len(languages)) % len(type_forms)]
                target = _target_language(language, languages, n) if task_type == "bitext" else ""
                rows["job_id"].append(job_id("example", pid, task_type, k, language, form, target))
                rows["persona_id"].append(pid)
                rows["persona"].append(persona)
                rows["task_type"].append(task_type)
                rows["form"].append(form)
                rows["language"].append(language)
                rows["target_language"].append(target)
                rows["k"].append(k)
    return pa.table(rows, schema=EXAMPLE_JOBS)


def _target_language(language: str, languages: list[str], n: int) -> str:
    others = [code for code in languages if code != language]
    if others:
        return others[n % len(others)]
    return "en" if language != "en" else "zh"


def summarize(results: pa.Table) -> dict[str, Any]:
    """Requests, tokens, valid, rejected by reason: the run's stats."""
    rows = results.to_pylist()
    reasons = Counter(r["reason"] for r in rows if not r["ok"])
    return {
        "jobs": len(rows),
        "valid": sum(1 for r in rows if r["ok"]),
        "rejected": sum(reasons.values()),
        "rejected_by_reason": dict(reasons.most_common()),
        "requests": sum(r["requests"] for r in rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
    }


def examples_to_records(
    jobs: pa.Table,
    results: pa.Table,
    templates: dict[str, TaskTemplate],
    meta: dict[str, Any],
    id_algorithm: str = DEFAULT_ID_ALGORITHM,
) -> dict[str, OpResult]:
    """One OpResult per task type: valid examples as records (ids by the workspace's
    `id_algorithm`), minus duplicates; the rejected jobs and the duplicates are its removals;
    its stats are that task type's."""
    by_job = {r["job_id"]: r for r in results.to_pylist()}
    out: dict[str, OpResult] = {}
    for task_type, template in templates.items():
        rows = []
        jobs_of_type = jobs.filter(pc.equal(jobs.column("task_type"), task_type))
        for job in jobs_of_type.to_pylist():
            result = by_job[job["job_id"]]
            if not result["ok"]:
                continue
            outputs = json.loads(result["outputs"])
            record, extra = to_record_fields(outputs["example"], template)
            row_meta = {
                **meta,
                "persona_id": job["persona_id"],
                "job_id": job["job_id"],
                "template": template.name,
                "template_hash": template.hash,
                "attempts": json.loads(result["attempts"]),
                **({"form": job["form"]} if job["form"] else {}),
                **({"target_language": job["target_language"]} if job["target_language"] else {}),
                **extra,
            }
            rows.append(
                {
                    "task_type": template.task_type,
                    "category": template.category,
                    "instruction": outputs["task"],
                    "query": record.get("query"),
                    "positive": record.get("positive"),
                    "negatives": record["negatives"],
                    "score": None,
                    "label": record.get("label"),
                    "language": job["language"],
                    "source": "synth",
                    "meta": json.dumps(row_meta, ensure_ascii=False),
                }
            )
        table = attach_ids(pa.Table.from_pylist(rows, schema=_RECORD_INPUT), id_algorithm)
        kept, dups = _drop_duplicates(table)
        type_results = pa.Table.from_pylist(
            [by_job[j] for j in jobs_of_type.column("job_id").to_pylist()], schema=RESULTS
        )
        out[task_type] = OpResult(
            kept,
            pa.concat_tables([rejection_removals(type_results), dups]),
            {**summarize(type_results), "duplicates_removed": dups.num_rows},
        )
    return out


# The record schema before `attach_ids` adds the content id.
_RECORD_INPUT = RECORD_SCHEMA.remove(RECORD_SCHEMA.get_field_index("id"))


def _drop_duplicates(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Exact duplicates (same id) and examples whose query repeats an earlier one."""
    ids = table.column("id").to_pylist()
    queries = normalized([q or "" for q in table.column("query").to_pylist()], tokens=True)
    first: dict[str, str] = {}
    keep, reasons, details = [], [], []
    for rid, query in zip(ids, queries, strict=True):
        earlier = first.get(rid) or first.get("q:" + query)
        keep.append(earlier is None)
        reasons.append(None if earlier is None else "duplicate")
        details.append(None if earlier is None else {"dup_of": earlier})
        if earlier is None:
            first[rid] = rid
            first["q:" + query] = rid
    return split_by_mask(table, keep, reasons, details)
