"""The demo model's corpus: four labelled text domains that every machine has offline.

| domain | source | documents |
|---|---|---|
| wiki | English Wikipedia excerpt (wikitext cleaned to prose) in the `gensim` 4.4.0 wheel | article |
| news | Lee news corpus (`lee_background.cor` + `lee.cor`) in the same wheel | news story |
| code | the running interpreter's standard library `.py` files (tests excluded), capped | source file |
| docs | the Python language reference prose in `pydoc_data/topics.py` (stdlib) | help topic |

The wheel is fetched once with pip (PyPI is reachable everywhere this recipe runs) and its files
are read straight out of the zip, so gensim is never installed or imported. Everything is
deterministic: sources are listed in a fixed order, shuffled with a fixed seed, and the last
documents holding >= 5% of each domain's characters are held out. The stdlib-based domains depend
on the interpreter's version, which the manifest records.
"""

import bz2
import hashlib
import html
import io
import random
import re
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

GENSIM_VERSION = "4.4.0"
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_MEMBERS = ("gensim/test/test_data/lee_background.cor", "gensim/test/test_data/lee.cor")
# The full stdlib (~11 MB of code) would outweigh the prose domains; 3 M characters keeps code
# about as large as the wiki domain.
CODE_MAX_CHARS = 3_000_000
HELDOUT_FRACTION = 0.05
SEED = 0
# Stubs and disambiguation pages teach the model little prose.
WIKI_MIN_CHARS = 500
# Sections of link lists and citations rather than prose.
WIKI_TAIL_SECTIONS = re.compile(
    r"^==+\s*(See also|References|Notes|External links|Further reading|Bibliography|Sources)\s*==+",
    re.MULTILINE | re.IGNORECASE,
)
STDLIB_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__", "pydoc_data"}


@dataclass
class Domain:
    name: str
    source: str
    train: list[str]
    heldout: list[str]


def gensim_wheel(cache: Path) -> Path:
    """The cached gensim wheel, downloaded with pip on first use."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"gensim-{GENSIM_VERSION}-*.whl"))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"gensim=={GENSIM_VERSION}",
                "--no-deps",
                "--only-binary=:all:",
                "--quiet",
                "-d",
                str(cache),
            ],
            check=True,
        )
        found = sorted(cache.glob(f"gensim-{GENSIM_VERSION}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download left no gensim-{GENSIM_VERSION} wheel in {cache}")
    return found[0]


def _remove_nested(pattern: str, text: str, repl: str = "") -> str:
    """Applies an innermost-match pattern until nothing changes, which unwinds nesting."""
    regex = re.compile(pattern, re.DOTALL)
    while True:
        text, n = regex.subn(repl, text)
        if n == 0:
            return text


def clean_wikitext(text: str) -> str:
    """Reduces MediaWiki markup to plain paragraphs: link labels kept, templates/tables/refs dropped."""
    text = WIKI_TAIL_SECTIONS.split(text, maxsplit=1)[0]
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    text = re.sub(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", "", text, flags=re.DOTALL | re.IGNORECASE)
    text = _remove_nested(r"\{\{[^{}]*\}\}", text)
    text = _remove_nested(r"\{\|[^{}]*?\|\}", text)
    # Plain links become their label; then file, category and interlanguage links, whose
    # captions may contain plain links, are dropped whole.
    while True:
        before = text
        text = re.sub(r"\[\[(?![^\[\]|]*:)(?:[^\[\]|]*\|)?([^\[\]]*)\]\]", r"\1", text)
        text = re.sub(r"\[\[[^\[\]|]*:[^\[\]]*\]\]", "", text)
        if text == before:
            break
    text = re.sub(r"\[(?:https?|ftp)://[^\s\]]+\s*([^\]]*)\]", r"\1", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", text, flags=re.MULTILINE)
    text = re.sub(r"<[^>]+>", "", text)
    text = html.unescape(text).replace("\xa0", " ")
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^[*#:;]+\s*", "", line).rstrip()
        # Leftover table rows and template debris start with these characters.
        if line and line[0] in "|!{}":
            continue
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def wiki_documents(wheel: zipfile.ZipFile) -> list[str]:
    xml = bz2.decompress(wheel.read(WIKI_MEMBER))
    docs = []
    for _, elem in ET.iterparse(io.BytesIO(xml)):
        if not elem.tag.endswith("}page"):
            continue
        ns = elem.find("{*}ns")
        text = elem.find("{*}revision/{*}text")
        if ns is not None and ns.text == "0" and elem.find("{*}redirect") is None and text is not None:
            title = elem.find("{*}title").text
            body = clean_wikitext(text.text or "")
            if len(body) >= WIKI_MIN_CHARS:
                docs.append(f"{title}\n\n{body}")
        elem.clear()
    return docs


def news_documents(wheel: zipfile.ZipFile) -> list[str]:
    # The Lee files are Latin-1 (their only non-ASCII byte is 0xA3, the pound sign).
    return [
        line.strip()
        for member in NEWS_MEMBERS
        for line in wheel.read(member).decode("latin-1").splitlines()
        if line.strip()
    ]


def code_documents(max_chars: int = CODE_MAX_CHARS) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [
        f
        for f in sorted(stdlib.rglob("*.py"))
        if not STDLIB_SKIP_DIRS.intersection(f.relative_to(stdlib).parts)
    ]
    random.Random(SEED).shuffle(files)
    docs, total = [], 0
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace").strip()
        if not text or total + len(text) > max_chars:
            continue
        docs.append(text)
        total += len(text)
    return docs


def docs_documents() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key].strip() for key in sorted(topics)]


def split(
    docs: list[str], fraction: float = HELDOUT_FRACTION, seed: int = SEED
) -> tuple[list[str], list[str]]:
    """Shuffles documents and holds out the last ones covering >= `fraction` of the characters."""
    docs = list(docs)
    random.Random(seed).shuffle(docs)
    target = fraction * sum(len(d) for d in docs)
    held, cut = 0, len(docs)
    while cut > 1 and held < target:
        cut -= 1
        held += len(docs[cut])
    return docs[:cut], docs[cut:]


def build_corpus(cache: Path) -> dict[str, Domain]:
    wheel_path = gensim_wheel(cache)
    with zipfile.ZipFile(wheel_path) as wheel:
        raw = {
            "wiki": (f"{wheel_path.name}:{WIKI_MEMBER}", wiki_documents(wheel)),
            "news": (f"{wheel_path.name}:{'+'.join(NEWS_MEMBERS)}", news_documents(wheel)),
        }
    raw["code"] = (f"python{sys.version_info.major}.{sys.version_info.minor} stdlib *.py", code_documents())
    raw["docs"] = (
        f"python{sys.version_info.major}.{sys.version_info.minor} pydoc_data/topics.py",
        docs_documents(),
    )
    return {name: Domain(name, source, *split(docs)) for name, (source, docs) in raw.items()}


def manifest(corpus: dict[str, Domain]) -> dict:
    """Sizes and a content hash per domain, so a rebuilt corpus can be compared to the recorded one."""
    out = {
        "python": sys.version.split()[0],
        "seed": SEED,
        "heldout_fraction": HELDOUT_FRACTION,
        "domains": {},
    }
    for name, d in corpus.items():
        digest = hashlib.sha256("\x00".join([*d.train, "\x01", *d.heldout]).encode()).hexdigest()
        out["domains"][name] = {
            "source": d.source,
            "train_docs": len(d.train),
            "train_chars": sum(len(t) for t in d.train),
            "heldout_docs": len(d.heldout),
            "heldout_chars": sum(len(t) for t in d.heldout),
            "sha256": digest,
        }
    return out
