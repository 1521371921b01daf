"""The `transformers` backend: local generation on CPU or GPU.

Left-padded batches; prompts that share their first turns (one template's system message and
one-shot exchange) share one key/value cache of that prefix instead of each recomputing it, and
a row that has ended leaves the batch instead of riding along to the longest row's end.
Loading a GGUF with transformers de-quantises it and re-parses the file's 49k-token vocabulary
several times (about 45 s on 2 cores), so the de-quantised weights are saved once as
safetensors under the model cache (`$KALMIX_MODEL_CACHE`, default `~/.cache/kalmix/models`)
and later loads take under a second; within a process the loaded model is cached too.
A prompt with a `schema` is decoded under a token mask that keeps its output valid JSON for
that schema (`synth/backends/constraint.py`), inside the same loop.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from corpus.errors import KalmixError
from synth.backends.base import BackendConfig, Completion, Prompt, SamplingParams
from synth.backends.constraint import SchemaMasks
from synth.backends.models import local_model_name, resolve_local_model

# A shared token prefix at least this long is computed once per batch (TransformersBackend);
# a shorter one is not worth the extra forward pass.
MIN_SHARED_PREFIX = 16


def model_cache_root() -> Path:
    """Where de-quantised GGUF models are kept (`$KALMIX_MODEL_CACHE`, else ~/.cache/kalmix)."""
    env = os.environ.get("KALMIX_MODEL_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kalmix" / "models"


def _dequantised_folder(folder: Path, gguf: str) -> Path:
    """A safetensors copy of a GGUF model, made once and reused (see the module docstring)."""
    source = folder / gguf
    key = f"{source.stem}-{source.stat().st_size}"
    target = model_cache_root() / key
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    # The weights are plain float tensors now; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.parent / f".{key}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first: use its copy
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise KalmixError(
            f"cannot write the de-quantised model under {target.parent} ({err.strerror}); "
            "set KALMIX_MODEL_CACHE to a writable folder"
        ) from None
    return target


_LOADED: dict[tuple[str, str], tuple[Any, Any]] = {}
_LOAD_LOCK = threading.Lock()


def load_transformers_model(model: str | None, device: str) -> tuple[Any, Any, str]:
    """(model, tokenizer, display name), cached per process and device."""
    folder, gguf = resolve_local_model(model)
    name = local_model_name(folder, gguf)
    key = (str(folder / (gguf or "")), device)
    with _LOAD_LOCK:
        if key not in _LOADED:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = _dequantised_folder(folder, gguf) if gguf else folder
            tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            if not tokenizer.chat_template:
                raise KalmixError(f"model {name} has no chat template: use an instruct model")
            lm = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
            _LOADED[key] = (lm, tokenizer)
    lm, tokenizer = _LOADED[key]
    return lm, tokenizer, name


class TransformersBackend:
    """Local generation: prompts sorted by length, left-padded batches of `batch_size`, the
    key/value cache of a prompt prefix the batch shares computed once (see `_generate`), and
    an own decoding loop from which rows leave as they end (see `_decode`).

    `threads` limits torch's CPU threads during generation only. On a machine shared with other
    busy processes one thread can be many times faster than all cores: OpenMP threads that wait
    for each other at every small matrix product stall whenever one is descheduled.
    """

    kind = "transformers"

    def __init__(self, config: BackendConfig):
        import torch

        self.config = config
        self.device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer, self.model_name = load_transformers_model(
            config.model, self.device
        )

    def render(self, prompt: Prompt) -> str:
        """The prompt as text through the model's chat template, prefix appended."""
        messages = list(prompt.messages)
        if prompt.prefix:
            return self.tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": prompt.prefix}],
                tokenize=False,
                continue_final_message=True,
            )
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        import torch

        before = torch.get_num_threads()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        try:
            return self._generate(prompts, params)
        finally:
            torch.set_num_threads(before)

    def _generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        """Batches of prompts that share their turns before the last one, shortest first.

        Sorting by (earlier turns, length) puts prompts of one template and form side by side
        and keeps padding small. A batch's shared prefix is the longest token prefix common to
        all prompts of the groups it draws from (so batches of one group share one prefix),
        less at least one token per prompt; from `MIN_SHARED_PREFIX` tokens on, it is run
        through the model once and its key/value cache reused for every prompt in the batch and
        for later batches with the same prefix, instead of being recomputed per prompt.
        """
        ids = self.tokenizer([self.render(p) for p in prompts], add_special_tokens=False).input_ids
        groups = [json.dumps(p.messages[:-1]) for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: (groups[i], len(ids[i])))
        members: dict[str, list[list[int]]] = {}
        for group, row in zip(groups, ids, strict=True):
            members.setdefault(group, []).append(row)
        group_prefix = {group: _common_prefix(rows) for group, rows in members.items()}
        caches: dict[tuple[int, ...], Any] = {}
        out: list[Completion | None] = [None] * len(ids)
        size = max(1, self.config.batch_size)
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            rows = [ids[i] for i in chunk]
            shared = _common_prefix([group_prefix[groups[i]] for i in chunk])
            shared = shared[: min(len(r) for r in rows) - 1]  # every row keeps a token to feed
            cache = None
            if self.config.prefix_cache and len(shared) >= MIN_SHARED_PREFIX:
                key = tuple(shared)
                if key not in caches:
                    caches[key] = self._prefix_cache(shared)
                cache = caches[key]
            batch = self._generate_batch(rows, params, cache, [prompts[i] for i in chunk])
            for i, completion in zip(chunk, batch, strict=True):
                out[i] = completion
        return [c for c in out if c is not None]

    def _prefix_cache(self, prefix: list[int]) -> Any:
        """The key/value cache of `prefix` (batch of one)."""
        import torch

        with torch.inference_mode():
            ids = torch.tensor([prefix], device=self.device)
            return self.model(input_ids=ids, use_cache=True).cache

    def _generate_batch(
        self,
        rows: list[list[int]],
        params: SamplingParams,
        prefix_cache: Any | None,
        prompts: Sequence[Prompt] = (),
    ) -> list[Completion]:
        """Generate for token rows laid out as [shared prefix][padding][rest].

        With no prefix cache this is plain left padding. With one, the rows start with the
        cached prefix, padding sits between it and each row's own tokens with the attention
        mask zero there, and only the tokens after the cache are fed (see `_decode`).
        """
        import torch

        cut = prefix_cache.get_seq_length() if prefix_cache is not None else 0
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor(
            [r[:cut] + [pad] * (width - len(r)) + r[cut:] for r in rows], device=self.device
        )
        mask = torch.tensor(
            [[1] * cut + [0] * (width - len(r)) + [1] * (len(r) - cut) for r in rows],
            device=self.device,
        )
        eos = _eos_ids(self.model, self.tokenizer)
        masks = SchemaMasks(self.tokenizer, self.model.config.vocab_size, prompts)
        completions = []
        for new, tokens in zip(
            self._decode(input_ids[:, cut:], mask, prefix_cache, params, eos, masks),
            rows,
            strict=True,
        ):
            ended = bool(new) and new[-1] in eos
            completions.append(
                Completion(
                    self.tokenizer.decode(new[:-1] if ended else new, skip_special_tokens=True),
                    prompt_tokens=len(tokens),
                    completion_tokens=len(new),
                    finish_reason="stop" if ended else "length",
                )
            )
        return completions

    def _decode(
        self,
        input_ids: Any,
        mask: Any,
        prefix_cache: Any | None,
        params: SamplingParams,
        eos: set[int],
        masks: SchemaMasks | None = None,
    ) -> list[list[int]]:
        """Each row's new tokens, up to `params.max_tokens`, ending at its first `eos` token.

        `input_ids` are the tokens after `prefix_cache` (a batch-of-one cache every row starts
        with; all tokens with none); `mask` covers both. Unlike `model.generate`, which feeds
        finished rows padding until the longest row ends, a row leaves the batch at its
        end-of-sequence token: its key/value cache, mask and position rows are dropped, so later
        steps compute only live rows (decoding is compute-bound on CPU, a batch-8 step costing
        ~3x a batch-1 step). The key/value cache is a `StaticCache` sized for the prompt and
        `max_tokens`, written in place: a `DynamicCache` concatenates, copying the whole cache
        at every step (~1/8 of a batch-8 step here).

        Position ids follow the mask as in `generate` (`_prepare_position_ids_for_generation`:
        `mask.cumsum(-1) - 1`, zero on padding) and then grow by one a step, so every token has
        the position it would have without padding and greedy output is `generate`'s, token
        for token. Sampling applies `generate`'s warpers (temperature, top-k, top-p) with a
        generator seeded from `params.seed`, so a seed reproduces its outputs.
        """
        import torch
        from transformers import StaticCache

        stop = torch.tensor(sorted(eos), device=self.device)
        pick = self._token_picker(params)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, -input_ids.shape[1] :]
        live = list(range(len(input_ids)))
        out: list[list[int]] = [[] for _ in live]
        with torch.inference_mode():
            cache = StaticCache(self.model.config, max_cache_len=mask.shape[1] + params.max_tokens)
            rows = (len(live), -1, -1, -1)  # the prefix, shared by every row
            for i, layer in enumerate(prefix_cache.layers if prefix_cache is not None else []):
                cache.update(layer.keys.expand(*rows), layer.values.expand(*rows), i)
            step = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            constrained = masks is not None and masks.active
            for n in range(params.max_tokens):
                logits = step.logits[:, -1].float()
                if constrained:
                    masks.apply(logits, live)
                tokens = pick(logits)
                picked = tokens.tolist()
                if constrained:
                    masks.consume(live, picked)
                for row, token in zip(live, picked, strict=True):
                    out[row].append(token)
                going = ~torch.isin(tokens, stop)
                if n + 1 == params.max_tokens or not going.any():
                    break
                if not going.all():
                    keep = going.nonzero().squeeze(1)
                    for layer in cache.layers:  # StaticCache has no batch_select_indices
                        layer.keys, layer.values = layer.keys[keep], layer.values[keep]
                        layer.batch_size = len(keep)
                    live = [live[i] for i in keep.tolist()]
                    tokens, mask, positions = tokens[keep], mask[keep], positions[keep]
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=-1)
                positions = positions[:, -1:] + 1
                step = self.model(
                    input_ids=tokens[:, None],
                    attention_mask=mask,
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                )
        return out

    def _token_picker(self, params: SamplingParams) -> Callable[[Any], Any]:
        """next-token logits (rows x vocab) -> token ids: argmax when greedy; else sampling
        through the warpers `model.generate` applied for the same settings (top-k is the
        model's, or transformers' default of 50), so the sampled distribution is unchanged."""
        import torch

        if params.temperature <= 0:
            return lambda logits: logits.argmax(-1)
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        top_k = self.model.generation_config.top_k
        top_k = 50 if top_k is None else top_k
        warp = LogitsProcessorList([TemperatureLogitsWarper(params.temperature)])
        if top_k:
            warp.append(TopKLogitsWarper(top_k))
        if params.top_p < 1.0:
            warp.append(TopPLogitsWarper(params.top_p))
        generator = torch.Generator(self.device).manual_seed(params.seed)

        def sample(logits: Any) -> Any:
            probs = warp(None, logits).softmax(-1)
            return torch.multinomial(probs, 1, generator=generator).squeeze(1)

        return sample


def _common_prefix(rows: list[list[int]]) -> list[int]:
    """The longest token prefix all `rows` start with."""
    first = rows[0]
    n = min(len(r) for r in rows)
    for row in rows[1:]:
        n = next((j for j in range(n) if row[j] != first[j]), n)
    return first[:n]


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
