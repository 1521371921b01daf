import numpy as np
import pytest
import torch

from corpus.errors import KalmixError
from filters.topk import count_above, topk


def _unit(rng: np.random.Generator, n: int, d: int = 24) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(q: np.ndarray, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    full = q @ c.T
    idx = np.argsort(-full, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(full, idx, axis=1), idx


@pytest.mark.parametrize("budget_mb", [0, 1])  # default blocks, and many tiny blocks
def test_blocked_topk_equals_brute_force(budget_mb):
    rng = np.random.default_rng(0)
    q, c = _unit(rng, 700), _unit(rng, 5000)
    scores, idx = _brute(q, c, 17)
    got = topk(q, c, 17, budget_mb=budget_mb, device="cpu")
    np.testing.assert_array_equal(got.indices, idx)
    np.testing.assert_allclose(got.scores, scores, atol=1e-5)


def test_exclude_and_k_larger_than_corpus():
    rng = np.random.default_rng(1)
    q, c = _unit(rng, 50), _unit(rng, 300)
    _, idx = _brute(q, c, 12)
    got = topk(q, c, 10, exclude=idx[:, :2], budget_mb=1, device="cpu")
    np.testing.assert_array_equal(got.indices, idx[:, 2:12])

    small = topk(q, c[:4], 6, exclude=np.full((50, 1), 0))
    assert (small.indices[:, :3] >= 1).all() and (small.indices[:, 3:] == -1).all()
    assert np.isneginf(small.scores[:, 3:]).all()
    with pytest.raises(KalmixError, match="same embedding size"):
        topk(q, c[:, :5], 3)


def test_count_above_is_an_exact_rank():
    rng = np.random.default_rng(2)
    q, c = _unit(rng, 400), _unit(rng, 2000)
    full = q @ c.T
    order = np.argsort(-full, axis=1)
    target = order[np.arange(400), rng.integers(0, 2000, 400)]  # any corpus row per query
    counts = count_above(
        q, c, full[np.arange(400), target], exclude=target[:, None], budget_mb=1, device="cpu"
    )
    rank_of_target = np.argmax(order == target[:, None], axis=1)
    np.testing.assert_array_equal(counts, rank_of_target)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_matches_cpu():
    rng = np.random.default_rng(3)
    q, c = _unit(rng, 3000), _unit(rng, 20000)
    cpu = topk(q, c, 10, device="cpu")
    gpu = topk(q, c, 10, device="cuda")
    assert (cpu.indices == gpu.indices).mean() > 0.999
    np.testing.assert_allclose(cpu.scores, gpu.scores, atol=1e-4)


def test_faiss_backend_is_close_to_exact():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    q, c = _unit(rng, 200), _unit(rng, 2000)
    exact = topk(q, c, 10)
    approx = topk(q, c, 10, backend="faiss", exclude=exact.indices[:, :1])
    recall = np.mean(
        [
            len(set(a) & set(b)) / 9
            for a, b in zip(approx.indices, exact.indices[:, 1:], strict=True)
        ]
    )
    assert recall >= 0.9
    assert not (approx.indices == exact.indices[:, :1]).any()  # excluded rows never come back
