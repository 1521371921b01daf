"""Synthesis benchmark: batched generation, valid-JSON rate per task type, openai concurrency.

1. transformers backend: generated tokens/s of `TransformersBackend.generate` (length-sorted,
   left-padded batches) beside a plain one-prompt-at-a-time `model.generate` loop on the same
   model, prompts and greedy decoding, in the same process. Target: at least 3x.
2. Valid-JSON rate per task type with SmolLM2-135M-Instruct: the real two-step recipe
   (persona -> task -> JSON example) with no retries, so the figure is the first-try rate;
   rejections are listed by reason.
3. openai backend: requests/s against `python -m tests.synth.server` (the same model behind an
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
from synth.generate import ExampleRecipe, SynthOperator, plan_examples, summarize
from synth.prompts import load_task_template, task_types_available

ROOT = Path(__file__).resolve().parents[1]

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
    prompts = [
        template.example_prompt(
            p,
            f"Given a question a person like this asks, retrieve answers ({i}).",
            {"language": "English", **template.forms["short-long"]},
        )
        for i, p in enumerate((PERSONAS * 4)[:n_prompts])
    ]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    backend.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4))  # warm up

    batched_tokens, batched_s = timed_generate(backend, prompts, params)
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
    }


def valid_rates(backend: TransformersBackend, personas: list[str], max_tokens: int) -> dict:
    types = task_types_available()
    templates = {t: load_task_template(t) for t in types}
    forms = {t: list(tpl.forms) for t, tpl in templates.items() if tpl.forms}
    table = pa.table({"id": [f"p{i}" for i in range(len(personas))], "query": personas})
    jobs = plan_examples(table, types, 1, ["en"], forms)
    op = SynthOperator(
        ExampleRecipe(templates),
        SamplingParams(temperature=0.7, max_tokens=max_tokens, seed=0),
        max_retries=0,
        backend=backend,
    )
    start = time.perf_counter()
    results = op(jobs).table
    seconds = time.perf_counter() - start
    by_type = {}
    for task_type in types:
        mask = [t == task_type for t in jobs.column("task_type").to_pylist()]
        stats = summarize(results.filter(pa.array(mask)))
        reasons = stats["rejected_by_reason"]
        task_failed = sum(v for k, v in reasons.items() if k.startswith("task:"))
        unparsed = sum(reasons.get(f"example:{r}", 0) for r in PARSE_FAILURES)
        reached = stats["jobs"] - task_failed
        by_type[task_type] = {
            "jobs": stats["jobs"],
            "task_ok": reached,
            "json_parsed": reached - unparsed,
            "valid": stats["valid"],
            "valid_rate": round(stats["valid"] / stats["jobs"], 3),
            "rejected_by_reason": reasons,
        }
    total = summarize(results)
    examples = []
    for job, result in zip(jobs.to_pylist(), results.to_pylist(), strict=True):
        if result["ok"] and len(examples) < 6:
            out = json.loads(result["outputs"])
            examples.append({"task_type": job["task_type"], **out})
    return {
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "retries": 0,
        "seconds": round(seconds, 1),
        "jobs": total["jobs"],
        "valid": total["valid"],
        "valid_rate": round(total["valid"] / total["jobs"], 3),
        "by_type": by_type,
        "examples": examples,
    }


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="fewer prompts (busy machine)")
    args = parser.parse_args()
    small = args.small
    personas = PERSONAS[:2] if small else PERSONAS
    load_before = os.getloadavg()
    import torch

    torch.set_num_threads(args.threads)  # the baseline loop runs outside the backend
    backend = TransformersBackend(BackendConfig(batch_size=16, threads=args.threads))
    tput = throughput(backend, 8 if small else 16, 128)
    print(json.dumps(tput))
    rates = valid_rates(backend, personas, 128)
    print(json.dumps({k: v for k, v in rates.items() if k != "examples"}))
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
        "",
        f"{tput['prompts']} retrieval example prompts (~320 prompt tokens each, of which the "
        "first ~200 — system message and one-shot exchange — are the same in all), up to "
        f"{tput['max_tokens']} new tokens. Speed-up: **{tput['speedup']}x** (target >= 3x); "
        f"{tput['uncached_speedup']}x without the prefix cache.",
        "",
        "## valid-JSON rate per task type, first try (no retries)",
        "",
        f"{rates['jobs']} jobs = {len(personas)} personas x "
        f"{len(rates['by_type'])} task types, temperature 0.7, max {rates['max_tokens']} tokens, "
        f"{rates['seconds']} s. A job is valid when the task step gave a task description and "
        "the example step gave JSON that passed the task type's schema.",
        "",
        "| task type | jobs | task ok | JSON parsed | valid | valid rate | rejected by reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for task_type, r in rates["by_type"].items():
        lines.append(
            f"| {task_type} | {r['jobs']} | {r['task_ok']} | {r['json_parsed']} | {r['valid']} "
            f"| {r['valid_rate']:.0%} | {json.dumps(r['rejected_by_reason'])} |"
        )
    lines += [
        f"| **all** | {rates['jobs']} | | | {rates['valid']} | {rates['valid_rate']:.0%} | |",
        "",
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
            "valid_json": rates,
            "openai": api,
        },
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()
