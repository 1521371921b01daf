"""The openai backend against real local servers (`python -m tests.synth.server`): one serving
SmolLM2 after injected faults, and model-less ones that always fail or stall."""

from __future__ import annotations

import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus.errors import KalmixError
from synth.backends import BackendConfig, OpenAIBackend, Prompt, SamplingParams
from synth.generate import (
    RESULTS,
    ExampleRecipe,
    SynthOperator,
    plan_examples,
    run_resumable,
    summarize,
)
from synth.prompts import load_task_template
from tests.synth.conftest import PERSONAS, start_server

# The server loads the model on its first request: on a busy machine that alone can outlast the
# default timeout, and a timed-out request is retried, which would change the counts below.
PATIENT = {"timeout_s": 900.0}


@pytest.fixture(scope="module")
def faulty_then_ok():
    """Each distinct request first gets HTTP 500, then 429, then a body that is not JSON."""
    proc, url = start_server(
        "--fail-first", "500,429,bad_json", "--max-batch", "8", "--threads", "1"
    )
    yield url
    proc.kill()
    proc.wait()


def _server(*args):
    proc, url = start_server(*args)
    return proc, url


def test_retries_through_5xx_429_and_malformed_bodies(faulty_then_ok):
    backend = OpenAIBackend(
        BackendConfig(
            kind="openai", base_url=faulty_then_ok, concurrency=3, backoff_s=0.01, **PATIENT
        )
    )
    assert backend.model_name == "SmolLM2-135M-Instruct.Q4_1"  # from GET /v1/models
    prompts = [
        Prompt(({"role": "user", "content": "Name a fruit."},)),
        Prompt(({"role": "user", "content": "Write a JSON object about a cat."},), '{"name": "'),
        Prompt(({"role": "user", "content": "Name a colour."},)),
    ]
    done = backend.generate(prompts, SamplingParams(temperature=0.0, max_tokens=8))
    assert [c.error for c in done] == [None, None, None]
    assert [c.requests for c in done] == [4, 4, 4]  # three faults, then the answer
    assert all(c.prompt_tokens > 10 and 0 < c.completion_tokens <= 9 for c in done)
    assert all(c.text.strip() for c in done)
    assert not done[1].text.startswith('{"name": "')  # the prefix is not echoed back


def test_exhausted_retries_are_rejections_not_losses(tmp_path):
    proc, url = _server("--fail-always", "500")
    try:
        backend = OpenAIBackend(
            BackendConfig(kind="openai", base_url=url, max_retries=2, backoff_s=0.01)
        )
        jobs = plan_examples(
            pa.table({"id": ["p1", "p2"], "query": PERSONAS[:2]}), ["sts"], 1, ["en"], {}
        )
        op = SynthOperator(
            ExampleRecipe({"sts": load_task_template("sts")}),
            SamplingParams(max_tokens=8),
            max_retries=1,
            backend=backend,
        )
        result = op(jobs)
        results, stats = result.table, result.stats
        assert stats == summarize(results) and result.removed.num_rows == 2
        assert stats["jobs"] == 2 and stats["valid"] == 0
        assert stats["rejected_by_reason"] == {"backend_error": 2}
        assert stats["requests"] == 2 * 3  # 1 try + 2 transport retries, no parse retries
        assert set(results.column("raw").to_pylist()) == {"http 500"}
        # In a resumable run a shard the backend answered not at all stops the run, unsaved.
        with pytest.raises(KalmixError, match=r"answered none of the last 2 jobs \(http 500\)"):
            run_resumable(jobs, op, tmp_path, shard_size=2)
        assert not list((tmp_path / "parts").iterdir())
        with pytest.raises(KalmixError, match="HTTP 404"):
            OpenAIBackend(
                BackendConfig(kind="openai", base_url=url + "/nope", model="m", max_retries=0)
            ).generate([Prompt(({"role": "user", "content": "hi"},))], SamplingParams())
        with pytest.raises(KalmixError, match="cannot list models"):
            OpenAIBackend(BackendConfig(kind="openai", base_url=url + "/nope"))
    finally:
        proc.kill()
        proc.wait()


def test_timeouts_are_retried_then_reported():
    proc, url = _server("--fail-always", "slow", "--slow-s", "60")
    try:
        backend = OpenAIBackend(
            BackendConfig(
                kind="openai", base_url=url, model="m", timeout_s=0.3, max_retries=1, backoff_s=0.01
            )
        )
        [done] = backend.generate([Prompt(({"role": "user", "content": "hi"},))], SamplingParams())
        assert done.error.startswith("transport: ") and "Timeout" in done.error
        assert done.requests == 2
    finally:
        proc.kill()
        proc.wait()


def test_backend_errors_are_redone_on_resume(faulty_then_ok, tmp_path):
    """A job saved as a backend error (the server was down) is generated again by a rerun."""
    backend = OpenAIBackend(
        BackendConfig(
            kind="openai", base_url=faulty_then_ok, concurrency=2, backoff_s=0.01, **PATIENT
        )
    )
    jobs = plan_examples(pa.table({"id": ["p1"], "query": PERSONAS[:1]}), ["sts"], 2, ["en"], {})
    op = SynthOperator(
        ExampleRecipe({"sts": load_task_template("sts")}),
        SamplingParams(temperature=0.0, max_tokens=8),
        max_retries=0,
        backend=backend,
    )
    ids = jobs.column("job_id").to_pylist()
    saved = [
        {
            "job_id": ids[0],
            "ok": False,
            "reason": "backend_error",
            "raw": "transport: ConnectionError",
        },
        {"job_id": ids[1], "ok": False, "reason": "example:no_json", "raw": "no braces"},
    ]
    (tmp_path / "parts").mkdir()
    pq.write_table(
        pa.Table.from_pylist(
            [{**r, "outputs": "{}", "attempts": "{}", "requests": 1} for r in saved],
            schema=RESULTS,
        ),
        tmp_path / "parts" / "part-00000-1.parquet",
    )
    run = run_resumable(jobs, op, tmp_path, shard_size=2)
    assert run.resumed == 1  # the judged job is kept; the unanswered one is redone
    first, second = run.results.to_pylist()
    assert first["reason"] != "backend_error" and first["requests"] >= 4  # after 3 faults
    assert second["reason"] == "example:no_json"
    assert len(list((tmp_path / "parts").glob("part-*.parquet"))) == 2


def test_unreachable_server_fails_at_once():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    with pytest.raises(KalmixError, match=r"cannot reach the server .*`vllm serve MODEL`"):
        OpenAIBackend(
            BackendConfig(kind="openai", base_url=f"http://127.0.0.1:{port}/v1", model="m")
        )
