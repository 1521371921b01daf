"""Prompt templates: data files in `synth/templates/`, one per task type plus `persona.toml`.

A task template holds two prompts (see KaLM / E5-mistral's two-step recipe):

- `brainstorm`: persona -> one task description ("Given a ..., retrieve ..."), after a one-shot
  exchange (`shot_persona` -> `shot_task`): SmolLM2-135M copies an example written into the
  instruction, but adapts one shown as a previous turn to the new persona;
- `example`: task description -> one JSON example: a fixed system message, a one-shot
  exchange (`shot_task` -> `shot_output`), then the real request, which alone carries the
  persona (`persona`, e.g. "You are $persona.", the KaLM paper's persona role), the task and
  the language; an assistant prefix such as `{"query": "` starts the JSON, which keeps a small
  model on format.

Both prompts keep everything that varies per job in the last user turn, so all turns before it
are byte-identical across the jobs of one task type (and retrieval form): the `transformers`
backend computes the key/value cache of that shared prefix once per batch instead of once per
prompt, and vLLM's prefix caching reuses it the same way.

`$language` (and `$target_language` for bitext) and, for retrieval, the form's `$query_length`
and `$document_length` are parameters. `fields` map JSON keys to record fields with length
bounds, `distinct` lists keys whose texts must differ. The fields are the task type's one
definition of its output: `TaskTemplate.schema` writes them as a JSON Schema, which both
constrains generation (`output_schema`, see `synth.backends.base`) and validates the output
(`synth.validate`). Templates are hashed (sha256 of the file)
and the hash goes into every record's meta and into the resume key, so editing a template
starts a fresh run instead of mixing outputs of two prompts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from corpus.errors import KalmixError
from corpus.schema import TASK_TYPES
from corpus.toml import parse_toml
from synth.backends import Prompt
from synth.backends.base import JsonSchema

LANGUAGES: dict[str, str] = {
    "en": "English",
    "zh": "Chinese",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "nl": "Dutch",
    "pl": "Polish",
    "ru": "Russian",
    "ja": "Japanese",
    "ko": "Korean",
    "ar": "Arabic",
    "hi": "Hindi",
    "tr": "Turkish",
    "vi": "Vietnamese",
    "id": "Indonesian",
    "th": "Thai",
}


def language_name(code: str) -> str:
    if code not in LANGUAGES:
        raise KalmixError(
            f"unknown language code {code!r}; known: {', '.join(LANGUAGES)} (ISO 639-1)"
        )
    return LANGUAGES[code]


def default_template_dir() -> Path:
    """The bundled templates, next to this file (package data in a wheel; `importlib.resources`
    fails on a stale editable install that maps `synth` as a namespace package)."""
    return Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class Field:
    """One JSON key of an example and the record field it fills."""

    key: str
    record: str  # query, positive, negatives, label, or meta
    min_chars: int = 1
    max_chars: int = 4000


def _render(text: str, params: dict[str, str], source: str) -> str:
    try:
        return Template(text).substitute(params)
    except (KeyError, ValueError) as err:
        raise KalmixError(f"template {source}: bad or unknown parameter {err}") from None


def _load(path: Path) -> tuple[dict[str, Any], str]:
    if not path.exists():
        raise KalmixError(f"template {path} not found")
    raw = path.read_bytes()
    return parse_toml(raw.decode(), f"template {path}"), hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class TaskTemplate:
    name: str
    task_type: str
    category: str
    brainstorm: dict[str, str]
    example: dict[str, Any]
    fields: tuple[Field, ...]
    distinct: tuple[tuple[str, str], ...]
    forms: dict[str, dict[str, str]] = field(default_factory=dict)
    hash: str = ""

    def brainstorm_prompt(self, persona: str) -> Prompt:
        """The one-shot exchange (shot persona -> shot task), then the request for `persona`."""
        b = self.brainstorm

        def user(who: str) -> str:
            return _render(b["user"], {"persona": who}, self.name)

        return Prompt(
            (
                {"role": "system", "content": b["system"]},
                {"role": "user", "content": user(b["shot_persona"])},
                {"role": "assistant", "content": b["shot_task"]},
                {"role": "user", "content": user(persona)},
            ),
            prefix=b.get("prefix", ""),
        )

    def example_prompt(
        self, persona: str, task: str, params: dict[str, str], constrain: bool = False
    ) -> Prompt:
        """The one-shot exchange, then the request for `task` with `params` filled in, led by
        the persona line: the turns before it depend only on the template and `params`' form.
        `constrain`: the prompt carries the output schema instead of the assistant prefix
        (the schema fixes the first key, and covers the completion alone)."""
        e = self.example
        shot = {**params, **e.get("shot_params", {"language": "English"}), "task": e["shot_task"]}
        who = _render(e["persona"], {"persona": _sentence_body(persona)}, self.name)
        request = _render(e["user"], {**params, "task": task}, self.name)
        return Prompt(
            (
                {"role": "system", "content": _render(e["system"], {}, self.name)},
                {"role": "user", "content": _render(e["user"], shot, self.name)},
                {"role": "assistant", "content": e["shot_output"]},
                {"role": "user", "content": f"{who}\n{request}"},
            ),
            prefix="" if constrain else e.get("prefix", ""),
            schema=self.output_schema() if constrain else None,
        )

    @property
    def schema(self) -> dict[str, Any]:
        """The example's JSON Schema: an object with exactly the template's keys, in order, each
        a text within its length bounds (`negatives`: a text or a list of texts)."""
        properties: dict[str, Any] = {}
        for f in self.fields:
            text = {"type": "string", "minLength": f.min_chars, "maxLength": f.max_chars}
            if f.record == "negatives":
                properties[f.key] = {
                    "anyOf": [text, {"type": "array", "items": text, "minItems": 1}]
                }
            else:
                properties[f.key] = text
        return {
            "type": "object",
            "properties": properties,
            "required": [f.key for f in self.fields],
            "additionalProperties": False,
        }

    def output_schema(self) -> JsonSchema:
        """`schema`, named after the task type, for a constrained prompt."""
        return JsonSchema(self.task_type, self.schema)

    @property
    def shot_values(self) -> set[str]:
        """The one-shot example's texts: a model that copies them has not done the task."""
        shot = json.loads(self.example["shot_output"])
        return {v for v in shot.values() if isinstance(v, str)}


@dataclass(frozen=True)
class PersonaTemplate:
    system: str
    user: str
    prefix: str
    shot_passage: str
    shot_persona: str
    min_words: int
    max_words: int
    max_passage_chars: int
    hash: str

    def prompt(self, passage: str) -> Prompt:
        def user(text: str) -> str:
            return _render(self.user, {"passage": text[: self.max_passage_chars]}, "persona")

        return Prompt(
            (
                {"role": "system", "content": self.system},
                {"role": "user", "content": user(self.shot_passage)},
                {"role": "assistant", "content": self.shot_persona},
                {"role": "user", "content": user(passage)},
            ),
            prefix=self.prefix,
        )


def _sentence_body(persona: str) -> str:
    """`A nurse who ...` -> `a nurse who ...`: the persona reads as 'You are a nurse who ...'."""
    persona = persona.strip().rstrip(".")
    return persona[:1].lower() + persona[1:] if persona[:2] in ("A ", "An") else persona


def task_types_available(folder: Path | None = None) -> list[str]:
    folder = folder or default_template_dir()
    return sorted(p.stem for p in folder.glob("*.toml") if p.stem in TASK_TYPES)


def load_task_template(task_type: str, folder: Path | None = None) -> TaskTemplate:
    folder = folder or default_template_dir()
    available = task_types_available(folder)
    if task_type not in available:
        raise KalmixError(
            f"no template for task type {task_type!r} in {folder}; available: "
            f"{', '.join(available)}"
        )
    path = folder / f"{task_type}.toml"
    data, digest = _load(path)
    try:
        fields = tuple(Field(**f) for f in data["fields"])
        template = TaskTemplate(
            name=task_type,
            task_type=data["task_type"],
            category=data["category"],
            brainstorm=data["brainstorm"],
            example=data["example"],
            fields=fields,
            distinct=tuple(tuple(p) for p in data.get("distinct", {}).get("pairs", [])),
            forms=data.get("forms", {}),
            hash=digest,
        )
        json.loads(template.example["shot_output"])  # the shot itself must be valid JSON
        if "persona" not in template.example:  # the last turn's line, e.g. "You are $persona."
            raise KeyError("example.persona")
    except (KeyError, TypeError, ValueError) as err:
        raise KalmixError(f"template {path} is incomplete or malformed: {err}") from None
    return template


def load_persona_template(folder: Path | None = None) -> PersonaTemplate:
    path = (folder or default_template_dir()) / "persona.toml"
    data, digest = _load(path)
    try:
        return PersonaTemplate(
            system=data["system"],
            user=data["user"],
            prefix=data.get("prefix", ""),
            shot_passage=data["shot_passage"],
            shot_persona=data["shot_persona"],
            min_words=int(data["min_words"]),
            max_words=int(data["max_words"]),
            max_passage_chars=int(data["max_passage_chars"]),
            hash=digest,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise KalmixError(f"template {path} is incomplete or malformed: {err}") from None
