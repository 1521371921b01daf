"""The `vllm` backend: `vllm.LLM` in process (the `gpu` extra).

vLLM is imported only when this backend is built, so kalmix imports and its tests run without
it. The whole batch goes to vLLM's scheduler in one call per kind of prompt (prefixed or not).

A prompt with a schema gets its own sampling parameters with vLLM's structured outputs:
`StructuredOutputsParams(json=schema)` as `structured_outputs` (vLLM >= 0.10.2; the only form
from 0.12 on), else `GuidedDecodingParams(json=schema)` as `guided_decoding` (older vLLM).
`finish_reason` "length" (cut off at max_tokens) is passed on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from corpus.errors import KalmixError
from synth.backends.base import BackendConfig, Completion, JsonSchema, Prompt, SamplingParams
from synth.backends.models import local_model_name, resolve_local_model


class VLLMBackend:
    """`vllm.LLM` in process: the whole batch goes to vLLM's scheduler in one call."""

    kind = "vllm"

    def __init__(self, config: BackendConfig):
        try:
            import vllm
        except ImportError:
            raise KalmixError(
                "the vllm backend needs vLLM, which runs on a CUDA GPU machine: "
                "pip install 'kalmix[gpu]' there (or use --backend transformers|openai)"
            ) from None
        folder, gguf = resolve_local_model(config.model)
        self._vllm = vllm
        self.config = config
        self.model_name = local_model_name(folder, gguf)
        model_path = str(folder / gguf) if gguf else str(folder)
        self.llm = vllm.LLM(
            model=model_path,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            **config.extra,
        )

    def _sampling(self, params: SamplingParams, schema: JsonSchema | None) -> Any:
        """vLLM sampling parameters, constrained to `schema` when given."""
        kwargs: dict[str, Any] = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "seed": params.seed,
        }
        if schema is not None:
            from vllm import sampling_params as sp

            if hasattr(sp, "StructuredOutputsParams"):
                kwargs["structured_outputs"] = sp.StructuredOutputsParams(json=schema.schema)
            else:
                kwargs["guided_decoding"] = sp.GuidedDecodingParams(json=schema.schema)
        return self._vllm.SamplingParams(**kwargs)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        plain = self._sampling(params, None)
        out: list[Completion | None] = [None] * len(prompts)
        # continue_final_message is per call: prefixed and plain prompts go in separate calls.
        for prefixed in (True, False):
            idx = [i for i, p in enumerate(prompts) if bool(p.prefix) == prefixed]
            if not idx:
                continue
            conversations = [
                list(prompts[i].messages)
                + ([{"role": "assistant", "content": prompts[i].prefix}] if prefixed else [])
                for i in idx
            ]
            sampling = [
                plain if prompts[i].schema is None else self._sampling(params, prompts[i].schema)
                for i in idx
            ]
            results = self.llm.chat(
                conversations,
                sampling_params=sampling,
                use_tqdm=False,
                add_generation_prompt=not prefixed,
                continue_final_message=prefixed,
            )
            for i, result in zip(idx, results, strict=True):
                best = result.outputs[0]
                out[i] = Completion(
                    best.text,
                    prompt_tokens=len(result.prompt_token_ids or []),
                    completion_tokens=len(best.token_ids),
                    finish_reason="length" if best.finish_reason == "length" else "stop",
                )
        return [c for c in out if c is not None]
