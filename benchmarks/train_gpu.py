"""Training step on one GPU: pairs/s, real tokens/s and MFU, padded vs packed, Qwen2-0.5B shape.

A randomly initialised Qwen2-0.5B-shaped decoder (random weights run at the same speed; nothing
is downloaded), made bidirectional and mean-pooled by `trainer.model.Embedder`, trains on a
fixed batch of `--pairs` (query, positive) pairs, in-batch InfoNCE, AdamW, bf16 autocast over
float32 weights, one forward pass per step (`chunk_size` = all texts: no GradCache replay). Two
workloads:

- `512`: every query and passage exactly 512 tokens (the DESIGN.md anchor row: no padding, so
  packing can only cost here);
- `mix`: queries of 16-64 tokens and passages of 64-512 (uniform), as retrieval data is; a
  padded forward pads all texts to the longest.

Rows, each in the same process on a fresh model:

- sentence-transformers' trainer with `MultipleNegativesRankingLoss` (scale 1/0.01), on the
  same token ids (a word-level tokenizer whose words are the ids, so texts tokenize to exactly
  these lengths; it pads queries and passages separately, as its collator does, and its step
  includes that tokenization). Skipped, with a note, where sentence-transformers, datasets or
  accelerate are not installed;
- kalmix `Stepper` padded and packed (`trainer/packing.py`: flash-attn varlen where installed,
  else FlexAttention), each eager and with `torch.compile`.

Real tokens are the texts' own tokens, never padding. MFU = (6 x non-embedding parameters x real
tokens + 12 x layers x hidden x sum of squared text lengths, the attention a text does with
itself) / step time / the GPU's dense bf16 peak (`PEAK_BF16`). Rows start only while the run is
under `--budget-s` (default 360 s), so the whole run stays under 8 minutes; a row that fails
records its error and the others still run.

It imports only torch and transformers (and sentence-transformers for its row): no DuckDB,
polars, Arrow or Streamlit; `--tiny` checks that.

Run on a GPU: python -m benchmarks.train_gpu  (writes benchmarks/results/train_gpu.{json,md}).
`--tiny` runs every row on CPU with a 2-layer model and short texts and checks the imports; its
figures mean nothing, and the `torch.compile` rows are skipped there (inductor's C++ build on a
small shared CPU takes longer than the check itself).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import write_results
from trainer.config import TrainConfig
from trainer.distributed import Dist
from trainer.model import Embedder
from trainer.step import LocalBatch, Stepper, clip_grads, make_optimizer

HEAVY = ("duckdb", "polars", "pyarrow", "streamlit")  # the GPU box has none of them
TEMPERATURE = 0.01
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "B200": 2250e12,
             "L40S": 362e12, "L4": 121e12}  # fmt: skip
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
# (query lengths, passage lengths), inclusive ranges; --tiny divides them by 8
WORKLOADS = {"512": ((512, 512), (512, 512)), "mix": ((16, 64), (64, 512))}


def build(shape: dict, device: torch.device) -> Embedder:
    from transformers import AutoModel, Qwen2Config

    torch.manual_seed(0)
    backbone = AutoModel.from_config(Qwen2Config(**shape), dtype=torch.float32)
    return Embedder(backbone, "mean").to(device).train()


def batch(pairs: int, lengths: tuple, vocab: int) -> LocalBatch:
    """`pairs` queries, then their positives, of random lengths in the workload's ranges."""
    g = torch.Generator().manual_seed(0)
    sizes = [int(torch.randint(lo, hi + 1, (1,), generator=g)) for lo, hi in lengths for _ in
             range(pairs)]  # fmt: skip
    ids = [torch.randint(2, vocab, (n,), generator=g).tolist() for n in sizes]
    return LocalBatch(
        ids=ids,
        n_queries=pairs,
        cand_slot=torch.arange(pairs),
        cand_text=torch.arange(pairs, 2 * pairs),
        slot_valid=torch.ones(pairs, dtype=torch.bool),
        slot_group=torch.full((pairs,), -1),
        query_group=torch.full((pairs,), -1),
        tokens=sum(sizes),
    )


def model_flops(model: Embedder, b: LocalBatch) -> float:
    """Useful FLOPs of one training step: real tokens only, attention within each text."""
    cfg = model.backbone.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    squares = sum(len(x) ** 2 for x in b.ids)
    return 6 * params * b.tokens + 12 * cfg.num_hidden_layers * cfg.hidden_size * squares


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


class _PadOnly:
    """The stepper only asks the tokenizer for its pad id when inputs are already token ids."""

    pad_token_id = 0


def kalmix_seconds(model, b, device, *, packing: bool, compile_: bool, warmup, steps) -> float:
    cfg = TrainConfig(
        negatives_per_query=0, chunk_size=len(b.ids), compile=compile_, packing=packing,
        temperature=TEMPERATURE,
    )  # fmt: skip
    stepper = Stepper(model, tokenizer=_PadOnly(), cfg=cfg, d=Dist(0, 1, device))
    optimizer = make_optimizer(model, cfg, device)

    def step() -> None:
        stepper.backward_batch(b)
        clip_grads(stepper.params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_steps(step, device, warmup, steps)


def st_seconds(model: Embedder, b: LocalBatch, device: torch.device, *, warmup, steps) -> float:
    """Seconds per step of sentence-transformers' trainer + MNRL on the same pairs."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, TrainerCallback

    vocab = model.backbone.config.vocab_size
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t1"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="t0", unk_token="t1", model_max_length=512
    )
    text = [" ".join(f"t{i}" for i in row) for row in b.ids]
    n, total = b.n_queries, warmup + steps
    data = Dataset.from_dict({"anchor": text[:n] * total, "positive": text[n:] * total})

    class Clock(TrainerCallback):
        ends: list[float] = []

        def on_step_end(self, *_args, **_kwargs) -> None:
            sync(device)
            self.ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        model.backbone.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        transformer = Transformer(tmp)
        transformer.max_seq_length = max(map(len, b.ids))
        pooling = Pooling(model.dim, pooling_mode="mean")
        st = SentenceTransformer(modules=[transformer, pooling], device=str(device))
        args = SentenceTransformerTrainingArguments(
            output_dir=str(Path(tmp) / "out"), per_device_train_batch_size=n, max_steps=total,
            learning_rate=1e-5, bf16=device.type == "cuda", use_cpu=device.type != "cuda",
            save_strategy="no", report_to="none", logging_steps=total, disable_tqdm=True,
            dataloader_drop_last=True, seed=0,
        )  # fmt: skip
        loss = MultipleNegativesRankingLoss(st, scale=1 / TEMPERATURE)
        clock = Clock()
        SentenceTransformerTrainer(
            model=st, args=args, train_dataset=data, loss=loss, callbacks=[clock]
        ).train()
    return (clock.ends[-1] - clock.ends[warmup - 1]) / steps


def peak_flops(device: torch.device) -> tuple[float, str]:
    if device.type != "cuda":
        return PEAK_BF16["H100"], "cpu (--tiny: MFU against an H100 peak, meaningless)"
    name = torch.cuda.get_device_name()
    for key, peak in PEAK_BF16.items():
        if key in name:
            return peak, name
    return PEAK_BF16["H100"], f"{name} (peak unknown: H100's 989 TFLOP/s used)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="every row on CPU, 2 layers (check)")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--budget-s", type=float, default=360.0, help="start no row after this")
    args = parser.parse_args()
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type != "cuda" and not args.tiny:
        sys.exit("no GPU here: run on a GPU machine, or pass --tiny to check the code on CPU")
    shape = TINY if args.tiny else QWEN2_05B
    warmup, steps = (1, 2) if args.tiny else (3, args.steps)
    peak, device_name = peak_flops(device)
    rows = [(f"kalmix {kind}", "kalmix", kind == "packed", False) for kind in ("padded", "packed")]
    rows.append(("sentence-transformers trainer + MNRL", "st", False, False))
    if not args.tiny:
        rows += [(f"kalmix {k} + torch.compile", "kalmix", k == "packed", True) for k in
                 ("padded", "packed")]  # fmt: skip
    results: dict[str, dict] = {}
    standalone_checked = False
    for workload, lengths in WORKLOADS.items():
        if args.tiny:
            lengths = tuple((lo // 8, hi // 8) for lo, hi in lengths)
        b = batch(args.pairs, lengths, shape["vocab_size"])
        longest = max(map(len, b.ids))
        results[workload] = {"lengths": lengths, "real_tokens": b.tokens,
                             "padded_tokens": longest * len(b.ids)}  # fmt: skip
        for name, who, packing, compile_ in rows:
            if time.perf_counter() - start > args.budget_s:
                results[workload][name] = {"skipped": f"time budget {args.budget_s:.0f} s spent"}
                continue
            if who == "st" and not standalone_checked:  # what the kalmix rows imported
                heavy = sorted(set(HEAVY) & set(sys.modules))
                if heavy:
                    sys.exit(f"the kalmix rows imported {heavy}: not standalone on a GPU box")
                standalone_checked = True
            model = build(shape, device)
            try:
                if who == "st":
                    seconds = st_seconds(model, b, device, warmup=warmup, steps=steps)
                else:
                    seconds = kalmix_seconds(
                        model, b, device, packing=packing, compile_=compile_, warmup=warmup,
                        steps=steps,
                    )  # fmt: skip
            except ImportError as err:
                results[workload][name] = {"skipped": f"not installed: {err.name}"}
            except Exception as err:  # a row that fails on this box; the others still run
                results[workload][name] = {"error": f"{type(err).__name__}: {err}"[:300]}
            else:
                results[workload][name] = {
                    "pairs_per_s": args.pairs / seconds,
                    "real_tokens_per_s": b.tokens / seconds,
                    "mfu": model_flops(model, b) / seconds / peak,
                    "step_s": seconds,
                }
            print(workload, name, results[workload][name], flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    table = _table(results, args.pairs, device_name, time.perf_counter() - start)
    if args.tiny:  # a code check: its figures are not results
        print(table)
    else:
        write_results("train_gpu", {"results": results, "device": device_name}, table)


def _table(results: dict, pairs: int, device_name: str, seconds: float) -> str:
    precision = "fp32" if device_name.startswith("cpu") else "bf16 autocast"
    out = [
        f"Qwen2-0.5B shape (random init), {device_name}, {pairs} pairs a step, {precision}, "
        f"in-batch InfoNCE, AdamW, one forward per step; whole run {seconds:.0f} s\n"
    ]
    for workload, rows in results.items():
        (q_lo, q_hi), (p_lo, p_hi) = rows["lengths"]
        share = 1 - rows["real_tokens"] / rows["padded_tokens"]
        out.append(
            f"\n**{workload}**: queries {q_lo}-{q_hi} tokens, passages {p_lo}-{p_hi}; "
            f"{rows['real_tokens']} real tokens a step, {100 * share:.0f}% of a padded forward "
            "is padding\n\n| step | pairs/s | real tokens/s | MFU | vs kalmix padded |\n"
            "|---|---|---|---|---|\n"
        )
        base = rows.get("kalmix padded", {}).get("pairs_per_s")
        for name, r in rows.items():
            if not isinstance(r, dict) or name == "lengths":
                continue
            if "pairs_per_s" not in r:
                out.append(f"| {name} | {r.get('skipped') or r.get('error')} | | | |\n")
                continue
            ratio = f"{r['pairs_per_s'] / base:.2f}x" if base else "-"
            out.append(
                f"| {name} | {r['pairs_per_s']:.1f} | {r['real_tokens_per_s']:,.0f} | "
                f"{100 * r['mfu']:.1f}% | {ratio} |\n"
            )
    return "".join(out)


if __name__ == "__main__":
    main()
