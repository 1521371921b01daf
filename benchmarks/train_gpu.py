"""Training step on one GPU: tokens/s and model FLOPs utilisation, Qwen2-0.5B shape, bf16.

A randomly initialised Qwen2-0.5B-shaped decoder (random weights run at the same speed),
made bidirectional and mean-pooled by `trainer.model.Embedder`, trains on 32 (query, positive)
pairs of 512 tokens each (in-batch InfoNCE, AdamW, bf16 autocast over float32 weights), as the
DESIGN.md anchor row. Measured in one process:

- baseline: a plain PyTorch loop on the same model: one forward of the 64 texts, in-batch
  cross-entropy, backward, AdamW (DESIGN.md measured 115 pairs/s for this, and 92 for the
  sentence-transformers trainer + MNRL, on an H100);
- kalmix: `trainer.step.Stepper` (the step `kalmix train` runs: GradCache layout, masking,
  gradient clipping) eager, and with `torch.compile`.

MFU = (6 x non-embedding parameters x tokens + 12 x layers x hidden x seq x tokens for
attention) / step time / 989 TFLOP/s (H100 dense bf16).

Run on a GPU: .venv/bin/python -m benchmarks.train_gpu ; `--tiny` checks the code path on CPU
with a 2-layer model (its figures mean nothing; the `torch.compile` variant is skipped there,
since inductor's C++ build on a small shared CPU takes longer than the check itself).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks.common import write_results
from trainer.config import TrainConfig
from trainer.distributed import Dist
from trainer.model import Embedder
from trainer.step import LocalBatch, Stepper, make_optimizer

PEAK_FLOPS = 989e12
QWEN2_05B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}
TINY = {**QWEN2_05B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}  # fmt: skip


def build(shape: dict, device: torch.device) -> Embedder:
    from transformers import AutoModel, Qwen2Config

    torch.manual_seed(0)
    backbone = AutoModel.from_config(Qwen2Config(**shape), dtype=torch.float32)
    return Embedder(backbone, "mean").to(device).train()


def batch(pairs: int, seq: int, vocab: int) -> LocalBatch:
    """`pairs` queries and positives of exactly `seq` random tokens (no padding)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (2 * pairs, seq), generator=g).tolist()
    return LocalBatch(
        ids=ids,
        n_queries=pairs,
        cand_slot=torch.arange(pairs),
        cand_text=torch.arange(pairs, 2 * pairs),
        slot_valid=torch.ones(pairs, dtype=torch.bool),
        slot_group=torch.full((pairs,), -1),
        query_group=torch.full((pairs,), -1),
        tokens=2 * pairs * seq,
    )


def model_flops(model: Embedder, tokens: int, seq: int) -> float:
    cfg = model.backbone.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    return 6 * params * tokens + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq * tokens


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def plain_loop(model: Embedder, b: LocalBatch, device: torch.device, temperature: float):
    optimizer = make_optimizer(model, TrainConfig(), device)
    ids = torch.tensor(b.ids, device=device)
    mask = torch.ones_like(ids)
    labels = torch.arange(b.n_queries, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            emb = model(ids, mask)
        q, p = emb[: b.n_queries], emb[b.n_queries :]
        loss = torch.nn.functional.cross_entropy(q @ p.T / temperature, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def kalmix_step(model: Embedder, b: LocalBatch, device: torch.device, compile_: bool):
    cfg = TrainConfig(negatives_per_query=0, chunk_size=len(b.ids), compile=compile_)
    stepper = Stepper(model, tokenizer=_PadOnly(), cfg=cfg, d=Dist(0, 1, device))
    optimizer = make_optimizer(model, cfg, device)

    def step() -> None:
        stepper.backward_batch(b)
        torch.nn.utils.clip_grad_norm_(stepper.params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


class _PadOnly:
    """The stepper only asks the tokenizer for its pad id when inputs are already token ids."""

    pad_token_id = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer model on CPU (code check)")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type != "cuda" and not args.tiny:
        sys.exit("no GPU here: run on a GPU machine, or pass --tiny to check the code on CPU")
    shape = TINY if args.tiny else QWEN2_05B
    seq = 32 if args.tiny else args.seq
    b = batch(args.pairs, seq, shape["vocab_size"])
    results = {}
    variants = [
        ("plain PyTorch loop (baseline)", lambda m: plain_loop(m, b, device, 0.01)),
        ("kalmix Stepper", lambda m: kalmix_step(m, b, device, False)),
    ]
    if not args.tiny:
        variants.append(
            ("kalmix Stepper + torch.compile", lambda m: kalmix_step(m, b, device, True))
        )
    for name, make in variants:
        model = build(shape, device)
        flops = model_flops(model, b.tokens, seq)
        seconds = time_steps(make(model), device, warmup=3, steps=args.steps)
        results[name] = {
            "pairs_per_s": args.pairs / seconds,
            "tokens_per_s": b.tokens / seconds,
            "mfu": flops / seconds / PEAK_FLOPS,
            "step_s": seconds,
        }
        print(name, results[name])
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = results["plain PyTorch loop (baseline)"]["pairs_per_s"]
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (--tiny)"
    table = (
        f"{'tiny 2-layer check' if args.tiny else 'Qwen2-0.5B shape'}, {device_name}, "
        f"{args.pairs} pairs x {seq} tokens, {precision}, in-batch InfoNCE, AdamW\n\n"
        "| step | pairs/s | tokens/s | MFU | vs baseline |\n|---|---|---|---|---|\n"
        + "".join(
            f"| {n} | {r['pairs_per_s']:.1f} | {r['tokens_per_s']:.0f} | {100 * r['mfu']:.1f}% "
            f"| {r['pairs_per_s'] / base:.2f}x |\n"
            for n, r in results.items()
        )
    )
    if args.tiny:  # a code check: its figures are not results
        print(table)
    else:
        write_results("train_gpu", {"results": results, "device": device_name}, table)


if __name__ == "__main__":
    main()
