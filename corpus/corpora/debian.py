"""Debian package descriptions: synopsis -> long description, from the machine's apt lists.

Sources, in the order apt itself uses them:
- `/var/lib/apt/lists/*_Packages*`: one deb822 stanza per package and archive (bookworm,
  -updates, -security: the same package two or three times, and every `-dev`, `-doc`, `-dbg`
  with a near-copy of its library's text; all kept, for dedup to find). Compressed lists
  (`.lz4`, `.zst`) are read with `/usr/lib/apt/apt-helper cat-file`, which knows every
  compressor apt does; `.xz`, `.gz`, `.bz2` and plain lists need only Python.
- The long descriptions: modern Packages files carry only the synopsis (`Description-md5`
  points into `*_i18n_Translation-en*`); where apt was told to fetch no translations (Docker
  images set `Acquire::Languages "none"`) the long text exists only for installed packages, in
  `/var/lib/dpkg/status`. A stanza whose long text is nowhere on the machine still gives a
  pair: its package name -> its synopsis (marked `"pair": "name"` in meta), so the archive's
  near-duplicate package families stay in the corpus.
- Translations into other languages (`Translation-de`, ...) when present: their own rows,
  in their language.
- No lists at all: `/var/lib/dpkg/status` alone.

A long description is deb822 text: continuation lines start with a space, ` .` is a blank line,
lines starting with two spaces are preformatted (kept as lines).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from corpus.corpora.common import Row, count, sample_rows
from corpus.errors import KalmixError

APT_HELPER = "/usr/lib/apt/apt-helper"
_COMPRESSED = (".lz4", ".zst", ".xz", ".gz", ".bz2", ".lzma")


@dataclass(frozen=True)
class Stanza:
    package: str
    fields: dict[str, str]
    file: str
    line: int


def read_list(path: Path) -> str:
    """A list file's text, decompressed by its name."""
    name = path.name
    try:
        if name.endswith((".lz4", ".zst")):
            helper = APT_HELPER if Path(APT_HELPER).exists() else shutil.which("apt-helper")
            if helper is None:
                raise KalmixError(f"{path} needs {APT_HELPER} (Debian's apt) to decompress")
            done = subprocess.run([helper, "cat-file", str(path)], capture_output=True, check=False)
            if done.returncode != 0:
                why = done.stderr.decode(errors="replace").strip().splitlines()
                raise KalmixError(
                    f"{path}: apt-helper cat-file failed ({why[-1] if why else done.returncode}):"
                    " the list is corrupt or truncated; refresh it with: sudo apt-get update"
                )
            blob = done.stdout
        elif name.endswith((".xz", ".lzma")):
            blob = lzma.decompress(path.read_bytes())
        elif name.endswith(".gz"):
            blob = gzip.decompress(path.read_bytes())
        elif name.endswith(".bz2"):
            blob = bz2.decompress(path.read_bytes())
        else:
            blob = path.read_bytes()
    except (OSError, EOFError, lzma.LZMAError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise KalmixError(f"{path} not found") from None
        raise KalmixError(
            f"{path}: cannot decompress ({err}): the list is corrupt or truncated; "
            "refresh it with: sudo apt-get update"
        ) from None
    return blob.decode("utf-8", errors="replace")


def parse_stanzas(text: str, file: str) -> Iterator[Stanza]:
    """deb822 stanzas; a stanza without `Package:` is an error naming the file and line."""
    line_no = 1
    for block in re.split(r"\n[ \t]*\n", text):
        start = line_no
        line_no += block.count("\n") + 2
        if not block.strip():
            continue
        fields: dict[str, str] = {}
        key = None
        for line in block.split("\n"):
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
            elif line.strip() and not line.startswith("#"):
                key = None
        package = fields.get("Package")
        if not package:
            raise KalmixError(
                f"{file}: the stanza at line {start} has no Package field "
                f"({block.strip()[:60]!r}): the file is corrupt or truncated"
            )
        yield Stanza(package, fields, file, start)


def long_text(description: str) -> tuple[str, str]:
    """`Description` value -> (synopsis, long description as plain text)."""
    synopsis, _, rest = description.partition("\n")
    paras: list[str] = []
    current: list[str] = []
    for raw in rest.split("\n"):
        line = raw[1:] if raw.startswith(" ") else raw
        if line.strip() == ".":
            paras.append(" ".join(current))
            current = []
        elif line.startswith(" "):  # preformatted
            paras.append(" ".join(current))
            current = []
            paras.append(line.rstrip())
        elif line.strip():
            current.append(line.strip())
    paras.append(" ".join(current))
    return synopsis.strip(), "\n".join(p for p in paras if p.strip())


def list_files(lists: Path, kind: str) -> list[Path]:
    """`*_Packages*` or `*_Translation-*` files of an apt lists folder, one per archive."""
    if not lists.is_dir():
        return []
    found = sorted(p for p in lists.iterdir() if p.is_file() and f"_{kind}" in p.name)
    by_base: dict[str, Path] = {}
    for p in found:  # a list may be present twice (plain and compressed): keep one
        base = p.name
        for suffix in _COMPRESSED:
            base = base.removesuffix(suffix)
        if base.endswith(".diff") or "/" in base:
            continue
        by_base.setdefault(base, p)
    return sorted(by_base.values())


@dataclass(frozen=True)
class Unit:
    stanza: Stanza
    long: str | None  # the long description, when found
    found_in: str | None
    language: str


def _translations(lists: Path) -> dict[str, dict[tuple[str, str], str]]:
    """language -> {(package, Description-md5): Description-<lang> value}."""
    out: dict[str, dict[tuple[str, str], str]] = {}
    for path in list_files(lists, "Translation-"):
        lang = re.sub(r".*_Translation-([A-Za-z_]+).*", r"\1", path.name)
        table = out.setdefault(lang, {})
        for st in parse_stanzas(read_list(path), path.name):
            text = st.fields.get(f"Description-{lang}")
            if text:
                table[(st.package, st.fields.get("Description-md5", ""))] = text
    return out


def units(lists: Path, status: Path, notes: Counter | None = None) -> list[Unit]:
    """One unit per Packages stanza (and per non-English translation), with its long text."""
    installed: dict[tuple[str, str], str] = {}
    status_stanzas: list[Stanza] = []
    if status.exists():
        status_stanzas = list(parse_stanzas(read_list(status), str(status)))
        for st in status_stanzas:
            synopsis, long = long_text(st.fields.get("Description", ""))
            if long:
                installed[(st.package, synopsis)] = long
    packages = list_files(lists, "Packages")
    if not packages:
        return [
            Unit(st, long_text(st.fields.get("Description", ""))[1] or None, "dpkg-status", "en")
            for st in status_stanzas
            if st.fields.get("Description")
        ]
    translations = _translations(lists)
    english = translations.pop("en", {})
    out: list[Unit] = []
    for path in packages:
        for st in parse_stanzas(read_list(path), path.name):
            description = st.fields.get("Description")
            if not description:
                count(notes, "stanza without Description")
                continue
            synopsis, long = long_text(description)
            found = "Packages" if long else None
            if not long:
                key = (st.package, st.fields.get("Description-md5", ""))
                if key in english:
                    long, found = long_text(english[key])[1], "Translation-en"
                elif (st.package, synopsis) in installed:
                    long, found = installed[(st.package, synopsis)], "dpkg-status"
            out.append(Unit(st, long or None, found, "en"))
            for lang, table in translations.items():
                text = table.get((st.package, st.fields.get("Description-md5", "")))
                if text:
                    out.append(Unit(Stanza(st.package, {**st.fields, "Description": text},
                                           st.file, st.line), None, f"Translation-{lang}",
                                    lang.split("_")[0].lower()))  # fmt: skip
    return out


def unit_row(unit: Unit) -> Iterator[Row]:
    st = unit.stanza
    synopsis, long = long_text(st.fields.get("Description", ""))
    long = unit.long or long
    meta = {
        "package": st.package,
        "version": st.fields.get("Version"),
        "section": st.fields.get("Section"),
        "architecture": st.fields.get("Architecture"),
        "list": st.file,
        "description_from": unit.found_in,
    }
    if long:
        yield {"query": synopsis, "positive": long, "language": unit.language, "meta": meta}
    elif synopsis:
        yield {
            "query": st.package,
            "positive": synopsis,
            "language": unit.language,
            "meta": {**meta, "pair": "name"},
        }


def read(
    lists: Path,
    status: Path,
    limit: int | None = None,
    seed: int = 0,
    notes: Counter | None = None,
) -> Iterator[pa.Table]:
    """Package descriptions of the apt lists (or dpkg status) as record tables."""
    found = units(lists, status, notes)
    if notes is not None:
        for unit in found:
            if not unit.long and unit.found_in is None:
                notes["name -> synopsis (no long description on this machine)"] += 1
    return sample_rows(found, unit_row, limit, seed)
