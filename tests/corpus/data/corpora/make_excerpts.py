"""Cut the test excerpts in this folder from the installed Debian files (run as root on Debian).

    python tests/corpus/data/corpora/make_excerpts.py

The folder mirrors the system paths it excerpts (`usr/share/wordnet`, `usr/share/dictd`,
`usr/share/man`, `var/lib/apt/lists`, `var/lib/dpkg/status`), so tests read it through
`KALMIX_CORPORA_ROOT`. The Python docstrings corpus needs no excerpt: the running
interpreter's standard library is on every machine. See README.md.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64(n: int) -> str:
    out = ""
    while True:
        out = B64[n % 64] + out
        n //= 64
        if not n:
            return out


def unb64(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + B64.index(c)
    return n


def spread(items: list, n: int) -> list:
    step = max(len(items) // n, 1)
    return items[step // 2 :: step][:n]


def wordnet() -> None:
    out = HERE / "usr/share/wordnet"
    out.mkdir(parents=True, exist_ok=True)
    wanted = {"data.noun": ["00217014", "00217593"], "data.verb": ["00100905"]}
    wanted["data.adj"] = ["00002312"]
    for name in ("data.noun", "data.verb", "data.adj", "data.adv"):
        lines = Path("/usr/share/wordnet", name).read_text().splitlines()
        header = [x for x in lines if x.startswith("  ")][:3]
        body = [x for x in lines if not x.startswith("  ")]
        keep = {x for x in body if x.split(" ", 1)[0] in wanted.get(name, [])}
        keep |= set(spread(body, 5))
        (out / name).write_text("\n".join(header + [x for x in body if x in keep]) + "\n")


def dictd(name: str, special: list[str], n: int = 18) -> None:
    out = HERE / "usr/share/dictd"
    out.mkdir(parents=True, exist_ok=True)
    src = Path("/usr/share/dictd")
    lines = (src / f"{name}.index").read_text(encoding="utf-8").split("\n")
    lines = [x for x in lines if x]
    chosen = set(spread(lines, n)) | {x for x in lines if x.split("\t")[0] in special}
    data = gzip.decompress((src / f"{name}.dict.dz").read_bytes())
    blob = b""
    moved: dict[tuple[int, int], int] = {}
    index = []
    for line in lines:
        if line not in chosen:
            continue
        head, off, length = line.split("\t")[:3]
        key = (unb64(off), unb64(length))
        if key not in moved:  # several headwords may share one definition: keep that
            moved[key] = len(blob)
            blob += data[key[0] : key[0] + key[1]]
        index.append(f"{head}\t{b64(moved[key])}\t{b64(key[1])}")
    (out / f"{name}.index").write_text("\n".join(index) + "\n", encoding="utf-8")
    (out / f"{name}.dict.dz").write_bytes(gzip.compress(blob, mtime=0))


MAN = [
    "man1/ls.1.gz",
    "man1/grep.1.gz",
    "man1/gcloud_alpha_dataflow_jobs_config.1.gz",
    "man1/gcloud_alpha_dns_response-policies_rules_describe.1.gz",
    "man1/gcloud_alpha_composer_environments_check-upgrade.1.gz",
    "man1/addr2line.1.gz",
    "man5/editrc.5edit.gz",
    "man5/environment.5.gz",
    "man5/utmp.5.gz",
    "man7/man-pages.7.gz",
    "man8/add-shell.8.gz",
    "man2/_exit.2.gz",
    "de/man1/apt-transport-mirror.1.gz",
    "ja/man1/chfn.1.gz",
    "hu/man1/chsh.1.gz",
    "fr/man1/apropos.1.gz",
    "ru/man1/chage.1.gz",
    "zh_CN/man1/chfn.1.gz",
    "pt_BR/man1/free.1.gz",
]


def manpages() -> None:
    out = HERE / "usr/share/man"
    for rel in MAN:
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path("/usr/share/man") / rel, target)
    link = out / "man5/utmpx.5.gz"
    if not link.is_symlink():
        os.symlink("utmp.5.gz", link)


def stanzas(text: str) -> dict[str, str]:
    return {b.split("\n", 1)[0].removeprefix("Package: "): b for b in text.split("\n\n") if b}


def debian() -> None:
    lists = HERE / "var/lib/apt/lists"
    lists.mkdir(parents=True, exist_ok=True)
    src = Path("/var/lib/apt/lists")
    main = "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"
    security = "deb.debian.org_debian-security_dists_bookworm-security_main_binary-amd64_Packages"

    def cat(name: str) -> str:
        return subprocess.run(
            ["/usr/lib/apt/apt-helper", "cat-file", str(src / f"{name}.lz4")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    family = ["libaom3", "libaom-dev", "libaom-doc", "aom-tools", "libacl1", "libacl1-dev"]
    family += ["adduser", "0ad", "0ad-data", "0ad-data-common"]
    by_name = stanzas(cat(main))
    keep = family + [p for p in spread(sorted(by_name), 10) if p not in family]
    text = "\n\n".join(by_name[p] for p in sorted(keep)) + "\n\n"
    lz4 = subprocess.run(["lz4", "-q", "-c"], input=text.encode(), capture_output=True, check=True)
    (lists / f"{main}.lz4").write_bytes(lz4.stdout)
    sec = stanzas(cat(security))
    sec_keep = ["libaom3", "libaom-dev"] + spread(sorted(sec), 3)
    sec_text = "\n\n".join(sec[p] for p in sorted(set(sec_keep))) + "\n\n"
    (lists / f"{security}.xz").write_bytes(lzma.compress(sec_text.encode()))
    status = stanzas(Path("/var/lib/dpkg/status").read_text())
    status_keep = ["adduser", "libacl1", "libaom3", "wordnet-base", "dict-gcide", "manpages"]
    dpkg = HERE / "var/lib/dpkg"
    dpkg.mkdir(parents=True, exist_ok=True)
    (dpkg / "status").write_text("\n\n".join(status[p] for p in status_keep) + "\n\n")
    # Translation-en in apt's format, from the dpkg status text of two packages whose version
    # matches the list: Description-md5 is md5(Description + "\n"), checked against the list.
    out = []
    for package in ("adduser", "libacl1"):
        lines = status[package].split("\nDescription: ", 1)[1].split("\n")
        cut = next((i for i, x in enumerate(lines[1:], 1) if not x.startswith(" ")), len(lines))
        body = lines[:cut]
        md5 = hashlib.md5(("\n".join(body) + "\n").encode()).hexdigest()
        assert f"Description-md5: {md5}" in by_name[package], package
        out.append(
            f"Package: {package}\nDescription-md5: {md5}\nDescription-en: " + "\n".join(body)
        )
    (lists / "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en").write_text(
        "\n\n".join(out) + "\n\n"
    )


if __name__ == "__main__":
    wordnet()
    dictd("gcide", ["00-database-short", "00-database-url", "Black Friday", "Lifeless"])
    dictd("foldoc", ["00-database-short", "legacy", "legacy code", "legacy system"])
    dictd("freedict-eng-deu", ["00-database-info", "", "agonise"])
    dictd("freedict-eng-fra", ["00databasealphabet", "inquiry"])
    dictd("freedict-eng-spa", ["00databaseinfo", "increase"])
    manpages()
    debian()
