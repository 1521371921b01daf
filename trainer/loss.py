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

KaLM-V2 techniques (each a `TrainConfig` switch, composed by `objective`):
- focal reweighting: each query's cross-entropy is multiplied by `(1 - p_pos) ** gamma`, with
  `p_pos` the softmax probability of its positive, so queries the model already gets right
  count less and hard ones more (the weight is part of the graph, as in focal loss);
- online hard-negative mixing (MoCHi, Kalantidis et al. 2020): per query, synthetic negatives
  `normalize(a * x + (1 - a) * n)` with `n` one of its `hardest` scoring unmasked negatives and
  `x` another of them or, for a `positive_share` of them, its positive; `a` is drawn from
  `mix_range` (keep it below 0.5 so a positive mix stays nearer the negative). They are
  detached, like MoCHi's, and added as extra columns for that query only;
- contrastive distillation (KaLM-Embedding-V2.5): KL(teacher || student) between the softmax
  of the teacher's scores over a query's own candidates (positive + hard negatives, as stored
  by `kalmix mine --teacher`) and the student's cosine scores over the same candidates, both at
  `distill_temperature`, averaged over the local queries (0 for queries without scores);
- Matryoshka: the whole contrastive loss is summed over embeddings truncated to each of
  `matryoshka_dims` and re-normalised, with its weight.
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


@dataclass(frozen=True)
class Mixing:
    """Online hard-negative mixing settings; `generator` makes the draws reproducible."""

    count: int
    hardest: int
    positive_share: float
    low: float
    high: float
    generator: torch.Generator


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
    focal_gamma: float = 0.0,
    mixing: Mixing | None = None,
) -> LossOutput:
    """The contrastive loss of `queries` ([n, d]) against all `cands` ([N, d]).

    `positives` ([n]) is the candidate row of each query's positive; groups are label ids
    (-1 for records without a label). Synthetic negatives from `mixing` come after the N
    candidate columns of `logits`.
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
    if mixing is not None and mixing.count:
        synthetic, ok = mix_negatives(queries, cands, sim, drop | is_pos, positives, mixing)
        extra = torch.einsum("nd,nmd->nm", queries.float(), synthetic) / temperature
        extra = extra.masked_fill(~ok[:, None], float("-inf"))
        logits = torch.cat([logits, extra], dim=1)
    per_query = F.cross_entropy(logits, positives, reduction="none")
    if focal_gamma:
        p_pos = torch.exp(-per_query)
        per_query = (1 - p_pos) ** focal_gamma * per_query
    masked = (drop & cand_valid[None, :]).sum(dim=1)
    correct = logits.argmax(dim=1) == positives
    return LossOutput(per_query.mean(), per_query, logits, positives, correct, masked)


def mix_negatives(
    queries: torch.Tensor,
    cands: torch.Tensor,
    sim: torch.Tensor,
    excluded: torch.Tensor,
    positives: torch.Tensor,
    mixing: Mixing,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, count, d] detached synthetic negatives from each query's hardest negatives, and
    [n] whether the query had any negative to mix (rows without are to be ignored)."""
    n, device = queries.shape[0], queries.device
    hardest = min(mixing.hardest, cands.shape[0])
    top_sim, top = sim.detach().masked_fill(excluded, float("-inf")).topk(hardest, dim=1)
    usable = torch.isfinite(top_sim)  # a query may have fewer unmasked negatives than `hardest`
    g = mixing.generator

    def pick() -> torch.Tensor:  # [n, count] a random usable hard negative per query
        weights = usable.float() + 1e-12
        col = torch.multinomial(weights.cpu(), mixing.count, replacement=True, generator=g)
        return top.gather(1, col.to(device))

    first, second = pick(), pick()
    from_positive = torch.rand(n, mixing.count, generator=g) < mixing.positive_share
    first = torch.where(from_positive.to(device), positives[:, None].expand_as(first), first)
    a = mixing.low + (mixing.high - mixing.low) * torch.rand(n, mixing.count, 1, generator=g)
    c = cands.detach().float()
    mixed = a.to(device) * c[first] + (1 - a.to(device)) * c[second]
    return F.normalize(mixed, dim=-1).detach(), usable.any(dim=1)


def distillation(
    queries: torch.Tensor,
    cands: torch.Tensor,
    positives: torch.Tensor,
    slots: int,
    teacher: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Mean KL(teacher || student) over a query's own candidate slots (0 without scores).

    `teacher` is [n, slots]: the teacher's scores of each local query's positive and hard
    negatives in slot order, NaN where there is none.
    """
    own = positives[:, None] + torch.arange(slots, device=positives.device)[None, :]
    student = torch.einsum("nd,nsd->ns", queries.float(), cands.float()[own]) / temperature
    has = ~torch.isnan(teacher)
    rows = has[:, 0] & (has.sum(dim=1) >= 2)  # a positive and at least one negative
    if not rows.any():
        return student.sum() * 0.0
    t = (teacher / temperature).masked_fill(~has, float("-inf"))
    s = student.masked_fill(~has, float("-inf"))
    p_t = F.softmax(t[rows], dim=1)
    log_p_t = F.log_softmax(t[rows], dim=1).masked_fill(~has[rows], 0.0)
    log_p_s = F.log_softmax(s[rows], dim=1).masked_fill(~has[rows], 0.0)
    kl = (p_t * (log_p_t - log_p_s)).sum(dim=1)
    return kl.sum() / queries.shape[0]


def truncate(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    """The first `dim` coordinates, re-normalised (Matryoshka); the whole vector for None."""
    return x if dim is None or dim >= x.shape[1] else F.normalize(x[:, :dim], dim=-1)
