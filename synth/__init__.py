"""Persona-driven synthesis: personas from corpus text, two-step task prompts per task type,
JSON validation, and LLM backends (transformers, any OpenAI-compatible server, vLLM).

Operators here never touch the catalog; `kalmix/synthesis.py` joins them to it.
"""
