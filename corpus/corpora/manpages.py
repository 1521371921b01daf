"""Manual pages: every page under /usr/share/man (Debian `manpages` and whatever else is installed),
as NAME line -> DESCRIPTION section, translated pages included.

A page is roff source (gzip'd) using the man(7) macros, or the BSD mdoc(7) ones. This is a
converter to plain text, not a typesetter: requests that only lay out (`.PP`, `.RS`, `.in`...)
become paragraph breaks or nothing, font macros (`.B`, `.BR`...) and escapes (`\\fB`, `\\-`,
`\\(em`, `\\[u00E9]`...) become their characters, macro definitions and conditionals are
dropped, tables keep their cells. Only the NAME and DESCRIPTION sections are converted.

Translated pages live in `/usr/share/man/<lang>/manN/`; the language is the folder's (`pt_BR`
-> `pt`), and their section headings are translated too (`BESCHREIBUNG`, `ОПИСАНИЕ`, `説明`):
DESCRIPTION is the section whose heading is one of the known translations, else the longest
section after NAME. NAME is always the first section.

A symlink or `.so` stub is another name of a page that is read under its own name, so it is not
a page of its own; pages without a NAME or a DESCRIPTION are counted, not silently lost. The
gcloud pages (16k near-identical `gcloud alpha ...` pages on some machines) are kept: real
templated near-duplicates are what dedup is for.
"""

from __future__ import annotations

import gzip
import os
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from corpus.corpora.common import Row, count, sample_rows

DESCRIPTION_HEADINGS = {
    "DESCRIPTION",
    "BESCHREIBUNG",
    "DESCRIPCIÓN",
    "DESCRIPCION",
    "DESCRIZIONE",
    "DESCRIÇÃO",
    "DESCRIERE",
    "DESKRIPSI",
    "BESCHRIJVING",
    "BESKRIVNING",
    "BESKRIVELSE",
    "BESKRIVING",
    "KUVAUS",
    "POPIS",
    "OPIS",
    "LEÍRÁS",
    "AÇIKLAMA",
    "ОПИСАНИЕ",
    "ОПИС",
    "説明",
    "解説",
    "설명",
    "描述",
    "说明",
    "說明",
}

# Two-character glyph names of groff_char(7) that pages use; unknown names become nothing.
GLYPHS = {
    "em": "—",
    "en": "–",
    "hy": "-",
    "mi": "-",
    "aq": "'",
    "dq": '"',
    "lq": "“",
    "rq": "”",
    "oq": "‘",
    "cq": "’",
    "Fo": "«",
    "Fc": "»",
    "fo": "‹",
    "fc": "›",
    "bu": "•",
    "co": "©",
    "rg": "®",
    "tm": "™",
    "mu": "×",
    "di": "÷",
    "de": "°",
    "+-": "±",
    "<=": "≤",
    ">=": "≥",
    "!=": "≠",
    "==": "≡",
    "->": "→",
    "<-": "←",
    "ga": "`",
    "ti": "~",
    "ha": "^",
    "rs": "\\",
    "sl": "/",
    "ba": "|",
    "br": "│",
    "ul": "_",
    "ru": "_",
    "fm": "′",
    "sq": "□",
    "ci": "○",
    "or": "|",
    "ss": "ß",
    "ae": "æ",
    "AE": "Æ",
    "oe": "œ",
    "OE": "Œ",
    "o/": "ø",
    "O/": "Ø",
    "Eu": "€",
    "eu": "€",
    "Po": "£",
    "ct": "¢",
    "Ye": "¥",
    "S1": "¹",
    "S2": "²",
    "S3": "³",
    "12": "½",
    "14": "¼",
    "34": "¾",
    "pl": "+",
    "eq": "=",
    "**": "∗",
    "at": "@",
    "sh": "#",
    "dg": "†",
    "ps": "¶",
    "sc": "§",
    "lB": "[",
    "rB": "]",
    "lC": "{",
    "rC": "}",
    "la": "⟨",
    "ra": "⟩",
}
_ACCENTS = {
    "'": "\u0301",
    "`": "\u0300",
    "^": "\u0302",
    ":": "\u0308",
    "~": "\u0303",
    ",": "\u0327",
}
# Predefined strings (`\*(lq`, and pod2man's `\*(C`...`\*(C'` around code).
STRINGS = {"lq": "“", "rq": "”", "R": "®", "Tm": "™", "C`": '"', "C'": '"', "C+": "C++"}

_ESCAPE = re.compile(
    r"""\\(?:
      \((?P<glyph>..)
    | \[(?P<named>[^\]]*)\]
    | \*(?:\((?P<s2>..)|\[(?P<sn>[^\]]*)\]|(?P<s1>.))
    | f(?:\(..|\[[^\]]*\]|.)
    | s[+-]?(?:\(\d\d|\[[^\]]*\]|\d)
    | [nmgFMYV$](?:\(..|\[[^\]]*\]|.)
    | N'(?P<code>\d+)'
    | [hvwlLDxbXoZAR]'[^']*'
    | k.
    | (?P<one>.)
    )""",
    re.VERBOSE | re.DOTALL,
)
_SINGLE = {
    "-": "-",
    "e": "\\",
    "\\": "\\",
    " ": " ",
    "~": " ",
    "0": " ",
    "t": " ",
    "'": "'",
    "`": "`",
    ".": ".",
    "_": "_",
}
_ARGS = re.compile(r'"((?:[^"]|"")*)"?|(\S+)')

MAN_FONTS = {"B": " ", "I": " ", "SM": " ", "SB": " ", "BR": "", "BI": "", "IB": "", "IR": ""}
MAN_FONTS |= {"RB": "", "RI": "", "CW": " ", "CB": " "}
BREAKS = {"PP", "LP", "P", "HP", "TP", "TQ", "sp", "br", "Pp", "Lp", "Bl", "El", "Bd", "Ed"}
MDOC_DROP = {
    "Ar", "Cm", "Pa", "Li", "Em", "Sy", "Dv", "Ev", "Er", "Va", "Fn", "Fa", "Ft", "Ic", "Ad",
    "An", "Lk", "Mt", "Ms", "Tn", "Vt", "Fd", "In", "Cd", "No", "Bf", "Ef", "Ek", "Bk", "Ot",
    "Nm", "Ox", "Ux", "Bx", "Fx", "Nx", "Dx", "At", "Bsx", "St", "Lb", "Rv", "Ex", "Ta", "Sx",
    "Aq", "Ao", "Ac", "Bq", "Bo", "Bc", "Brq", "Bro", "Brc", "Eo", "Ec", "Qo", "Qc", "Qq", "So",
    "Sc", "Po", "Pc", "Do", "Dc", "Xo", "Xc", "Oo", "Oc", "Op", "Dq", "Ql", "Sq", "Pq", "Ns",
    "Xr", "Fl", "It", "D1", "Dl", "Nd", "Fo", "Fc",
}  # fmt: skip
_OPEN = {"Op": ("[", "]"), "Dq": ("“", "”"), "Sq": ("‘", "’"), "Ql": ("‘", "’"), "Pq": ("(", ")")}
_OPEN |= {"Aq": ("⟨", "⟩"), "Bq": ("[", "]"), "Brq": ("{", "}"), "Qq": ('"', '"')}
_WORD = {"Oo": "[", "Oc": "]", "Ux": "UNIX", "Bx": "BSD", "At": "AT&T UNIX", "Fx": "FreeBSD"}
_WORD |= {"Nx": "NetBSD", "Ox": "OpenBSD", "Dx": "DragonFly", "Bsx": "BSD/OS", "Nd": "-"}
SKIP_TO_DOTS = {"de", "de1", "am", "am1", "ig", "dei", "ami"}


def _escape(match: re.Match) -> str:
    if glyph := match.group("glyph"):
        if glyph in GLYPHS:
            return GLYPHS[glyph]
        if glyph[0] in _ACCENTS:  # \('e -> é
            return unicodedata.normalize("NFC", glyph[1] + _ACCENTS[glyph[0]])
        return ""
    if (named := match.group("named")) is not None:
        if named.startswith("u") and all(c in "0123456789ABCDEFabcdef_" for c in named[1:]):
            try:
                return unicodedata.normalize(
                    "NFC", "".join(chr(int(p, 16)) for p in named[1:].split("_"))
                )
            except ValueError:
                return ""
        return GLYPHS.get(named, "")
    if (s := match.group("s2") or match.group("sn") or match.group("s1")) is not None:
        return STRINGS.get(s, "")
    if code := match.group("code"):
        return chr(int(code)) if int(code) < 0x110000 else ""
    if (one := match.group("one")) is not None:
        return _SINGLE.get(one, "" if one in "&|^%:){}cdurpzE\n" else one)
    return ""


def unescape(text: str) -> str:
    """roff escapes to their characters: `\\fBls\\fR \\- list` -> `ls - list`."""
    if "\\" not in text:
        return text
    text = re.sub(r'\\".*', "", text)  # a comment runs to the end of the line
    return _ESCAPE.sub(_escape, text)


def split_args(text: str) -> list[str]:
    """Macro arguments, double quotes grouping (`""` inside is a literal quote)."""
    return [
        m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2)
        for m in _ARGS.finditer(text)
    ]


def _mdoc(name: str, args: list[str]) -> str:
    """An mdoc line's text: macro names dropped, `Fl x` -> `-x`, `Xr ls 1` -> `ls(1)`."""
    words: list[str] = []
    closing: list[str] = []
    glue = False
    tokens = [name, *args]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok in MDOC_DROP:
            if tok == "Fl":
                flag = tokens[i] if i < len(tokens) and tokens[i] not in MDOC_DROP else ""
                i += 1 if flag else 0
                words.append("-" + flag)
            elif tok == "Xr" and i + 1 < len(tokens):
                words.append(f"{tokens[i]}({tokens[i + 1]})")
                i += 2
            elif tok == "Ns":
                glue = True
                continue
            elif tok in _OPEN:
                words.append(_OPEN[tok][0])
                closing.append(_OPEN[tok][1])
                glue = True
                continue
            elif tok in _WORD:
                words.append(_WORD[tok])
            continue
        if words and (glue or re.fullmatch(r"[.,:;)\]?!]+", tok)):
            words[-1] += tok
        else:
            words.append(tok)
        glue = False
    text = " ".join(words)
    for close in reversed(closing):
        text += close
    return unescape(text.replace("\\&", ""))


def sections(lines: list[str]) -> list[tuple[str, list[str]]]:
    """The page cut at `.SH`/`.Sh` into (heading, source lines); a heading may be the next line."""
    out: list[tuple[str, list[str]]] = []
    pending = False
    for line in lines:
        m = re.match(r"^[.']\s*(SH|Sh)\b\s*(.*)$", line)
        if m:
            heading = unescape(m.group(2)).strip()
            pending = not heading
            out.append((" ".join(split_args(heading)), []))
        elif pending and out and not line.startswith((".", "'")):
            out[-1] = (unescape(line).strip().strip('"'), [])
            pending = False
        elif out:
            out[-1][1].append(line)
    return out


def to_text(lines: list[str]) -> str:
    """One section's roff source as plain text: paragraphs on lines of their own."""
    paras: list[str] = []
    current: list[str] = []
    nofill = False
    skip_until_dots = False
    depth = 0
    table = 0  # 0: not in a table; 1: options/format lines; 2: data

    def flush() -> None:
        joined = " ".join(" ".join(current).split())
        if joined:
            paras.append(joined)
        current.clear()

    for raw in lines:
        if skip_until_dots:
            skip_until_dots = not raw.startswith("..")
            continue
        if depth:
            depth += raw.count("\\{") - raw.count("\\}")
            depth = max(depth, 0)
            continue
        if raw.startswith((".", "'")):
            body = raw[1:].lstrip()
            if body.startswith('\\"') or not body:
                continue
            name, _, rest = body.partition(" ")
            name = name.split("\t")[0]
            if name in SKIP_TO_DOTS:
                skip_until_dots = True
                continue
            if name in ("if", "ie", "el", "while"):
                depth = max(raw.count("\\{") - raw.count("\\}"), 0)
                continue
            if name in ("TS", "TE"):
                table = 1 if name == "TS" else 0
                flush()
                continue
            if name in ("EQ", "EN"):
                continue
            if name in ("nf", "EX") or (name == "Bd" and "-literal" in rest):
                flush()
                nofill = True
                continue
            if name in ("fi", "EE", "Ed"):
                flush()
                nofill = False
                continue
            args = split_args(rest)
            if name in MAN_FONTS:
                current.append(unescape(MAN_FONTS[name].join(args)))
            elif name in ("IP", "It", "SS", "Ss", "D1", "Dl"):
                flush()
                text = _mdoc(name, args) if name in ("It", "D1", "Dl") else " ".join(args[:1])
                current.append(unescape(text) if name in ("IP", "SS", "Ss") else text)
                if name in ("SS", "Ss"):
                    flush()
            elif name in ("UR", "MT", "SY", "OP"):
                current.append(unescape(" ".join(args)))
            elif name in BREAKS:
                flush()
            elif name in MDOC_DROP:
                current.append(_mdoc(name, args))
            if nofill:
                flush()
            continue
        if table == 1:
            if raw.rstrip().endswith("."):
                table = 2
            continue
        text = unescape(raw.replace("\t", " ") if table else raw)
        if not raw.strip():
            flush()
            continue
        current.append(text)
        if nofill:
            flush()
    flush()
    return "\n".join(paras)


def language_of(folder: str) -> str:
    """`de`, `pt_BR`, `sr@latin`, `de.UTF-8` -> the ISO 639 code (`de`, `pt`, `sr`)."""
    return re.split(r"[_.@]", folder, maxsplit=1)[0].lower()


def page_files(root: Path) -> list[Path]:
    """Every page file under a man root: `manN/*` and `<lang>/manN/*`, symlinks left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).parts
        if not rel or not rel[-1].startswith("man"):
            continue
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not path.is_symlink():
                found.append(path)
    return found


def read_page(path: Path) -> bytes:
    with path.open("rb") as f:
        head = f.read(2)
        f.seek(0)
        blob = f.read()
    if head == b"\x1f\x8b":
        return gzip.decompress(blob)
    if path.suffix in (".xz", ".lzma"):
        import lzma

        return lzma.decompress(blob)
    if path.suffix == ".bz2":
        import bz2

        return bz2.decompress(blob)
    return blob


def page_row(path: Path, root: Path, notes: Counter | None = None) -> Iterator[Row]:
    """The page as one row, or none (counted) if it has no NAME or DESCRIPTION."""
    try:
        blob = read_page(path)
    except (OSError, EOFError, zlib.error, ValueError):
        count(notes, "unreadable or truncated page file")
        return
    try:
        source = blob.decode("utf-8")
    except UnicodeDecodeError:
        count(notes, "pages not UTF-8 (read as Latin-1)")
        source = blob.decode("latin-1")
    lines = source.replace("\r\n", "\n").split("\n")
    if any(line.startswith(".so ") for line in lines[:3]) and len(source) < 400:
        count(notes, "alias page (.so)")
        return
    parts = sections(lines)
    if not parts:
        count(notes, "no sections")
        return
    name = to_text(parts[0][1])
    rest = parts[1:]
    body = next((s for s in rest if s[0].upper() in DESCRIPTION_HEADINGS), None)
    if body is None and rest:
        body = max(rest, key=lambda s: sum(len(x) for x in s[1]))
    description = to_text(body[1]) if body else ""
    if not name:
        count(notes, "no NAME line")
        return
    if not description:
        count(notes, "no DESCRIPTION")
        return
    rel = path.relative_to(root)
    lang = language_of(rel.parts[0]) if len(rel.parts) > 2 else "en"
    stem = path.name.removesuffix(".gz").removesuffix(".xz").removesuffix(".bz2")
    page, _, section = stem.rpartition(".")
    yield {
        "query": name,
        "positive": description,
        "language": lang,
        "meta": {"page": page or stem, "section": section, "file": str(rel), "heading": body[0]},
    }


def read(
    root: Path,
    limit: int | None = None,
    seed: int = 0,
    notes: Counter | None = None,
) -> Iterator[pa.Table]:
    """Every installed man page under `root` (normally /usr/share/man) as record tables."""
    return sample_rows(page_files(root), lambda p: page_row(p, root, notes), limit, seed)


def languages(root: Path) -> list[str]:
    """Languages with a page folder, for the listing (English first)."""
    found = {language_of(p.name) for p in root.iterdir() if p.is_dir() and "man" != p.name[:3]}
    return ["en", *sorted(found - {"en"})]
