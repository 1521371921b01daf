"""Packing: one forward pass over a chunk's texts laid end to end, with no padding.

A padded chunk of texts is an [N, L] tensor where L is the longest text; with 16-64-token
queries beside 64-512-token passages most of it is padding, and every linear layer still runs
on it. A packed chunk is one [1, T] sequence, T the sum of the text lengths, and a document mask
keeps each text to itself: token i attends to token j only when both belong to the same text.
The models here are bidirectional (encoders, and decoders made bidirectional by
`trainer.model.Embedder`), so the mask is block-diagonal and not causal. Position ids restart at
0 for every text, so each text sees the positions it would see alone (rotary or learned
absolute: the same). `Embedder.forward` pools each text over its own segment.

The mask takes the form the model's attention implementation reads (`Packed.attention`):

- `flash_attention_2` (flash-attn installed, GPU): no mask; the cumulative text lengths
  `cu_seq_lens_q/k` and the longest text `max_length_q/k`, which transformers hands to
  `flash_attn_varlen_func` (its `FlashAttentionKwargs`): no T x T work at all;
- `flex_attention` (GPU without flash-attn): a FlexAttention `BlockMask` from
  `create_block_mask`; blocks of 128 x 128 tokens that no text spans are skipped;
- `kalmix_varlen_sdpa` (CPU, a model on SDPA): the same cumulative lengths, read by
  `varlen_sdpa`, which gathers each text into a padded block for attention only;
- `sdpa` / `eager` (a 4-D mask): a dense [1, 1, T, T] boolean mask (eager: additive float),
  which transformers passes on as it is. It costs T x T scores for the whole chunk (on CPU
  1.4x the padded step's time and +50% peak memory on the sorted chunks of
  `benchmarks/train_cpu.py`), so training takes it only for a model whose attention is eager;
  the tests use it as the plain reference for the other forms.

`attention_for(device, current)` picks the implementation: flash-attn or FlexAttention on GPU,
`kalmix_varlen_sdpa` on CPU for a model on SDPA, else the model's own. `tests/trainer/test_packing.py` shows the packed and padded embeddings
and loss agree for a BERT encoder and a bidirectional Qwen2.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F

VARLEN_SDPA = "kalmix_varlen_sdpa"
VARLEN = ("flash_attention_2", VARLEN_SDPA)  # read the cumulative text lengths, not a mask


def attention_for(device: torch.device, current: str) -> str:
    """The attention implementation a packed forward uses on `device` (`current`: the model's):
    flash-attn or FlexAttention on GPU, `varlen_sdpa` for an SDPA model on CPU, else its own."""
    if device.type == "cuda":
        return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "flex_attention"
    if current != "sdpa":
        return current
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_SDPA, sdpa_mask)  # padded calls: SDPA's mask
    return VARLEN_SDPA


def varlen_sdpa(
    module,
    query,
    key,
    value,
    attention_mask,
    *,
    cu_seq_lens_q=None,
    max_length_q=None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
):
    """Packed attention on SDPA, as flash-attn's varlen kernel reads it (the cumulative text
    lengths): each text's queries, keys and values gathered into a [N, H, L, D] block, attended
    with a key padding mask, scattered back. Attention costs what a padded forward's does; every
    other layer runs on the real tokens only. Arguments and result as transformers' `sdpa`, which
    a padded forward (no lengths) gets as it is."""
    if cu_seq_lens_q is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    lengths = cu_seq_lens_q.diff().long()
    offsets = torch.arange(max_length_q, device=query.device)
    valid = offsets < lengths[:, None]  # [N, L]
    index = (cu_seq_lens_q[:-1, None].long() + offsets).clamp(max=query.shape[2] - 1)
    groups = getattr(module, "num_key_value_groups", 1)

    def blocks(x: torch.Tensor, repeat: int = 1) -> torch.Tensor:  # [1, H, T, D] -> [N, H, L, D]
        return x[0].repeat_interleave(repeat, dim=0)[:, index].transpose(0, 1)

    out = F.scaled_dot_product_attention(
        blocks(query), blocks(key, groups), blocks(value, groups),
        attn_mask=valid[:, None, None, :], dropout_p=dropout if module.training else 0.0,
        scale=scaling,
    )  # fmt: skip
    return out.transpose(1, 2)[valid].unsqueeze(0), None  # [1, T, H, D]


@dataclass
class Packed:
    """One packed chunk: token ids, per-text position ids and segments, and the mask inputs."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T], 0.. within each text
    segments: torch.Tensor  # [T], the text of each token
    lengths: torch.Tensor  # [N], tokens per text
    starts: torch.Tensor  # [N], offset of each text's first token
    attention: dict  # the backbone's attention inputs: attention_mask or the varlen lengths

    def backbone_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, **self.attention}


def pack(ids: list[list[int]], device: torch.device, attention: str) -> Packed:
    """The texts `ids` as one sequence with the document mask `attention` reads."""
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    starts = torch.cumsum(lengths, 0) - lengths
    total = int(lengths.sum())
    segments = torch.repeat_interleave(torch.arange(len(ids)), lengths)
    positions = torch.arange(total) - starts[segments]
    flat = torch.tensor([t for row in ids for t in row], dtype=torch.long)
    segments = segments.to(device)
    return Packed(
        input_ids=flat.unsqueeze(0).to(device),
        position_ids=positions.unsqueeze(0).to(device),
        segments=segments,
        lengths=lengths.to(device),
        starts=starts.to(device),
        attention=_mask(attention, segments, lengths, total, device),
    )


def _mask(attention: str, segments: torch.Tensor, lengths: torch.Tensor, total: int, device):
    if attention in VARLEN:
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(lengths, 0)
        cu = cu.to(device)
        longest = int(lengths.max())
        return {
            "attention_mask": None,
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": longest,
            "max_length_k": longest,
        }
    if attention == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def same_text(b, h, q, kv):
            return segments[q] == segments[kv]

        mask = create_block_mask(same_text, None, None, total, total, device=device)
        return {"attention_mask": mask}
    same = segments[:, None] == segments[None, :]
    if attention != "sdpa":  # eager attention adds its mask to the scores
        same = torch.zeros(same.shape, device=device).masked_fill_(
            ~same, torch.finfo(torch.float32).min
        )
    return {"attention_mask": same[None, None]}


def pool_segments(hidden: torch.Tensor, p: Packed, pooling: str) -> torch.Tensor:
    """Per-text pooling of packed hidden states [1, T, D] -> [N, D] float32."""
    hidden = hidden[0]
    if pooling == "cls":
        return hidden[p.starts].float()
    sums = hidden.new_zeros(len(p.lengths), hidden.shape[-1], dtype=torch.float32)
    sums = sums.index_add(0, p.segments, hidden.float())
    return sums / p.lengths.unsqueeze(-1).to(torch.float32)
