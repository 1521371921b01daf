"""One optimizer step's gradients: GradCache contrastive steps, data parallel over processes.

Every process builds the same global batch (`trainer/data.py`) and encodes its slice of queries
and their candidates (`trainer/train.py` runs the loop around this).

A step (GradCache, Gao et al. 2021), so the contrastive batch never shrinks to fit memory:
1. embed every text of the local batch without gradients, `chunk_size` texts at a time
   (texts sorted by length first, so chunks carry little padding);
2. gather the candidate embeddings of all processes (an all-gather whose backward all-reduces
   the gradient, so each process gets the gradient of every process's loss with respect to its
   own embeddings), compute the loss of the local queries and backpropagate it to the cached
   embeddings only;
3. embed each chunk again with gradients and backpropagate the cached embedding gradient through
   the model. The RNG state of each chunk is replayed so dropout matches pass 1.
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

Precision: float32 weights; bf16 autocast on GPU (transformers only), float32 on CPU. Optional
gradient checkpointing and `torch.compile`.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.config import TrainConfig
from trainer.data import Example
from trainer.loss import LossOutput, Mixing, distillation, info_nce, truncate
from trainer.model import pad, tokenize
from trainer.static import StaticEmbedder, pack

# ----------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed() -> tuple[Dist, bool]:
    """This process's place from torchrun's environment; (Dist, whether we initialised it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    started = False
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
        started = True
    rank = dist.get_rank() if world > 1 else 0
    return Dist(rank, world, device), started


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradient over processes and keeps our slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather(x: torch.Tensor, d: Dist, *, with_grad: bool = False) -> torch.Tensor:
    if d.world == 1:
        return x
    if with_grad:
        return _GatherWithGrad.apply(x)
    parts = [torch.empty_like(x) for _ in range(d.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_reduce_grads(params: list[torch.nn.Parameter], world: int, bucket: int = 1 << 25) -> None:
    """Average gradients over processes, in flat buckets of about `bucket` elements."""
    grads = [p.grad for p in params if p.grad is not None]
    start = 0
    while start < len(grads):
        end, size = start, 0
        while end < len(grads) and (size == 0 or size + grads[end].numel() <= bucket):
            size += grads[end].numel()
            end += 1
        group = grads[start:end]
        flat = torch._utils._flatten_dense_tensors(group)
        dist.all_reduce(flat)
        flat /= world
        for g, synced in zip(
            group, torch._utils._unflatten_dense_tensors(flat, group), strict=True
        ):
            g.copy_(synced)
        start = end


RngState = tuple[torch.Tensor, list[torch.Tensor] | None]


def _rng_now() -> RngState:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


def _rng_set(state: RngState) -> None:
    """GradCache pass 2 replays each chunk's RNG state so dropout matches pass 1."""
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


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
        input_ids, mask = pad(ids, self.tokenizer.pad_token_id, self.d.device, self.pad_multiple)
        autocast = (
            torch.autocast(self.d.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        )
        with autocast:
            return self.encode(input_ids, mask)

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
                    states.append(_rng_now())
                    pieces.append(self._embed([b.ids[i] for i in chunk]))
            reps = torch.cat(pieces)[inverse].detach().requires_grad_(True)
            out = self._loss(reps, b)
            out.loss.backward()
            grads = reps.grad
            for chunk, state in zip(chunks, states, strict=True):
                _rng_set(state)
                emb = self._embed([b.ids[i] for i in chunk])
                emb.backward(grads[torch.tensor(chunk, device=grads.device)])
        if self.d.world > 1:
            all_reduce_grads(self.params, self.d.world)
        return out
