"""Every ```python block of README.md and docs/*.md runs, as a user would run it.

Each block is written to a file of its own and run by a fresh interpreter
(``python block.py``) from the repository's root, with the root on
``sys.path`` so a block can import its helpers from ``docs/examples/``. A block
passes when it exits with status 0 within the time limit.

A block that must not run says why in a marker on the line right before its
fence (blank lines between are allowed)::

    <!-- not-run: needs a real OpenAI key -->

A marker without a reason is an error, and so is a marker that is not followed
by a python block.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LIMIT = 60.0  # seconds: only guards against a hang; blocks take a second or two

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_MARKER = re.compile(r"^\s*<!--\s*not-run\s*:?(.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # the marker's reason; "" for a marker without one

    @property
    def id(self) -> str:
        name = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{Path(name).as_posix()}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The python blocks of one markdown file, with their not-run markers.

    Raises ValueError for a marker that does not stand right before a python
    block (it would silently apply to nothing)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    marker: tuple[int, str] | None = None
    i = 0
    while i < len(lines):
        text = lines[i]
        m = _MARKER.match(text)
        if m:
            if marker is not None:
                raise ValueError(f"{path.name}:{marker[0]}: not-run marker before no python block")
            marker = (i + 1, m.group(1).strip())
            i += 1
            continue
        fence = _FENCE.match(text)
        if fence is None:
            if text.strip() and marker is not None:
                raise ValueError(f"{path.name}:{marker[0]}: not-run marker before no python block")
            i += 1
            continue
        indent, ticks, lang = fence.groups()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(ticks):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1  # the closing fence
        if lang == "python":
            found.append(
                Block(
                    path, start + 1, "\n".join(body) + "\n", None if marker is None else marker[1]
                )
            )
        elif marker is not None:
            raise ValueError(f"{path.name}:{marker[0]}: not-run marker before a {lang!r} block")
        marker = None
    if marker is not None:
        raise ValueError(f"{path.name}:{marker[0]}: not-run marker before no python block")
    return found


ALL = [b for path in DOCS for b in blocks(path)]


def test_the_docs_have_python_blocks() -> None:
    # the collector must find what is there (a broken pattern would pass everything)
    assert len(ALL) >= 20
    assert any(b.path.name == "README.md" for b in ALL)


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_doc_block_runs(block: Block, tmp_path: Path) -> None:
    if block.skip is not None:
        assert block.skip, f"{block.id}: a not-run marker must say why the block does not run"
        pytest.skip(f"not run: {block.skip}")
    script = tmp_path / f"{block.path.stem.replace('-', '_')}_line{block.line}.py"
    script.write_text(block.code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("OPENAI_BASE_URL", None)  # the docs' agents run against their own fakes
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=LIMIT,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{block.id} did not finish within {LIMIT} s\n{e.stdout or ''}{e.stderr or ''}")
    assert done.returncode == 0, (
        f"{block.id} failed (exit status {done.returncode}):\n{done.stdout}{done.stderr}"
    )


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "doc.md"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_collector_reads_markers_and_lines(tmp_path: Path) -> None:
    doc = _write(
        tmp_path,
        "# t\n\n```python\nx = 1\n```\n\n<!-- not-run: needs a key -->\n\n```python\ny\n```\n"
        "```sh\nls\n```\n",
    )
    found = blocks(doc)
    assert [(b.line, b.code, b.skip) for b in found] == [
        (3, "x = 1\n", None),
        (9, "y\n", "needs a key"),
    ]


def test_a_marker_without_a_reason_is_kept_empty_and_fails(tmp_path: Path) -> None:
    doc = _write(tmp_path, "<!-- not-run -->\n```python\nx = 1\n```\n")
    (block,) = blocks(doc)
    assert block.skip == ""
    with pytest.raises(AssertionError, match="must say why"):
        test_doc_block_runs(block, tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "<!-- not-run: why -->\nsome prose\n```python\nx\n```\n",
        "<!-- not-run: why -->\n```sh\nls\n```\n",
        "text\n<!-- not-run: why -->\n",
    ],
)
def test_a_marker_that_marks_no_python_block_is_an_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError, match="not-run marker"):
        blocks(_write(tmp_path, text))
