"""Real raw corpora that every Debian machine can install: the registry behind `kalmix corpora`.

They are the noisy, "raw web-like" sources a curator starts from: text no one here wrote, parsed
from its format into plain text and otherwise left as it is (no dedup, no boilerplate removal,
no language filter: finding that noise is the job of kalmix's dedup, langid and consistency
steps). Each `Corpus` names its task type, category, languages, licence and the Debian package
that provides it, says whether it is installed, and reads as record-shaped Arrow tables that
`kalmix.ingest.ingest_tables` registers like any ingested file.

System paths are read under `$KALMIX_CORPORA_ROOT` when it is set (a chroot, a mounted image,
the excerpts in tests); the Python standard library is always the running interpreter's.
"""

from __future__ import annotations

import platform
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow as pa

from corpus.corpora import debian, dictd, manpages, pydocs, wordnet
from corpus.corpora.common import (
    APT_LISTS_DIR,
    ROOT_ENV,
    apt_install,
    is_root,
    package_version,
    rerooted,
    system_path,
    system_root,
)
from corpus.errors import KalmixError
from corpus.schema import suggest

Reader = Callable[[int | None, int, Counter | None], Iterator[pa.Table]]

# ISO 639-2 (FreeDict's names) -> ISO 639-1 (the record schema's); others keep three letters.
ISO1 = {
    "eng": "en", "deu": "de", "fra": "fr", "spa": "es", "ita": "it", "por": "pt", "nld": "nl",
    "swe": "sv", "pol": "pl", "rus": "ru", "jpn": "ja", "ces": "cs", "dan": "da", "fin": "fi",
    "hun": "hu", "tur": "tr", "ell": "el", "lat": "la", "bul": "bg", "hrv": "hr", "srp": "sr",
    "slk": "sk", "slv": "sl", "ukr": "uk", "ron": "ro", "kur": "ku", "gle": "ga", "cym": "cy",
    "isl": "is", "afr": "af", "ara": "ar", "hin": "hi", "zho": "zh", "kor": "ko", "swh": "sw",
    "nor": "no", "nob": "nb", "nno": "nn", "lit": "lt", "lav": "lv", "est": "et", "epo": "eo",
    "eus": "eu", "cat": "ca", "glg": "gl", "bre": "br", "oci": "oc", "tgl": "tl", "ind": "id",
    "msa": "ms", "tha": "th", "vie": "vi", "heb": "he", "fas": "fa", "hye": "hy", "kat": "ka",
    "mkd": "mk", "bos": "bs", "sqi": "sq", "gla": "gd",
}  # fmt: skip
BITEXT_CATEGORIES = {"de": "bitext-en-de", "fr": "bitext-en-fr", "es": "bitext-en-es"}
BITEXT_CATEGORIES |= {"zh": "bitext-en-zh", "ja": "bitext-en-ja"}

WORDNET = "/usr/share/wordnet"
DICTD = "/usr/share/dictd"
MAN = "/usr/share/man"
DPKG_STATUS = "/var/lib/dpkg/status"


@dataclass(frozen=True)
class Corpus:
    """One raw corpus: what it is, where it comes from, and how to read it."""

    name: str
    task_type: str
    category: str
    languages: tuple[str, ...]
    licence: str
    package: str | None  # the Debian package to install; None: nothing to install
    description: str
    provider: str  # DatasetInfo.source, e.g. debian:wordnet-base
    requires: tuple[Path, ...]  # files that must all exist (any one, with `any_of`)
    reader: Reader = field(repr=False)
    counter: Callable[[], int] | None = field(default=None, repr=False)
    any_of: bool = False

    def installed(self) -> bool:
        test = any if self.any_of else all
        return test(p.exists() for p in self.requires)

    def missing(self) -> list[Path]:
        return [p for p in self.requires if not p.exists()]

    def read(
        self, limit: int | None = None, seed: int = 0, notes: Counter | None = None
    ) -> Iterator[pa.Table]:
        """Record-shaped tables (query, positive, score, label, language, meta); with `limit`,
        a seeded sample spread over the whole source. Lazy: nothing is read before the first
        table is asked for."""
        yield from self.reader(limit, seed, notes)

    def rows(self) -> int | None:
        """The row count when it costs no more than counting lines; else None."""
        if self.counter is None or not self.installed():
            return None
        return self.counter()

    def package_version(self) -> str | None:
        if self.package:
            return package_version(self.package)
        if self.provider == "python:stdlib":
            return platform.python_version()
        return None


def _wordnet(kind: str, task_type: str, category: str, description: str) -> Corpus:
    folder = system_path(WORDNET)
    return Corpus(
        name=f"wordnet-{kind}",
        task_type=task_type,
        category=category,
        languages=("en",),
        licence="WordNet-3.0",
        package="wordnet-base",
        description=description,
        provider="debian:wordnet-base",
        requires=tuple(folder / f for f in wordnet.DATA_FILES),
        reader=lambda limit, seed, notes: wordnet.read(folder, kind, limit, seed, notes),
        counter=partial(wordnet.count_synsets, folder) if kind == "lexnames" else None,
    )


def _definitions(name: str, package: str, licence: str, description: str) -> Corpus:
    index = system_path(DICTD) / f"{name}.index"
    return Corpus(
        name=name,
        task_type="retrieval",
        category="dictionary-definitions",
        languages=("en",),
        licence=licence,
        package=package,
        description=description,
        provider=f"debian:{package}",
        requires=(index, index.with_name(f"{name}.dict.dz")),
        reader=lambda limit, seed, notes: dictd.read_definitions(index, "en", limit, seed, notes),
        counter=partial(dictd.count_entries, index),
    )


FREEDICT_LICENCES = {"eng-deu": "GPL-3+", "eng-fra": "GPL-2+", "eng-spa": "GPL-2+"}


def _freedict(pair: str) -> Corpus:
    source3, target3 = pair.split("-", 1)
    source, target = ISO1.get(source3, source3), ISO1.get(target3, target3)
    index = system_path(DICTD) / f"freedict-{pair}.index"
    category = BITEXT_CATEGORIES.get(target, "bitext-multi") if source == "en" else "bitext-multi"
    return Corpus(
        name=f"freedict-{pair}",
        task_type="bitext",
        category=category,
        languages=(source, target),
        licence=FREEDICT_LICENCES.get(pair, f"see /usr/share/doc/dict-freedict-{pair}/copyright"),
        package=f"dict-freedict-{pair}",
        description=f"FreeDict {source3}-{target3}: headword -> translations, with grammar tags",
        provider=f"debian:dict-freedict-{pair}",
        requires=(index, index.with_name(f"freedict-{pair}.dict.dz")),
        reader=lambda limit, seed, notes: dictd.read_translations(
            index, source, target, limit, seed, notes
        ),
        counter=partial(dictd.count_entries, index),
    )


def _manpages() -> Corpus:
    root = system_path(MAN)
    return Corpus(
        name="manpages",
        task_type="retrieval",
        category="man-page-retrieval",
        languages=tuple(manpages.languages(root)) if root.is_dir() else ("en",),
        licence="per page (GPL-2+, BSD, ...)",
        package="manpages",
        description="every installed man page (translations too): NAME line -> DESCRIPTION",
        provider="debian:manpages",
        requires=(root / "man7" / "man-pages.7.gz",),
        reader=lambda limit, seed, notes: manpages.read(root, limit, seed, notes),
    )


def _debian() -> Corpus:
    lists, status = system_path(APT_LISTS_DIR), system_path(DPKG_STATUS)
    return Corpus(
        name="debian-packages",
        task_type="retrieval",
        category="package-description-retrieval",
        languages=("en",),
        licence="per package (archive metadata)",
        package=None,
        description="apt lists: synopsis -> long description (or name -> synopsis where the "
        "long text is not on the machine); every -dev/-doc/-dbg near-copy kept",
        provider="debian:apt-lists",
        requires=(lists, status),
        reader=lambda limit, seed, notes: debian.read(lists, status, limit, seed, notes),
        any_of=True,
    )


def _pydocs() -> Corpus:
    root = pydocs.stdlib_root()
    return Corpus(
        name="python-docs",
        task_type="retrieval",
        category="docstring-retrieval",
        languages=("en",),
        licence="PSF-2.0",
        package=None,
        description=f"Python {platform.python_version()} standard library docstrings, read "
        "with ast: summary line -> body",
        provider="python:stdlib",
        requires=(root / "os.py",),
        reader=lambda limit, seed, notes: pydocs.read(root, limit, seed, notes),
    )


def registry() -> dict[str, Corpus]:
    """Every known corpus by name; FreeDict pairs beyond the three fixed ones when installed."""
    found = [
        _wordnet(
            "gloss",
            "retrieval",
            "dictionary-definitions",
            "WordNet synsets: first lemma, and each usage example -> definition",
        ),
        _wordnet(
            "synonyms",
            "pair_classification",
            "synonym-pairs",
            "WordNet synsets: first lemma paired with each other lemma (score 1)",
        ),
        _wordnet(
            "lexnames",
            "classification",
            "word-sense-classification",
            "WordNet definitions labelled by lexicographer file (noun.animal, verb.motion, ...)",
        ),
        _definitions(
            "gcide",
            "dict-gcide",
            "GPL-2+",
            "GNU Collaborative International Dictionary of English (Webster 1913 + WordNet)",
        ),
        _definitions(
            "foldoc",
            "dict-foldoc",
            "GFDL-1.1+",
            "Free On-line Dictionary of Computing: term -> definition",
        ),
        _manpages(),
        _debian(),
        _pydocs(),
    ]
    pairs = ["eng-deu", "eng-fra", "eng-spa"]
    dictd_dir = system_path(DICTD)
    if dictd_dir.is_dir():
        for index in sorted(dictd_dir.glob("freedict-*-*.index")):
            pair = index.name.removeprefix("freedict-").removesuffix(".index")
            if pair not in pairs and pair.count("-") == 1:
                pairs.append(pair)
    found.extend(_freedict(pair) for pair in pairs)
    return {c.name: c for c in found}


def get(name: str) -> Corpus:
    """The corpus called `name`, or an error that lists the known ones."""
    known = registry()
    if name not in known:
        raise KalmixError(
            f"unknown corpus {name!r}{suggest(name, list(known))} "
            f"(known: {', '.join(known)}; see: kalmix corpora list)"
        )
    return known[name]


def ensure_installed(
    corpus: Corpus,
    *,
    as_root: bool | None = None,
    status: Callable[[str], None] | None = None,
) -> None:
    """Make sure the corpus' files are there: install its Debian package when running as root,
    else fail with the one command to run. Nothing else in kalmix touches the network."""
    if corpus.installed():
        return
    missing = ", ".join(str(p) for p in corpus.missing())
    if rerooted():
        raise KalmixError(
            f"corpus {corpus.name}: {missing} not found under {ROOT_ENV}={system_root()}"
        )
    if corpus.package is None:
        raise KalmixError(
            f"corpus {corpus.name} reads {missing}, which this machine lacks "
            f"(it needs a Debian system{'' if corpus.any_of else ' with those files'})"
        )
    if package_version(corpus.package):
        raise KalmixError(
            f"package {corpus.package} is installed but {missing} is missing (excluded by "
            f"dpkg path-exclude in /etc/dpkg/dpkg.cfg.d/?); reinstall it with: "
            f"sudo apt-get install --reinstall {corpus.package}"
        )
    if not (is_root() if as_root is None else as_root):
        raise KalmixError(
            f"corpus {corpus.name} needs the Debian package {corpus.package}; "
            f"install it with: sudo apt-get install {corpus.package}"
        )
    apt_install(corpus.package, status)
    if not corpus.installed():
        raise KalmixError(
            f"apt-get installed {corpus.package} but {missing} is still missing "
            "(excluded by dpkg path-exclude in /etc/dpkg/dpkg.cfg.d/?)"
        )
