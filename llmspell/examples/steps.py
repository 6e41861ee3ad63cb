"""Python steps of the bundled demo workflow (``demo.yaml``)."""

from __future__ import annotations

from typing import Any

DOCS = {
    "actors": "Actors share nothing and talk only through messages.",
    "lua": "Lua coroutines yield to their host and resume with its answer.",
    "js": "JavaScript promises settle when the host resolves them.",
}


def fetch(names: list[str], input: Any = None) -> list[dict[str, Any]]:
    """Pretend to fetch documents: ``[{name, text, words}]``."""
    return [{"name": n, "text": DOCS[n], "words": len(DOCS[n].split())} for n in names]


def count_words(docs: list[dict[str, Any]]) -> str:
    """A quick summariser: the documents' names and word counts."""
    return ", ".join(f"{d['name']} ({d['words']} words)" for d in docs)
