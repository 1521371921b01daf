"""Synthesis benchmark: batched generation, schema constraints, valid rate per task type, the
semantic gate, openai concurrency.

1. transformers backend: generated tokens/s of `TransformersBackend.generate` (length-sorted,
   left-padded batches) beside a plain one-prompt-at-a-time `model.generate` loop on the same
   model, prompts and greedy decoding, in the same process. Target: at least 3x. The same
   batched run with the example prompts constrained to their JSON Schema (token masks) gives
   the cost of constraints. Target: at most 20% fewer tokens/s.
2. Valid rate per task type with SmolLM2-135M-Instruct: the real two-step recipe
   (persona -> task -> JSON example) with no retries, so the figure is the first-try rate;
   rejections are listed by reason. Run twice on the same 48 jobs and seed: constrained
   (the default) and `--no-constrain`. Target: first-try valid >= 95% constrained.
3. The semantic quality gate (`synth.gate`) over each run's valid examples: pass rate per task
   type and rejections by reason; and its calibration measured again on real data
   (../shared/data: STS-B en-dev, banking77 and SNIPS test) where that folder exists.
4. openai backend: requests/s against `python -m tests.synth.server` (the same model behind an
   OpenAI-compatible HTTP server that batches concurrent requests), concurrency 1 vs 8.

Generation is up to 128 new tokens, about the length of one JSON example; the prompts are the
real example prompts (~320 tokens), so short outputs would measure prefill rather than
generation. Their first ~200 tokens (system message, one-shot exchange) are the same for every
job of a template; the backend computes them once per batch (shared-prefix cache), which the
loop, a plain `model.generate` per prompt, does not. The batched run is also timed without that
cache, to show what batching alone gives.

Where the batched time goes (profiled separately, one thread, this 2-core machine): prefill
costs ~9 ms a token at any batch size, a decode step ~0.10 s at batch 1 but ~0.28 s at batch
8, because single-thread fp32 matrix products here run at 15-20 GFLOP/s whatever the batch, so
a batch-8 step is compute-bound (matmul 2/3, KV-cache concatenation 1/8, attention 1/9). With
the prefix cached, decoding is most of the batched run, so the backend has its own decoding
loop: a row leaves the batch once it ends (`model.generate` feeds it padding to the longest
row's end), and the key/value cache is preallocated and written in place instead of being
concatenated (copied) at every step.

Run: .venv/bin/python -m benchmarks.synth [--threads N] [--small]. `--small` (8 prompts, 2 personas,
8 requests) keeps the run short on a busy machine. `--threads` (default 1) is the torch
thread count for every model run: on a machine shared with other busy processes one thread is
several times faster than two (see `synth.backends.TransformersBackend`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from benchmarks.common import write_results
from synth.backends import (
    BackendConfig,
    OpenAIBackend,
    Prompt,
    SamplingParams,
    TransformersBackend,
)
from synth.generate import (
    ExampleRecipe,
    SynthOperator,
    examples_to_records,
    plan_examples,
    summarize,
)
from synth.prompts import load_task_template, task_types_available

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

PERSONAS = [
    "A home cook who plans cheap weekly meals for a family of four.",
    "A secondary-school geography teacher preparing lessons about climate and seasons.",
    "A small-business owner who keeps the shop's computers backed up and secure.",
    "A night-shift nurse who reads drug leaflets and patient guides.",
    "A first-year law student summarising court rulings on tenancy disputes.",
    "A hobby astronomer who logs observations of planets from a city balcony.",
    "A customer-support agent at an online shoe store answering return requests.",
    "A retired engineer who restores old radios and writes about it on a forum.",
]
PARSE_FAILURES = ("no_json", "truncated", "invalid_json", "not_object")
SCHEMA_FAILURES = ("missing_field", "not_text", "too_short", "too_long")


def timed_generate(
    backend: TransformersBackend, prompts: list[Prompt], params: SamplingParams
) -> tuple[int, float]:
    """(generated tokens, seconds) of one `backend.generate` call."""
    start = time.perf_counter()
    done = backend.generate(prompts, params)
    return sum(c.completion_tokens for c in done), time.perf_counter() - start


def throughput(backend: TransformersBackend, n_prompts: int, max_tokens: int) -> dict:
    """Same prompts, same greedy decoding: batched backend (with and without its shared-prefix
    cache) vs a one-at-a-time generate loop."""
    import torch

    template = load_task_template("retrieval")

    def prompts_for(constrain: bool) -> list[Prompt]:
        return [
            template.example_prompt(
                p,
                f"Given a question a person like this asks, retrieve answers ({i}).",
                {"language": "English", **template.forms["short-long"]},
                constrain,
            )
            for i, p in enumerate((PERSONAS * 4)[:n_prompts])
        ]

    prompts = prompts_for(False)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    backend.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4))  # warm up

    batched_tokens, batched_s = timed_generate(backend, prompts, params)
    constrained = prompts_for(True)
    backend.generate(constrained[:2], SamplingParams(temperature=0.0, max_tokens=4))  # compile
    constrained_tokens, constrained_s = timed_generate(backend, constrained, params)
    uncached = TransformersBackend(replace(backend.config, prefix_cache=False))  # same model
    uncached_tokens, uncached_s = timed_generate(uncached, prompts, params)

    model, tokenizer = backend.model, backend.tokenizer
    eos = tokenizer.eos_token_id
    loop_tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(backend.render(prompt), return_tensors="pt", add_special_tokens=False)
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
            new = out[0, ids.input_ids.shape[1] :].tolist()
            loop_tokens += new.index(eos) + 1 if eos in new else len(new)
    loop_s = time.perf_counter() - start
    return {
        "prompts": n_prompts,
        "max_tokens": max_tokens,
        "batch_size": backend.config.batch_size,
        "loop_tokens": loop_tokens,
        "loop_s": round(loop_s, 2),
        "loop_tok_s": round(loop_tokens / loop_s, 2),
        "batched_tokens": batched_tokens,
        "batched_s": round(batched_s, 2),
        "batched_tok_s": round(batched_tokens / batched_s, 2),
        "speedup": round((batched_tokens / batched_s) / (loop_tokens / loop_s), 2),
        "uncached_tokens": uncached_tokens,
        "uncached_s": round(uncached_s, 2),
        "uncached_tok_s": round(uncached_tokens / uncached_s, 2),
        "uncached_speedup": round((uncached_tokens / uncached_s) / (loop_tokens / loop_s), 2),
        "constrained_tokens": constrained_tokens,
        "constrained_s": round(constrained_s, 2),
        "constrained_tok_s": round(constrained_tokens / constrained_s, 2),
        "constraint_cost": round(
            1 - (constrained_tokens / constrained_s) / (batched_tokens / batched_s), 3
        ),
    }


def valid_rates(
    backend: TransformersBackend, personas: list[str], max_tokens: int, constrain: bool, gate
) -> dict:
    """First-try valid rate per task type of the real recipe, constrained or not, and the
    semantic gate's pass rate over the valid examples."""
    types = task_types_available()
    templates = {t: load_task_template(t) for t in types}
    forms = {t: list(tpl.forms) for t, tpl in templates.items() if tpl.forms}
    table = pa.table({"id": [f"p{i}" for i in range(len(personas))], "query": personas})
    jobs = plan_examples(table, types, 1, ["en"], forms)
    op = SynthOperator(
        ExampleRecipe(templates, constrain=constrain),
        SamplingParams(temperature=0.7, max_tokens=max_tokens, seed=0),
        max_retries=0,
        backend=backend,
    )
    start = time.perf_counter()
    results = op(jobs).table
    seconds = time.perf_counter() - start
    records = examples_to_records(jobs, results, templates, {})
    by_type = {}
    for task_type in types:
        mask = [t == task_type for t in jobs.column("task_type").to_pylist()]
        stats = summarize(results.filter(pa.array(mask)))
        reasons = stats["rejected_by_reason"]
        task_failed = sum(v for k, v in reasons.items() if k.startswith("task:"))
        unparsed = sum(reasons.get(f"example:{r}", 0) for r in PARSE_FAILURES)
        off_schema = sum(reasons.get(f"example:{r}", 0) for r in SCHEMA_FAILURES)
        reached = stats["jobs"] - task_failed
        judged = gate(records[task_type].table, templates[task_type])
        by_type[task_type] = {
            "jobs": stats["jobs"],
            "task_ok": reached,
            "json_parsed": reached - unparsed,
            "schema_valid": reached - unparsed - off_schema,
            "schema_valid_rate": round((reached - unparsed - off_schema) / max(reached, 1), 3),
            "valid": stats["valid"],
            "valid_rate": round(stats["valid"] / stats["jobs"], 3),
            "rejected_by_reason": reasons,
            "gate_checked": judged.stats["checked"],
            "gate_passed": judged.stats["passed"],
            "gate_rejected_by_reason": judged.stats["rejected_by_reason"],
        }
    total = summarize(results)
    examples = []
    for job, result in zip(jobs.to_pylist(), results.to_pylist(), strict=True):
        if result["ok"] and len(examples) < 6:
            out = json.loads(result["outputs"])
            examples.append({"task_type": job["task_type"], **out})
    reached = sum(r["task_ok"] for r in by_type.values())
    schema_valid = sum(r["schema_valid"] for r in by_type.values())
    checked = sum(r["gate_checked"] for r in by_type.values())
    passed = sum(r["gate_passed"] for r in by_type.values())
    return {
        "constrained": constrain,
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "retries": 0,
        "seconds": round(seconds, 1),
        "completion_tokens": total["completion_tokens"],
        "tok_s": round(total["completion_tokens"] / seconds, 2),
        "jobs": total["jobs"],
        "task_ok": reached,
        "schema_valid": schema_valid,
        "schema_valid_rate": round(schema_valid / max(reached, 1), 3),
        "valid": total["valid"],
        "valid_rate": round(total["valid"] / total["jobs"], 3),
        "gate_checked": checked,
        "gate_passed": passed,
        "gate_pass_rate": round(passed / max(checked, 1), 3),
        "by_type": by_type,
        "examples": examples,
    }


def gate_calibration(embedder) -> dict | None:
    """The measurements `synth.gate`'s defaults were chosen on, taken again (None without
    ../shared/data): STS-B en-dev pairs above a cosine, and banking77 / SNIPS test queries
    against a task description of their own dataset and one of the other."""
    import csv

    import numpy as np

    from synth.gate import COPY_SIMILARITY, TASK_MARGIN

    if not (SHARED_DATA / "stsb" / "en-dev.csv").exists():
        return None

    def read(path: str) -> list[dict]:
        with open(SHARED_DATA / path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    sts = read("stsb/en-dev.csv")
    a = embedder.encode([r["sentence1"] for r in sts])
    b = embedder.encode([r["sentence2"] for r in sts])
    cos, gold = (a * b).sum(1), np.array([float(r["score"]) for r in sts])
    copy = {}
    for t in (0.9, COPY_SIMILARITY):
        sel = cos >= t
        copy[str(t)] = {
            "pairs": int(sel.sum()),
            "gold_ge_4_5": round(float((gold[sel] >= 4.5).mean()), 3),
            "gold_ge_4": round(float((gold[sel] >= 4).mean()), 3),
        }
    bank = embedder.encode([r["text"] for r in read("banking77/test.csv")][:600])
    snips = embedder.encode([r["text"] for r in read("snips/test.csv")][:600])
    tasks = embedder.encode(
        [
            "Given a customer's message to an online bank, classify the banking problem it is "
            "about.",
            "Given a request to a voice assistant, classify its intent, such as playing music, "
            "the weather or booking a restaurant.",
        ]
    )
    # other-task minus own-task cosine of every query (its own dataset's description is right)
    diff = np.concatenate([bank @ tasks[1] - bank @ tasks[0], snips @ tasks[0] - snips @ tasks[1]])
    task = {}
    for m in (0.0, TASK_MARGIN):
        task[str(m)] = {
            "matched_rejected": round(float((diff > m).mean()), 3),
            "mismatched_rejected": round(float((-diff > m).mean()), 3),
        }
    return {"sts_pairs": len(sts), "copy": copy, "queries": len(diff), "task": task}


def openai_concurrency(threads: int, n_requests: int, max_tokens: int) -> dict:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.synth.server", "--port", "0", "--max-batch", "8"]
        + ["--threads", str(threads)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        prompts = [
            Prompt(({"role": "user", "content": f"Describe this person in a few words: {p}"},))
            for p in (PERSONAS * 4)[:n_requests]
        ]
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        out = {"requests": n_requests, "max_tokens": max_tokens, "server_max_batch": 8}
        for concurrency in (1, 8):
            backend = OpenAIBackend(
                BackendConfig(kind="openai", base_url=url, concurrency=concurrency)
            )
            backend.generate(prompts[:1], params)  # loads the model on the server
            start = time.perf_counter()
            done = backend.generate(prompts, params)
            seconds = time.perf_counter() - start
            assert not any(c.error for c in done), [c.error for c in done]
            out[f"c{concurrency}_s"] = round(seconds, 2)
            out[f"c{concurrency}_req_s"] = round(n_requests / seconds, 3)
        out["speedup"] = round(out["c8_req_s"] / out["c1_req_s"], 2)
        return out
    finally:
        proc.kill()
        proc.wait()


def _rates_table(rates: dict) -> list[str]:
    lines = [
        "| task type | jobs | task ok | JSON parsed | schema-valid | valid | valid rate "
        "| rejected by reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task_type, r in rates["by_type"].items():
        lines.append(
            f"| {task_type} | {r['jobs']} | {r['task_ok']} | {r['json_parsed']} "
            f"| {r['schema_valid']} | {r['valid']} | {r['valid_rate']:.0%} "
            f"| {json.dumps(r['rejected_by_reason'])} |"
        )
    lines.append(
        f"| **all** | {rates['jobs']} | {rates['task_ok']} | | {rates['schema_valid']} "
        f"| {rates['valid']} | **{rates['valid_rate']:.0%}** | |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="fewer prompts (busy machine)")
    args = parser.parse_args()
    small = args.small
    personas = PERSONAS[:2] if small else PERSONAS
    load_before = os.getloadavg()
    import torch

    from filters.embedder import Embedder
    from synth.gate import QualityGate

    torch.set_num_threads(args.threads)  # the baseline loop runs outside the backend
    backend = TransformersBackend(BackendConfig(batch_size=16, threads=args.threads))
    embedder = Embedder(None, None)  # all-MiniLM-L6-v2, the default embedder; no cache

    def gate(table: pa.Table, template):
        return QualityGate(embedder.encode, template, model=embedder.name)(table)

    tput = throughput(backend, 8 if small else 16, 128)
    print(json.dumps(tput))
    runs = {}
    for constrain in (True, False):
        runs[constrain] = valid_rates(backend, personas, 128, constrain, gate)
        print(json.dumps({k: v for k, v in runs[constrain].items() if k != "examples"}))
    on, off = runs[True], runs[False]
    calibration = gate_calibration(embedder)
    print(json.dumps(calibration))
    api = openai_concurrency(args.threads, 8 if small else 16, 16)
    print(json.dumps(api))

    load = [round(x, 1) for x in (*load_before, *os.getloadavg())]
    lines = [
        f"SmolLM2-135M-Instruct (Q4_1 GGUF de-quantised to fp32), CPU, torch threads "
        f"{args.threads}. Timings on a {os.cpu_count()}-core machine shared with other jobs "
        f"(load average 1/5/15 min: {load[0]}/{load[1]}/{load[2]} at the start, "
        f"{load[3]}/{load[4]}/{load[5]} at the end): compare the figures within this run, "
        f"not across runs. Size: {'small (--small)' if small else 'full'}.",
        "",
        "## transformers backend: generated tokens/s (greedy, same prompts)",
        "",
        "| | tokens | seconds | tokens/s |",
        "|---|---|---|---|",
        f"| one prompt at a time, plain `model.generate` loop (baseline) | {tput['loop_tokens']} "
        f"| {tput['loop_s']} | {tput['loop_tok_s']} |",
        f"| `TransformersBackend.generate`, batch {tput['batch_size']}, left padding, "
        f"no prefix cache | {tput['uncached_tokens']} | {tput['uncached_s']} "
        f"| {tput['uncached_tok_s']} |",
        f"| `TransformersBackend.generate`, batch {tput['batch_size']}, shared-prefix cache "
        f"| {tput['batched_tokens']} | {tput['batched_s']} | {tput['batched_tok_s']} |",
        f"| the same, constrained to the retrieval JSON Schema (llguidance token masks) "
        f"| {tput['constrained_tokens']} | {tput['constrained_s']} "
        f"| {tput['constrained_tok_s']} |",
        "",
        f"{tput['prompts']} retrieval example prompts (~320 prompt tokens each, of which the "
        "first ~200 — system message and one-shot exchange — are the same in all), up to "
        f"{tput['max_tokens']} new tokens. Speed-up: **{tput['speedup']}x** (target >= 3x); "
        f"{tput['uncached_speedup']}x without the prefix cache. Constraints cost "
        f"**{tput['constraint_cost']:.1%}** of tokens/s (target <= 20%; the constrained prompts "
        "carry the schema instead of the assistant prefix, so their outputs differ).",
        "",
        "## valid rate per task type, first try (no retries), with and without constraints",
        "",
        f"{on['jobs']} jobs = {len(personas)} personas x {len(on['by_type'])} task types, "
        f"temperature 0.7, max {on['max_tokens']} tokens, the same jobs and seed in both runs. "
        "A job is valid when the task step gave a task description and the example step gave "
        "JSON that passed the task type's schema and the template's checks (texts differ, not "
        "the one-shot example, right script). Schema-valid: parsed and passed the schema (what "
        "constraints can guarantee), of the jobs whose task step succeeded (constraints apply "
        "to the example step only).",
        "",
        f"### constrained (default): {on['valid']}/{on['jobs']} valid "
        f"({on['valid_rate']:.0%}), schema-valid {on['schema_valid']}/{on['task_ok']} "
        f"({on['schema_valid_rate']:.0%}); {on['seconds']} s, {on['tok_s']} tokens/s",
        "",
        *_rates_table(on),
        "",
        f"### `--no-constrain`: {off['valid']}/{off['jobs']} valid ({off['valid_rate']:.0%}), "
        f"schema-valid {off['schema_valid']}/{off['task_ok']} ({off['schema_valid_rate']:.0%}); "
        f"{off['seconds']} s, {off['tok_s']} tokens/s",
        "",
        *_rates_table(off),
        "",
        "## semantic quality gate over the valid examples (`synth.gate`, all-MiniLM-L6-v2)",
        "",
        "| task type | constrained: passed / checked | rejected | unconstrained: passed / "
        "checked | rejected |",
        "|---|---|---|---|---|",
    ]
    for task_type in on["by_type"]:
        a, b = on["by_type"][task_type], off["by_type"][task_type]
        lines.append(
            f"| {task_type} | {a['gate_passed']} / {a['gate_checked']} "
            f"| {json.dumps(a['gate_rejected_by_reason'])} "
            f"| {b['gate_passed']} / {b['gate_checked']} "
            f"| {json.dumps(b['gate_rejected_by_reason'])} |"
        )
    lines += [
        f"| **all** | {on['gate_passed']} / {on['gate_checked']} ({on['gate_pass_rate']:.0%}) "
        f"| | {off['gate_passed']} / {off['gate_checked']} ({off['gate_pass_rate']:.0%}) | |",
        "",
    ]
    if calibration:
        c, t = calibration["copy"], calibration["task"]
        lines += [
            "Gate calibration (the real data its defaults were chosen on, measured again): "
            f"of {calibration['sts_pairs']} STS-B en-dev pairs, those at cosine >= 0.95 "
            f"({c['0.95']['pairs']}) are {c['0.95']['gold_ge_4_5']:.0%} scored >= 4.5 and "
            f"{c['0.95']['gold_ge_4']:.0%} >= 4 (at >= 0.9, {c['0.9']['pairs']} pairs: "
            f"{c['0.9']['gold_ge_4_5']:.0%} >= 4.5), so `copy_similarity` = 0.95; of "
            f"{calibration['queries']} banking77 + SNIPS test queries against their own and "
            f"the other dataset's task description, margin 0.05 rejects "
            f"{t['0.05']['matched_rejected']:.0%} of matched and "
            f"{t['0.05']['mismatched_rejected']:.0%} of mismatched queries (margin 0: "
            f"{t['0.0']['matched_rejected']:.0%} / {t['0.0']['mismatched_rejected']:.0%}), "
            "so `task_margin` = 0.05.",
            "",
        ]
    lines += [
        "## openai backend: requests/s against `python -m tests.synth.server`",
        "",
        "| concurrency | seconds | requests/s |",
        "|---|---|---|",
        f"| 1 (baseline) | {api['c1_s']} | {api['c1_req_s']} |",
        f"| 8 | {api['c8_s']} | {api['c8_req_s']} |",
        "",
        f"{api['requests']} chat requests, up to {api['max_tokens']} tokens each; the server "
        f"batches concurrent requests (max batch {api['server_max_batch']}). Speed-up: "
        f"**{api['speedup']}x**.",
    ]
    write_results(
        "synth",
        {
            "threads": args.threads,
            "size": "small" if small else "full",
            "load_average_start_end": load,
            "throughput": tput,
            "valid_json": on,
            "valid_json_unconstrained": off,
            "gate_calibration": calibration,
            "openai": api,
        },
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()
