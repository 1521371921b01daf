"""Batching rules on in-memory record tables: homogeneity, duplicates, labels, resume, errors."""

from __future__ import annotations

import pytest

from catalog.mixtures import ManifestEntry
from corpus.errors import KalmixError
from tests.conftest import record_table
from trainer.config import TrainConfig
from trainer.data import BatchSampler, build_sources, mixture_prompts

CFG = TrainConfig(instruction_template="Instruct: {instruction}\nQuery: ")


def records(
    task_type,
    queries,
    positives=None,
    *,
    negatives=None,
    labels=None,
    scores=None,
    instruction=None,
):
    return record_table(
        queries,
        task_type=task_type,
        positive=positives,
        negatives=negatives,
        label=labels,
        score=scores,
        instruction=instruction,
    )


def sampler(tables, batch_size=8, share=0.75, k=2, seed=1):
    sources, report = build_sources(tables, CFG)
    return BatchSampler(
        sources,
        batch_size=batch_size,
        homogeneous_share=share,
        negatives_per_query=k,
        seed=seed,
    ), report


def qa(name, n, shared_answers=1):
    """n questions; every `shared_answers` consecutive questions share one answer."""
    return (
        name,
        records(
            "retrieval",
            [f"{name} question {i}" for i in range(n)],
            [f"{name} answer {i // shared_answers}" for i in range(n)],
            negatives=[[f"{name} answer {(i // shared_answers) + 1}", ""] for i in range(n)],
            instruction="Find the answer",
        ),
    )


def test_batches_are_semi_homogeneous_and_instructed_on_the_query_side():
    s, _ = sampler([qa("a", 200), qa("b", 200), qa("c", 200)], batch_size=8, share=0.75)
    for _ in range(20):
        batch = s.next_batch()
        counts = [sum(e.dataset == d for e in batch) for d in range(3)]
        assert max(counts) >= 6  # 0.75 of 8 from one dataset
        for e in batch:
            assert e.query.startswith("Instruct: Find the answer\nQuery: ")
            assert not e.positive.startswith("Instruct") and "" not in e.negatives
            assert len(e.negatives) == 1  # the empty negative is not a text


def test_no_text_twice_in_a_batch_and_deferred_rows_are_not_lost():
    # Pairs of questions share an answer: they must never meet in one batch.
    s, report = sampler([qa("a", 64, shared_answers=2)], batch_size=8, share=1.0, k=1)
    assert report.rows_used == 64
    seen = []
    for _ in range(s.steps_per_epoch - 1):
        batch = s.next_batch()
        texts = [t for e in batch for t in (e.positive, *e.negatives)]
        assert len(texts) == len(set(texts))
        assert len({e.query for e in batch}) == len(batch)
        seen += [e.query for e in batch]
    assert len(set(seen)) == len(seen)  # nothing served twice within the epoch


def test_labels_give_in_label_positives_and_other_label_negatives():
    labels = ["refund"] * 5 + ["delivery"] * 5 + ["lonely"]
    texts = [f"message {i} about {label}" for i, label in enumerate(labels)]
    table = records("classification", texts, labels=labels, instruction="Classify the intent")
    s, report = sampler([("intents", table)], batch_size=4, share=1.0, k=3)
    assert report.dropped == {"only example of its label": 1} and report.rows_used == 10
    plain = dict(zip(texts, labels, strict=True))
    label_of = {f"Instruct: Classify the intent\nQuery: {t}": lab for t, lab in plain.items()}
    for _ in range(5):
        for e in s.next_batch():
            label = label_of[e.query]
            assert plain[e.positive] == label and e.positive not in e.query
            assert e.negatives and all(plain[n] != label for n in e.negatives)
            assert e.group >= 0 and e.group not in e.negative_groups


def test_pairs_without_a_positive_or_with_low_sts_scores_are_dropped():
    sts = records("sts", ["a", "b", "c"], ["a2", "b2", "c2"], scores=[4.5, 2.0, None])
    qa_ = records("retrieval", ["q1", "q2", "  "], ["p1", None, "p3"])
    _, report = sampler([("sts", sts), ("qa", qa_)], batch_size=2)
    assert report.rows_used == 3
    assert report.dropped == {"sts score too low": 1, "no positive": 1, "no query": 1}


def test_sampler_state_reproduces_the_following_batches_across_epochs():
    tables = [qa("a", 40, shared_answers=2), qa("b", 25)]
    first, _ = sampler(tables, batch_size=8)
    for _ in range(6):
        first.next_batch()
    state = first.state_dict()
    expected = [first.next_batch() for _ in range(10)]  # crosses into the next epoch
    assert first.epoch >= 1
    second, _ = sampler(tables, batch_size=8)
    second.load_state_dict(state)
    assert [second.next_batch() for _ in range(10)] == expected


def test_batch_larger_than_the_data_is_an_error():
    with pytest.raises(KalmixError, match="batch size 64 is larger than the 20 usable"):
        sampler([qa("a", 20)], batch_size=64)
    dupes = records("retrieval", ["same question"] * 10, [f"p{i}" for i in range(10)])
    s, _ = sampler([("d", dupes)], batch_size=2)
    with pytest.raises(KalmixError, match="duplicate texts"):
        s.next_batch()


def test_prompts_for_export_use_mteb_keys():
    def entry(dataset, task_type, instruction, rows):
        return ManifestEntry(dataset, 1, task_type, dataset, instruction, rows, rows, 1.0)

    prompts = mixture_prompts(
        [
            entry("faq", "retrieval", "Retrieve the answer", 100),
            entry("web", "retrieval", "Retrieve a web page", 50),
            entry("intents", "classification", "Classify the intent", 30),
        ],
        CFG.instruction_template,
    )
    assert prompts == {
        "query": "Instruct: Retrieve the answer\nQuery: ",
        "document": "",
        "Retrieval-query": "Instruct: Retrieve the answer\nQuery: ",
        "Retrieval-document": "",
        "Classification": "Instruct: Classify the intent\nQuery: ",
    }
