"""InfoNCE over in-batch and hard negatives, with false-negative and same-label masking.

Layout. Each query owns `slots` candidate rows: its positive in slot 0, then up to
`slots - 1` hard negatives; unused slots are marked invalid. The candidates of every query of
the global batch (all processes) are one flat matrix `cands` of `n_queries_global * slots` rows,
so query `i` (global index) has its positive at row `i * slots`. A query scores against every
valid candidate row: its own positive and hard negatives, and everyone else's positives and
hard negatives (in-batch negatives).

Masking (a masked candidate is neither a negative nor a positive):
- invalid slots;
- same-label candidates: classification/clustering records carry a label group; a candidate
  with the query's group (another example of its class) is not a negative for it;
- likely false negatives: a candidate whose cosine score is above the positive's by more than
  `margin` (Qwen3-Embedding and NV-Retriever mask these; duplicates of the positive land here).

The loss is the mean over this process's queries of cross-entropy at temperature `t`, so with
the same global batch the mean over processes equals the single-process loss.

Hooks for later techniques: `scores` is the one similarity function (Matryoshka calls the loss
on sliced embeddings and sums weighted outputs); `per_query` losses come back unreduced
(focal reweighting reweights them); `logits` of masked candidates are -inf so a distillation
KL can be taken against teacher scores over the same rows; hard-negative mixing appends
synthetic rows to `cands` before the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar: mean of per_query
    per_query: torch.Tensor  # [n] cross-entropy of each local query
    logits: torch.Tensor  # [n, N] scaled scores, masked entries at -inf
    positives: torch.Tensor  # [n] column of each query's positive
    correct: torch.Tensor  # [n] bool: the positive scored highest
    masked: torch.Tensor  # [n] number of valid candidates masked as false / same-label


def scores(queries: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of L2-normalised embeddings."""
    return queries @ cands.T


def info_nce(
    queries: torch.Tensor,
    query_groups: torch.Tensor,
    positives: torch.Tensor,
    cands: torch.Tensor,
    cand_valid: torch.Tensor,
    cand_groups: torch.Tensor,
    *,
    temperature: float,
    margin: float | None,
) -> LossOutput:
    """The contrastive loss of `queries` ([n, d]) against all `cands` ([N, d]).

    `positives` ([n]) is the candidate row of each query's positive; groups are label ids
    (-1 for records without a label).
    """
    sim = scores(queries.float(), cands.float())
    rows = torch.arange(sim.shape[0], device=sim.device)
    pos_sim = sim[rows, positives]
    is_pos = torch.zeros_like(sim, dtype=torch.bool)
    is_pos[rows, positives] = True
    same_label = (query_groups[:, None] >= 0) & (query_groups[:, None] == cand_groups[None, :])
    drop = same_label
    if margin is not None:
        drop = drop | (sim.detach() > pos_sim.detach()[:, None] + margin)
    drop = (drop | ~cand_valid[None, :]) & ~is_pos
    logits = (sim / temperature).masked_fill(drop, float("-inf"))
    per_query = F.cross_entropy(logits, positives, reduction="none")
    masked = (drop & cand_valid[None, :]).sum(dim=1)
    correct = logits.argmax(dim=1) == positives
    return LossOutput(per_query.mean(), per_query, logits, positives, correct, masked)
