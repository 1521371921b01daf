"""The model as mteb sees it: mteb's own sentence-transformers wrapper, plus an embedding cache.

Scores must equal what `mteb.evaluate(SentenceTransformer(...))` gives, so encoding goes through
mteb's `SentenceTransformerEncoderWrapper` unchanged (same prompts, same `encode_query` /
`encode_document` choice, raw float32 embeddings, no extra normalisation). What this adds:

- each distinct text is embedded once per model: STSBenchmark, the English subset of
  STSBenchmarkMultilingualSTS and the STS-B retrieval and reranking tasks share most sentences.
  Vectors go through the workspace's embedding cache (`corpus.embedding.EmbeddingCache`) in a
  folder of their own, `embeddings/<model fingerprint of "mteb-fp32">/`, because the shared
  embedder stores L2-normalised vectors and these are raw; a re-evaluation of the same model
  (same weights) re-embeds nothing;
- a progress callback counting the texts actually sent to the model.

The cache key is the text plus the prompt mteb resolved for the task, plus the query/document
side when the model treats the sides differently (it has prompts or a Router module).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

from corpus.embedding import EmbeddingCache, cached_vectors, model_fingerprint, text_keys

CHUNK_TEXTS = 1024  # texts per model call: the granularity of the progress callback


class CachedEncoder(SentenceTransformerEncoderWrapper):
    """mteb's wrapper around one SentenceTransformer, with cached, deduplicated encoding."""

    def __init__(self, model: Any, model_dir: Path, cache_dir: Path) -> None:
        super().__init__(model)
        fingerprint = model_fingerprint(model_dir, "mteb-fp32")
        self.cache = EmbeddingCache.for_model(cache_dir, fingerprint)
        self.asymmetric = bool(self.model_prompts) or any(
            type(module).__name__ == "Router" for module in model
        )
        self.on_encoded: Callable[[int], None] = lambda n: None
        self.embedded = 0  # texts this instance sent to the model
        self.requested = 0  # texts mteb asked for

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        columns = set(inputs.dataset.column_names)
        if "text" not in columns or columns & {"image", "audio", "video"}:
            return super().encode(
                inputs,
                task_metadata=task_metadata,
                hf_split=hf_split,
                hf_subset=hf_subset,
                prompt_type=prompt_type,
                **kwargs,
            )
        texts = [text for batch in inputs for text in batch["text"]]
        self.requested += len(texts)
        keys = text_keys(texts, self._key_prefix(task_metadata, prompt_type))

        def embed(rows: np.ndarray) -> np.ndarray:
            parts = []
            for start in range(0, len(rows), CHUNK_TEXTS):
                chunk = rows[start : start + CHUNK_TEXTS]
                parts.append(
                    np.asarray(
                        super(CachedEncoder, self).encode(
                            _text_loader([texts[i] for i in chunk], kwargs),
                            task_metadata=task_metadata,
                            hf_split=hf_split,
                            hf_subset=hf_subset,
                            prompt_type=prompt_type,
                            **kwargs,
                        ),
                        dtype=np.float32,
                    )
                )
                self.embedded += len(chunk)
                self.on_encoded(len(chunk))
            return np.concatenate(parts)

        return cached_vectors(keys, self.cache, embed)

    def _key_prefix(self, task_metadata: Any, prompt_type: Any) -> str:
        """What besides the text decides the vector: the resolved prompt, and the side."""
        name = self.get_prompt_name(task_metadata, prompt_type)
        prompt = (self.model_prompts or {}).get(name, "") if name else ""
        side = prompt_type.value if (prompt_type is not None and self.asymmetric) else ""
        return f"{side}\x1e{prompt}"


def _text_loader(texts: list[str], kwargs: dict[str, Any]):
    """A DataLoader of `{"text": [...]}` batches, the shape mteb's wrapper reads."""
    from datasets import Dataset
    from torch.utils.data import DataLoader

    return DataLoader(Dataset.from_dict({"text": texts}), batch_size=kwargs.get("batch_size", 32))
