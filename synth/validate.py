"""JSON extraction and per-task-type validation of LLM output.

Small models wrap JSON in prose, break off at the token limit, leave trailing commas, put
literal newlines in strings, repeat a key, or copy the one-shot example. Extraction takes the
first JSON object in the text (tolerating control characters and trailing commas); validation
checks the object against the task type's JSON Schema (`TaskTemplate.schema`, the same one that
constrains generation: every field present, text, within its length bounds; numbers are read
as text, texts stripped and keys outside the schema ignored first), that paired texts differ,
that nothing is the one-shot example copied back, and that a Chinese, Japanese or Korean
example is written in that script. Texts are compared in `corpus.text`'s token form and scripts
told apart by its CJK pattern, the definitions the filters use. Every failure has a short reason
that ends up in the run's stats and in the version's removals: nothing is dropped silently.
"""

from __future__ import annotations

import json
import re
from typing import Any

from corpus.text import CJK_LANGUAGES, has_cjk, normalized
from synth.prompts import TaskTemplate

_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_VALUE_END = re.compile(r'"\s*,')  # the end of a string value followed by another key


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Keep the first value of a repeated key: a small model that starts a second example inside
    the object repeats its keys, and the first example is the complete one."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


_DECODER = json.JSONDecoder(strict=False, object_pairs_hook=_first_wins)


def _decode(candidate: str) -> Any:
    try:
        return _DECODER.raw_decode(candidate)[0]
    except json.JSONDecodeError:
        return None


def extract_json(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """(object, None) for the first JSON object in `text`, else (None, reason).

    An object cut off by the token limit (or never closed because the model went on adding
    keys) is closed after its last complete string value; validation then decides whether the
    fields it holds are enough. Nothing is invented: every value is text the model wrote.
    """
    start = text.find("{")
    if start < 0:
        return None, "no_json"
    body = text[start:]
    obj = _decode(body)
    if obj is None:
        obj = _decode(_TRAILING_COMMA.sub(r"\1", body))
    if obj is None:
        for cut in reversed([m.start() for m in _VALUE_END.finditer(body)][-20:]):
            obj = _decode(body[: cut + 1] + "}")
            if obj is not None:
                break
    if obj is None:
        return None, "truncated" if "}" not in body else "invalid_json"
    if not isinstance(obj, dict):
        return None, "not_object"
    return obj, None


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _normalised(raw: Any) -> Any:
    """A value as the schema check sees it: numbers as text, texts stripped (lists too)."""
    if isinstance(raw, list):
        return [_normalised(v) for v in raw]
    text = _as_text(raw)
    return raw if text is None else text


_VALIDATORS: dict[str, Any] = {}


def _validator(schema: dict[str, Any]) -> Any:
    from jsonschema import Draft202012Validator

    key = json.dumps(schema, sort_keys=True)
    if key not in _VALIDATORS:
        _VALIDATORS[key] = Draft202012Validator(schema)
    return _VALIDATORS[key]


def _keywords(error: Any) -> set[str]:
    """The schema keywords an error and the errors under it (anyOf branches) failed on."""
    out = {error.validator}
    for sub in error.context or ():
        out |= _keywords(sub)
    return out


def schema_reason(obj: dict[str, Any], template: TaskTemplate) -> str | None:
    """None when `obj` (normalised, see the module docstring) passes the task type's schema,
    else the first failing field's reason: missing_field, not_text, too_short or too_long."""
    schema = template.schema
    errors = list(_validator(schema).iter_errors(obj))
    if not errors:
        return None
    if any(e.validator == "required" for e in errors):
        return "missing_field"
    order = {key: i for i, key in enumerate(schema["properties"])}
    first = min(errors, key=lambda e: order.get(e.path[0] if e.path else "", len(order)))
    field = first.path[0] if first.path else None
    words = set().union(*(_keywords(e) for e in errors if (e.path[0] if e.path else None) == field))
    if words & {"minLength", "minItems"}:
        return "too_short"
    if words & {"maxLength", "maxItems"}:
        return "too_long"
    return "not_text"


def validate_example(obj: dict[str, Any], template: TaskTemplate) -> tuple[dict | None, str | None]:
    """The example's texts by JSON key, or the reason it is unusable.

    A list of strings is accepted where the record field is `negatives` (models sometimes give
    several hard negatives; the schema says so); other fields must be text (numbers are turned
    into text before the schema check).
    """
    values = {key: _normalised(obj[key]) for key in template.schema["properties"] if key in obj}
    reason = schema_reason(values, template)
    if reason is not None:
        return None, reason
    texts = {key: value if isinstance(value, list) else [value] for key, value in values.items()}
    shot_texts = template.shot_values
    every = [*shot_texts, *(t for group in texts.values() for t in group)]
    norm = dict(zip(every, normalized(every, tokens=True), strict=True))
    shot = {norm[t] for t in shot_texts}
    for f in template.fields:
        if f.record in ("label", "meta"):
            continue  # class names ("positive", "sports") may repeat the example's on purpose
        if any(norm[t] in shot for t in texts[f.key]):
            return None, "copied_example"
    for a, b in template.distinct:
        if {norm[t] for t in texts[a]} & {norm[t] for t in texts[b]}:
            return None, "same_text"
    return values, None


def to_record_fields(values: dict[str, Any], template: TaskTemplate) -> tuple[dict, dict]:
    """(record fields, extra meta) from validated values: `meta` fields go to the record's meta."""
    record: dict[str, Any] = {"negatives": []}
    extra: dict[str, Any] = {}
    for f in template.fields:
        value = values[f.key]
        if f.record == "negatives":
            record["negatives"] = record["negatives"] + (
                value if isinstance(value, list) else [value]
            )
        elif f.record == "meta":
            extra[f.key] = value
        else:
            record[f.record] = value
    return record, extra


def script_matches(values: dict[str, Any], template: TaskTemplate, languages: list[str]) -> bool:
    """False when a Chinese, Japanese or Korean example has no text in that script.

    A small model often answers in English whatever language it is asked for; kept, such an
    example would carry a wrong `language`. Scripts shared by many languages (Latin, Cyrillic)
    are left to language ID (`kalmix langid`).
    """
    if not any(code in CJK_LANGUAGES for code in languages):
        return True
    texts = [
        text
        for f in template.fields
        if f.record not in ("label", "meta")
        for text in (values[f.key] if isinstance(values[f.key], list) else [values[f.key]])
    ]
    return bool(has_cjk(texts).any())
