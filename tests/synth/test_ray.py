"""`--executor ray`: synthesis as Ray Data map_batches on local actors, identical to inline."""

from __future__ import annotations

from dataclasses import replace

import pytest

from catalog import versions
from kalmix.synthesis import SynthSettings, run_personas
from synth.generate import RaySynth
from tests.synth.conftest import FAST, records_meta, transformers_config


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()  # frees the actors' models for the tests that follow


def test_ray_actors_give_the_inline_personas(cat, faq, local_ray):
    settings = SynthSettings(
        transformers_config(), replace(FAST, max_tokens=16), max_retries=0, shard_size=1
    )
    inline = run_personas(cat, "faq", n=2, name="p-inline", settings=settings, show_progress=False)
    on_ray = run_personas(
        cat,
        "faq",
        n=2,
        name="p-ray",
        settings=replace(settings, ray=RaySynth(actors=1)),
        show_progress=False,
    )
    assert (inline.rows_in, inline.rows_out) == (on_ray.rows_in, on_ray.rows_out)
    assert inline.rows_in == 2 and inline.removed_by_reason == on_ray.removed_by_reason
    a, b = versions.resolve(cat, "p-inline"), versions.resolve(cat, "p-ray")
    assert b.parent == a.parent and b.params["executor"] == "ray"
    # Same passages, same greedy batches: the same personas, ids and meta (model, job, passage).
    assert a.read().to_pylist() == b.read().to_pylist()
    assert all(m["model"] == "SmolLM2-135M-Instruct.Q4_1" for m in records_meta(b.read()))
    removals = "SELECT id, reason, detail FROM removals WHERE dataset = ? ORDER BY id, reason"
    assert (
        cat.query(removals, ["p-inline"]).to_pylist() == cat.query(removals, ["p-ray"]).to_pylist()
    )
    assert a.stats["synth"]["completion_tokens"] == b.stats["synth"]["completion_tokens"]
    [work] = [p for p in (cat.workspace.runs_dir / "synth").glob("personas-*") if "p-ray" in
              (p / "params.json").read_text()]  # fmt: skip
    assert len(list((work / "parts").glob("part-*.parquet"))) == 2  # one shard per Ray block
