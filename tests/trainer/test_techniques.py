"""KaLM-V2 loss and data techniques on small tensors and tables: each does what it claims."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from corpus.errors import KalmixError
from tests.conftest import RECORD_DEFAULTS, record_table
from trainer.config import TrainConfig
from trainer.data import build_sources
from trainer.loss import Mixing, distillation, info_nce, mix_negatives, truncate


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def no_groups(n):
    return torch.full((n,), -1)


def two_queries():
    """Query 0 is easy (its positive is close), query 1 hard (a negative is as close)."""
    q = unit([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    c = unit([1.0, 0.1, 0.0], [0.0, 0.2, 1.0], [0.1, 1.0, 0.3], [0.2, 1.0, 0.1])
    return q, torch.tensor([0, 2]), c, torch.ones(4, dtype=torch.bool)


def loss(q, positives, c, valid, **kw):
    kw.setdefault("temperature", 0.1)
    kw.setdefault("margin", None)
    return info_nce(q, no_groups(len(q)), positives, c, valid, no_groups(len(c)), **kw)


def test_focal_reweighting_is_one_minus_p_pos_to_the_gamma():
    q, pos, c, valid = two_queries()
    plain, focal = loss(q, pos, c, valid), loss(q, pos, c, valid, focal_gamma=2.0)
    p_pos = torch.exp(-plain.per_query)
    assert torch.allclose(focal.per_query, (1 - p_pos) ** 2 * plain.per_query, atol=1e-6)
    # The hard query's share of the loss grows: hard samples count more.
    share = lambda out: (out.per_query[1] / out.per_query.sum()).item()  # noqa: E731
    assert share(focal) > share(plain) > 0.5
    assert loss(q, pos, c, valid, focal_gamma=0.0).loss == plain.loss


def mixing(count, *, share, low, high, hardest=2, seed=0):
    return Mixing(count, hardest, share, low, high, torch.Generator().manual_seed(seed))


def test_mixed_negatives_interpolate_the_hardest_negatives_and_the_positive():
    q = unit([1.0, 0.0, 0.0])
    # positive, two hard negatives, one easy negative, one invalid slot
    c = unit([1.0, 0.3, 0.0], [0.8, 0.6, 0.0], [0.8, 0.0, 0.6], [-1.0, 0.0, 0.2], [1.0, 0.0, 0.0])
    valid = torch.tensor([True, True, True, True, False])
    sim, pos = q @ c.T, torch.tensor([0])
    excluded = ~valid[None, :] | (torch.arange(5) == 0)[None, :]
    hard = [c[1], c[2]]

    with_pos, ok = mix_negatives(q, c, sim, excluded, pos, mixing(6, share=1.0, low=0.3, high=0.3))
    allowed = [F.normalize(0.3 * c[0] + 0.7 * h, dim=0) for h in hard]
    assert ok.all() and with_pos.shape == (1, 6, 3)
    for s in with_pos[0]:
        assert any(torch.allclose(s, a, atol=1e-5) for a in allowed)

    between, _ = mix_negatives(q, c, sim, excluded, pos, mixing(8, share=0.0, low=0.5, high=0.5))
    allowed = [F.normalize(0.5 * a + 0.5 * b, dim=0) for a in hard for b in hard]
    for s in between[0]:  # never the easy negative nor the invalid slot
        assert any(torch.allclose(s, a, atol=1e-5) for a in allowed)
    assert torch.allclose(between.norm(dim=-1), torch.ones(1, 8))

    plain = loss(q, pos, c, valid)
    mixed = loss(q, pos, c, valid, mixing=mixing(4, share=0.5, low=0.0, high=0.5))
    assert mixed.logits.shape == (1, 5 + 4) and mixed.loss > plain.loss  # harder candidate set
    again = loss(q, pos, c, valid, mixing=mixing(4, share=0.5, low=0.0, high=0.5))
    assert torch.equal(mixed.logits, again.logits)  # seeded: resume-safe
    synthetic, _ = mix_negatives(
        q, c.requires_grad_(True), sim, excluded, pos, mixing(2, share=0.5, low=0.0, high=0.5)
    )
    assert not synthetic.requires_grad  # detached, as in MoCHi


def test_a_query_without_negatives_gets_no_synthetic_candidate():
    q = unit([1.0, 0.0])
    c = unit([1.0, 0.1], [0.0, 1.0])
    valid = torch.tensor([True, False])
    out = loss(q, torch.tensor([0]), c, valid, mixing=mixing(3, share=0.5, low=0.0, high=0.5))
    assert torch.isinf(out.logits[0, 2:]).all() and out.loss.item() == pytest.approx(0.0)


def test_distillation_pulls_student_scores_to_the_teacher_distribution():
    torch.manual_seed(0)
    slots = 3
    teacher = torch.tensor([[0.9, 0.2, 0.6], [0.8, 0.7, float("nan")]])
    q = torch.nn.Parameter(torch.randn(2, 8))
    c = torch.nn.Parameter(torch.randn(2 * slots, 8))
    positives = torch.tensor([0, slots])

    def kl():
        return distillation(
            F.normalize(q, dim=-1), F.normalize(c, dim=-1), positives, slots, teacher, 0.05
        )

    start = kl().item()
    optimizer = torch.optim.Adam([q, c], lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        kl().backward()
        optimizer.step()
    assert kl().item() < 0.05 * start
    student = F.normalize(q, dim=-1)[0] @ F.normalize(c, dim=-1)[:slots].T
    assert student.argsort().tolist() == teacher[0].argsort().tolist()  # the teacher's ranking

    # No KL when the student already scores like the teacher, none for rows without scores.
    qn, cn = F.normalize(q.detach(), dim=-1), F.normalize(c.detach(), dim=-1)
    own = torch.stack([qn[i] @ cn[i * slots : (i + 1) * slots].T for i in range(2)])
    assert distillation(qn, cn, positives, slots, own, 0.05).item() == pytest.approx(0, abs=1e-6)
    none = torch.full((2, slots), float("nan"))
    assert distillation(qn, cn, positives, slots, none, 0.05).item() == 0.0


def test_matryoshka_truncation_renormalises_the_leading_dims():
    x = unit([3.0, 4.0, 12.0])
    assert torch.allclose(truncate(x, 2), torch.tensor([[0.6, 0.8]]))
    assert truncate(x, None) is x and truncate(x, 3) is x
    cfg = TrainConfig(matryoshka_dims=(384, 128), matryoshka_weights=(1.0, 0.3))
    assert cfg.dim_weights == [(384, 1.0), (128, 0.3)]
    assert TrainConfig().dim_weights == [(None, 1.0)]
    for bad in ({"matryoshka_dims": (64, 128)}, {"matryoshka_dims": (64,), "matryoshka_weights": (1, 2)}):  # fmt: skip
        with pytest.raises(KalmixError, match="matryoshka"):
            TrainConfig(**bad).validate()


def table(rows: list[dict]) -> pa.Table:
    given = {k for r in rows for k in r} - {"query", "negatives"}
    return record_table(
        [r["query"] for r in rows],
        negatives=[r.get("negatives", []) for r in rows],
        **{k: [r.get(k, RECORD_DEFAULTS[k]) for r in rows] for k in given},
    )


def test_teacher_scores_follow_the_negatives_each_example_is_served_with():
    negs = ["neg a", "neg b", "pos", "neg a", "neg c", "neg d"]  # a duplicate and the positive
    scores = [0.9, 0.5, 0.4, 0.9, 0.5, 0.3, 0.2]  # [positive] + negatives, as mining stores them
    rows = [
        {"task_type": "retrieval", "query": "q1", "positive": "pos", "negatives": negs,
         "meta": json.dumps({"teacher_scores": scores, "teacher": "big"})},
        {"task_type": "retrieval", "query": "q2", "positive": "p2", "negatives": ["x", "y"],
         "meta": json.dumps({"teacher_scores": [0.9, 0.1]})},  # stale: negatives changed
    ]  # fmt: skip
    by_text = {"neg a": 0.5, "neg b": 0.4, "neg c": 0.3, "neg d": 0.2}
    cfg = TrainConfig(distill_weight=1.0, negatives_per_query=2)
    (source,), _ = build_sources([("d", table(rows))], cfg)
    for seed in range(5):
        e = source.example(0, np.random.default_rng(seed), 2)
        assert len(e.negatives) == 2 and e.teacher == (0.9, *(by_text[t] for t in e.negatives))
    assert source.example(1, np.random.default_rng(0), 2).teacher is None
    (plain,), _ = build_sources([("d", table(rows))], TrainConfig(negatives_per_query=2))
    assert plain.example(0, np.random.default_rng(0), 2).teacher is None  # off: meta not read


def test_example_based_labelling_switch():
    rows = [
        {"task_type": "classification", "query": f"text {i}", "label": f"L{i % 3}"}
        for i in range(12)
    ]
    (source,), report = build_sources([("c", table(rows))], TrainConfig())
    rng = np.random.default_rng(0)
    labels = {f"text {i}": f"L{i % 3}" for i in range(12)}
    for row in source.rows:
        e = source.example(int(row), rng, 2)
        own = labels[f"text {row}"]
        assert e.positive != f"text {row}" and labels[e.positive] == own  # another example
        assert e.negatives and all(labels[n] != own for n in e.negatives)  # other classes only
        assert e.group not in e.negative_groups
    sources, report = build_sources([("c", table(rows))], TrainConfig(labelled_examples=False))
    assert sources == [] and report.dropped == {"labelled data off (labelled_examples = false)": 12}
