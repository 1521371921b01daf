"""Words of synthesis the command line offers: the backends and the retrieval query/document forms.

Light on purpose: the CLI declares its options with these, and `kalmix --help` must not load
the backends, Arrow or polars, so this module imports nothing.
"""

# The `--backend` names, one module each under `synth/backends/` (`make_backend` builds them).
BACKENDS = ("transformers", "openai", "vllm")

# The query/document lengths of retrieval examples: the `[forms.*]` of templates/retrieval.toml.
RETRIEVAL_FORMS = ("short-long", "long-short", "short-short", "long-long")
