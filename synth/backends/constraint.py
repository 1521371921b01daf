"""Schema-constrained decoding for the `transformers` backend (and the test server behind it).

At every decoding step each constrained row gets a token mask: only tokens after which the
output can still become valid under the row's JSON Schema keep their logits, every other logit
is set to -inf before temperature, top-k and top-p, and once the object is complete only the
end token is allowed. The masks come from llguidance (`LLMatcher`, one per row, fed each
sampled token), written into one batched int32 bitmask (rows x vocab/32) and applied in place,
so the backend's own decode loop and its shared-prefix cache stay as they are.

Why llguidance: measured on SmolLM2's 49k vocabulary, one thread, a retrieval schema, the mask
costs ~0.05 ms a token (xgrammar ~0.03 ms), next to ~100 ms for a decode step: both are free.
llguidance has no dependencies; xgrammar pulls in triton and a TVM runtime.

JSON is written with ", " and ": " between items (the one-shot examples' style) and properties
in the schema's order. The schema covers the completion alone, as vLLM's structured outputs do
after a prefilled assistant turn: a prompt with a schema needs no prefix.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from corpus.errors import KalmixError
from synth.backends.base import JsonSchema

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

_GRAMMARS: dict[str, str] = {}
_LOCK = threading.Lock()


def compile_schema(schema: JsonSchema, tokenizer: Any = None) -> str:
    """The llguidance grammar of `schema`, checked (against `tokenizer`'s vocabulary when
    given); a schema it cannot compile is a `KalmixError` naming the schema (the task type)."""
    import llguidance

    key = schema.key()
    with _LOCK:
        if key in _GRAMMARS:
            return _GRAMMARS[key]
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema.schema, defaults=JSON_OPTIONS
        )
        error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
    except (ValueError, TypeError, RuntimeError) as err:
        error = str(err)
    if error:
        raise KalmixError(
            f"cannot compile the JSON schema of task type {schema.name!r} for constrained "
            f"decoding: {error.strip()[:300]} (fix its template's fields, or pass --no-constrain)"
        )
    with _LOCK:
        _GRAMMARS[key] = grammar
    return grammar


class SchemaMasks:
    """One matcher per row of a batch (None: unconstrained), masks for the live rows."""

    def __init__(self, tokenizer: Any, vocab_size: int, prompts: Sequence[Any]):
        import llguidance
        import llguidance.torch

        self._ll_torch = llguidance.torch
        self.vocab_size = vocab_size
        self.matchers: list[Any | None] = []
        if not any(p.schema is not None for p in prompts):
            return
        ll_tokenizer = _ll_tokenizer(tokenizer, vocab_size)
        for prompt in prompts:
            if prompt.schema is None:
                self.matchers.append(None)
                continue
            grammar = compile_schema(prompt.schema, ll_tokenizer)
            self.matchers.append(llguidance.LLMatcher(ll_tokenizer, grammar))

    @property
    def active(self) -> bool:
        return any(m is not None for m in self.matchers)

    def apply(self, logits: Any, live: list[int]) -> None:
        """Mask `logits` (one row per live row, in `live`'s order) in place."""
        rows = [(i, self.matchers[row]) for i, row in enumerate(live)]
        rows = [(i, m) for i, m in rows if m is not None]
        if not rows:
            return
        bitmask = self._ll_torch.allocate_token_bitmask(len(live), self.vocab_size)
        for i, matcher in rows:
            self._ll_torch.fill_next_token_bitmask(matcher, bitmask, i)
        self._ll_torch.apply_token_bitmask_inplace(logits, bitmask.to(logits.device))

    def consume(self, live: list[int], tokens: list[int]) -> None:
        for row, token in zip(live, tokens, strict=True):
            matcher = self.matchers[row]
            if matcher is not None and not matcher.is_stopped():
                matcher.consume_token(token)


_TOKENIZERS: dict[tuple[int, int], Any] = {}


def _ll_tokenizer(tokenizer: Any, vocab_size: int) -> Any:
    """llguidance's view of a transformers tokenizer, made once per tokenizer (~0.3 s)."""
    import llguidance.hf

    key = (id(tokenizer), vocab_size)
    with _LOCK:
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        return _TOKENIZERS[key]
