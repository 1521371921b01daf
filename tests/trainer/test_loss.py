"""InfoNCE against a hand computation, and each kind of masking."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainer.loss import info_nce


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_matches_a_hand_computed_cross_entropy():
    # 2 queries, 2 slots each (positive, hard negative); slot 3 is unused.
    q = unit([1.0, 0.0], [0.0, 1.0])
    c = unit([1.0, 0.1], [0.5, 0.5], [0.1, 1.0], [1.0, 1.0])
    valid = torch.tensor([True, True, True, False])
    out = info_nce(
        q,
        torch.tensor([-1, -1]),
        torch.tensor([0, 2]),
        c,
        valid,
        torch.full((4,), -1),
        temperature=0.2,
        margin=None,
    )
    sim = q @ c.T
    expected = []
    for i, pos in enumerate((0, 2)):
        logits = sim[i, :3] / 0.2
        expected.append(-(logits[pos] - torch.logsumexp(logits, 0)))
    assert torch.allclose(out.per_query, torch.stack(expected), atol=1e-5)
    assert math.isclose(out.loss.item(), sum(e.item() for e in expected) / 2, rel_tol=1e-4)
    assert out.logits[0, 3] == float("-inf") and out.correct.all()
    assert out.masked.tolist() == [0, 0]


def test_false_negatives_above_the_margin_are_masked():
    q = unit([1.0, 0.0])
    # positive at cos 0.8; candidate 1 at cos ~0.99 (above by more than 0.1), candidate 2 below
    c = unit([0.8, 0.6], [1.0, 0.1], [0.0, 1.0])
    args = (q, torch.tensor([-1]), torch.tensor([0]), c, torch.ones(3, dtype=torch.bool))
    masked = info_nce(*args, torch.full((3,), -1), temperature=0.1, margin=0.1)
    plain = info_nce(*args, torch.full((3,), -1), temperature=0.1, margin=None)
    assert masked.logits[0, 1] == float("-inf") and masked.masked.item() == 1
    assert plain.logits[0, 1] > plain.logits[0, 0]
    assert masked.loss < plain.loss


def test_same_label_candidates_are_not_negatives_but_the_positive_stays():
    q = unit([1.0, 0.0], [0.0, 1.0])
    c = unit([0.9, 0.1], [0.8, 0.3], [0.1, 0.9], [0.3, 0.8])
    # Query 0 (label 7) owns rows 0-1, query 1 (label 3) rows 2-3. Row 1 is another label-7
    # example, so not a negative of query 0; row 3 likewise for query 1. Positives stay.
    groups = torch.tensor([7, 7, 3, 3])
    out = info_nce(
        q,
        torch.tensor([7, 3]),
        torch.tensor([0, 2]),
        c,
        torch.ones(4, dtype=torch.bool),
        groups,
        temperature=0.05,
        margin=None,
    )
    finite = torch.isfinite(out.logits)
    assert finite.tolist() == [[True, False, True, True], [True, True, True, False]]
    assert out.masked.tolist() == [1, 1]


def test_gradients_reach_queries_and_candidates():
    q = unit([1.0, 0.2], [0.1, 1.0]).requires_grad_(True)
    c = unit([1.0, 0.0], [0.0, 1.0]).requires_grad_(True)
    out = info_nce(
        q,
        torch.tensor([-1, -1]),
        torch.tensor([0, 1]),
        c,
        torch.ones(2, dtype=torch.bool),
        torch.full((2,), -1),
        temperature=0.02,
        margin=0.1,
    )
    out.loss.backward()
    assert q.grad.abs().sum() > 0 and c.grad.abs().sum() > 0
