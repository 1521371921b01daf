"""One optimizer step: its gradients (GradCache contrastive steps, data parallel over
processes), the clipping, and the optimizer with its learning-rate schedule.

Every process builds the same global batch (`trainer/data.py`) and encodes its slice of queries
and their candidates (`trainer/train.py` runs the loop around this; `trainer/distributed.py`
holds the collectives).

A step (GradCache, Gao et al. 2021), so the contrastive batch never shrinks to fit memory:
1. embed every text of the local batch without gradients, `chunk_size` texts at a time
   (texts sorted by length first, so chunks carry little padding);
2. gather the candidate embeddings of all processes (an all-gather whose backward all-reduces
   the gradient, so each process gets the gradient of every process's loss with respect to its
   own embeddings), compute the loss of the local queries and backpropagate it to the cached
   embeddings only;
3. embed each chunk again with gradients and backpropagate the cached embedding gradient through
   the model. The RNG state of each chunk is replayed so dropout matches pass 1 (the state a
   checkpoint keeps: `trainer.checkpoint.rng_state`).
When the local texts fit in one chunk, pass 1 is skipped and the loss backpropagates directly.

A static model (`trainer/static.py`, `arch = static`) takes a shorter path through the same
loss: one pass over all texts, flattened token ids + offsets into the `EmbeddingBag` (no padded
[N, L] tensor, no sorting, no GradCache: a table lookup keeps no activations worth caching),
and on one process each query's candidate slots shrink to the most hard negatives any query of
the batch has (WordNet-style pairs without negatives score 512 x 512, not 512 x 4096, columns;
masked slots add nothing to the loss).

Gradients are then summed over processes (bucketed all-reduce) and divided by their number:
that is what `DistributedDataParallel` does, done once after the last chunk instead of through
DDP's hooks, which would fire on every chunk's backward and need `find_unused_parameters` for
encoders with an unused pooler. With equal local batches the result equals the gradient of the
single-process loss over the same global batch (tested with 2 gloo processes).

With `packing` each chunk is one sequence of its texts end to end with a document mask
(`trainer/packing.py`: flash-attn varlen or FlexAttention on GPU, SDPA with a 4-D mask on CPU)
instead of a padded [N, L] tensor.

Precision: float32 weights; bf16 autocast on GPU (transformers only), float32 on CPU. Optional
gradient checkpointing and `torch.compile`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from trainer.checkpoint import rng_state, set_rng_state
from trainer.config import TrainConfig
from trainer.distributed import Dist, all_reduce_grads, gather
from trainer.loss import LossOutput, Mixing, distillation, info_nce, truncate
from trainer.model import pad, tokenize
from trainer.packing import attention_for
from trainer.packing import pack as pack_texts
from trainer.static import StaticEmbedder, pack

if TYPE_CHECKING:  # trainer.data reads mixtures (the catalog); the step needs only the type
    from trainer.data import Example

# ----------------------------------------------------------------------------- one step


@dataclass
class LocalBatch:
    """The texts of this process's queries and candidates, tokenized, and the slot layout."""

    ids: list[list[int]]  # unique texts; the first n_queries are the queries
    n_queries: int
    cand_slot: torch.Tensor  # slot (query * slots + j) of each valid candidate
    cand_text: torch.Tensor  # text index of each valid candidate
    slot_valid: torch.Tensor  # [n_queries * slots]
    slot_group: torch.Tensor  # [n_queries * slots] label group, -1 without
    query_group: torch.Tensor  # [n_queries]
    tokens: int
    slot_teacher: torch.Tensor | None = None  # [n_queries, slots] teacher scores, NaN without


def encode_batch(examples: list[Example], tokenizer, *, slots: int, max_length: int) -> LocalBatch:
    """Tokenize once; a text used twice (e.g. a shared negative) is embedded once."""
    texts = [e.query for e in examples]
    index: dict[str, int] = {}
    cand_slot, cand_text, cand_group = [], [], []
    n = len(examples)
    slot_teacher = None
    for i, e in enumerate(examples):
        if e.teacher is not None:
            if slot_teacher is None:
                slot_teacher = torch.full((n, slots), float("nan"))
            slot_teacher[i, : len(e.teacher)] = torch.tensor(e.teacher)
        for j, (text, group) in enumerate(
            zip((e.positive, *e.negatives), (e.group, *e.negative_groups), strict=True)
        ):
            if text not in index:
                index[text] = n + len(index)
                texts.append(text)
            cand_slot.append(i * slots + j)
            cand_text.append(index[text])
            cand_group.append(group)
    ids = tokenize(tokenizer, texts, max_length)
    cand_slot_t = torch.tensor(cand_slot, dtype=torch.long)
    slot_valid = torch.zeros(n * slots, dtype=torch.bool)
    slot_valid[cand_slot_t] = True
    slot_group = torch.full((n * slots,), -1, dtype=torch.long)
    slot_group[cand_slot_t] = torch.tensor(cand_group, dtype=torch.long)
    return LocalBatch(
        ids=ids,
        n_queries=n,
        cand_slot=cand_slot_t,
        cand_text=torch.tensor(cand_text, dtype=torch.long),
        slot_valid=slot_valid,
        slot_group=slot_group,
        query_group=torch.tensor([e.group for e in examples], dtype=torch.long),
        tokens=sum(map(len, ids)),
        slot_teacher=slot_teacher,
    )


class Stepper:
    """Computes one optimizer step's gradients (GradCache) for a local batch."""

    def __init__(self, model, tokenizer, cfg: TrainConfig, d: Dist) -> None:
        self.model, self.tokenizer, self.cfg, self.d = model, tokenizer, cfg, d
        self.static = isinstance(model, StaticEmbedder)
        self.slots = 1 + cfg.negatives_per_query
        self.attention = None  # packing: the attention implementation the document mask is for
        if cfg.packing and not self.static:
            config = model.backbone.config
            self.attention = attention_for(d.device, config._attn_implementation)
            if self.attention != config._attn_implementation:
                model.backbone.set_attn_implementation(self.attention)
        self.encode = torch.compile(model, dynamic=True) if cfg.compile else model
        cuda = d.device.type == "cuda"
        auto_bf16 = cfg.precision == "auto" and cuda and not self.static
        self.bf16 = cfg.precision == "bf16" or auto_bf16
        self.pad_multiple = 8 if cuda else 1
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.step = 0  # the run's step, seeds the hard-negative mixing draws

    @property
    def grad_norm(self) -> torch.Tensor | None:
        """The gradient's norm when the model knows it already (a static model on one process;
        after `backward`), else None."""
        return self.model.grad_norm if self.static else None

    def _embed(self, ids: list[list[int]]) -> torch.Tensor:
        if self.static:
            return self.encode(*pack(ids, self.d.device))
        if self.attention:
            inputs = (pack_texts(ids, self.d.device, self.attention),)
        else:
            inputs = pad(ids, self.tokenizer.pad_token_id, self.d.device, self.pad_multiple)
        autocast = (
            torch.autocast(self.d.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        )
        with autocast:
            return self.encode(*inputs)

    def _loss(self, reps: torch.Tensor, b: LocalBatch) -> LossOutput:
        """InfoNCE (per Matryoshka dim, with focal weights and mixed negatives) + distillation."""
        cfg, dev = self.cfg, reps.device
        queries = reps[: b.n_queries]
        cands = reps.new_zeros(b.n_queries * self.slots, reps.shape[1]).index_copy(
            0, b.cand_slot.to(dev), reps[b.cand_text.to(dev)]
        )
        cands = gather(cands, self.d, with_grad=True)
        valid = gather(b.slot_valid.to(dev), self.d)
        groups = gather(b.slot_group.to(dev), self.d)
        first = self.d.rank * b.n_queries
        positives = (first + torch.arange(b.n_queries, device=dev)) * self.slots
        mixing = None
        if cfg.mix_negatives:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step * 1009 + self.d.rank)
            low, high = cfg.mix_range
            mixing = Mixing(
                cfg.mix_negatives, cfg.mix_hardest, cfg.mix_positive_share, low, high, g
            )
        out, total = None, reps.new_zeros(())
        for dim, weight in cfg.dim_weights:
            part = info_nce(
                truncate(queries, dim),
                b.query_group.to(dev),
                positives,
                truncate(cands, dim),
                valid,
                groups,
                temperature=cfg.temperature,
                margin=cfg.false_negative_margin,
                focal_gamma=cfg.focal_gamma,
                mixing=mixing,
            )
            total = total + weight * part.loss
            out = part if out is None else out
        if cfg.distill_weight and b.slot_teacher is not None:
            kl = distillation(
                queries, cands, positives, self.slots, b.slot_teacher.to(dev),
                cfg.distill_temperature,
            )  # fmt: skip
            total = total + cfg.distill_weight * kl
        out.loss = total
        return out

    def backward(self, examples: list[Example]) -> tuple[LossOutput, int]:
        """Accumulate this batch's gradients (averaged over processes); (loss output, tokens)."""
        if self.static and self.d.world == 1:  # slots for the negatives this batch has
            self.slots = 1 + max(len(e.negatives) for e in examples)
        b = encode_batch(examples, self.tokenizer, slots=self.slots, max_length=self.cfg.max_length)
        return self.backward_batch(b), b.tokens

    def backward_batch(self, b: LocalBatch) -> LossOutput:
        """`backward` on an already tokenized batch (the GPU benchmark feeds token ids)."""
        if self.static:  # one pass, no sorting, no GradCache (see module docstring)
            out = self._loss(self._embed(b.ids), b)
            out.loss.backward()
            self.model.densify_grad(partial=self.d.world == 1)
            if self.d.world > 1:
                all_reduce_grads(self.params, self.d.world)
            return out
        order = sorted(range(len(b.ids)), key=lambda i: len(b.ids[i]))
        chunks = [
            order[i : i + self.cfg.chunk_size] for i in range(0, len(order), self.cfg.chunk_size)
        ]
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        inverse = inverse.to(self.d.device)
        if len(chunks) == 1:
            reps = self._embed([b.ids[i] for i in order])[inverse]
            out = self._loss(reps, b)
            out.loss.backward()
        else:
            states, pieces = [], []
            with torch.no_grad():
                for chunk in chunks:
                    states.append(rng_state())
                    pieces.append(self._embed([b.ids[i] for i in chunk]))
            reps = torch.cat(pieces)[inverse].detach().requires_grad_(True)
            out = self._loss(reps, b)
            out.loss.backward()
            grads = reps.grad
            for chunk, state in zip(chunks, states, strict=True):
                set_rng_state(state)  # dropout as in pass 1
                emb = self._embed([b.ids[i] for i in chunk])
                emb.backward(grads[torch.tensor(chunk, device=grads.device)])
        if self.d.world > 1:
            all_reduce_grads(self.params, self.d.world)
        return out


# ----------------------------------------------------------------------------- the update


def make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases and norms keep theirs at zero)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        fused=device.type == "cuda" or cfg.arch == "static",  # CPU fused: 5x on a big table
    )


def lr_factor(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    """The learning-rate multiplier of each step (for `LambdaLR`): linear warmup over
    `warmup_ratio` of the `total` steps, then constant, cosine or linear decay to zero."""
    warmup = int(total * cfg.warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress_ = (step - warmup) / max(1, total - warmup)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress_))
        return max(0.0, 1.0 - progress_)

    return factor


def clip_grads(
    params: list[torch.nn.Parameter], max_norm: float, total: torch.Tensor | None = None
) -> torch.Tensor:
    """`clip_grad_norm_`, minus its multiply by exactly 1.0 when nothing is clipped (the same
    bits; on a static model's 8M-entry table that multiply is 2 ms a step); `total` is the
    gradient's norm when the caller knows it already."""
    if total is None:
        total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if max_norm / (total + 1e-6) < 1.0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total
