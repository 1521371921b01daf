"""Cleaning and filtering operators: `pa.Table -> corpus.operator.OpResult`, no catalog access.

Dedup (exact + MinHash near-dup, `dedup.py`), fastText language ID (`langid.py`),
decontamination against evaluation data (`decontaminate.py`), and the shared duplicate
clustering and keeper rule (`clusters.py`) that semantic dedup reuses.
"""
