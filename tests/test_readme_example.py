"""The README's Python examples run as written.

Every block fenced as ```python in README.md is executed, in order, in one namespace (a later block may
use names an earlier one defined), with the repository root as the working directory. Snippets that are
not meant to run (shell sessions, adapter code that needs an engine) must use another fence tag
(```bash, ```text, ```py). The embedding example (the first ```python block after a heading that
mentions "Embedding") must exist: its absence is a failure, not a skip.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\n`]*)$")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(?P<title>.*?)\s*#*\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    heading: str  # the nearest heading above it
    code: str


def python_blocks(text: str) -> list[Block]:
    """The ```python fenced blocks of a Markdown text, each with the heading it sits under."""
    blocks = []
    heading = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            h = _HEADING.match(lines[i])
            if h:
                heading = h.group("title")
            i += 1
            continue
        fence, info, start = m.group("fence"), m.group("info").strip(), i
        body = []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(fence[0] * len(fence)) and not lines[i].strip().strip(fence[0])
        ):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if info.split()[:1] == ["python"]:
            blocks.append(Block(start + 1, heading, "\n".join(body) + "\n"))
    return blocks


def embedding_block(blocks: list[Block]) -> Block | None:
    return next((b for b in blocks if "embedding" in b.heading.lower()), None)


def run_blocks(blocks: list[Block]) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "__readme__"}
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for block in blocks:
            code = compile(block.code, f"README.md:{block.line}", "exec")
            exec(code, namespace)
            namespace[f"__ran_line_{block.line}__"] = True
    finally:
        os.chdir(cwd)
    return namespace


def readme_blocks() -> list[Block]:
    if not README.is_file():
        pytest.fail(f"{README} does not exist: the README must carry a runnable embedding example")
    return python_blocks(README.read_text())


# ---- the parser ----


def test_parser_finds_python_blocks_under_their_headings() -> None:
    text = (
        "# Title\n"
        "```bash\npip install ecosched\n```\n"
        "## Embedding ecosched in a server\n"
        "Some prose.\n"
        "```python\nx = 1\n```\n"
        "```text\nnot code\n```\n"
        "### Later\n"
        "````python\ny = x + 1\n```\nstill inside\n````\n"
    )
    blocks = python_blocks(text)
    assert [b.heading for b in blocks] == ["Embedding ecosched in a server", "Later"]
    assert blocks[0].code == "x = 1\n"
    assert blocks[1].code == "y = x + 1\n```\nstill inside\n"
    found = embedding_block(blocks)
    assert found is not None and found.line == 7


def test_parser_reports_a_missing_embedding_block() -> None:
    assert embedding_block(python_blocks("# Embedding\n```bash\necho\n```\n## Other\n```python\n1\n```\n")) is None


# ---- the README ----


def test_embedding_example_runs(caplog: pytest.LogCaptureFixture) -> None:
    blocks = readme_blocks()
    block = embedding_block(blocks)
    if block is None:
        pytest.fail('README.md has no ```python block under a heading containing "Embedding"')
    assert "ecosched" in block.code, "the embedding example should use ecosched"
    upto = blocks[: blocks.index(block) + 1]  # earlier blocks may define what it uses
    with caplog.at_level(logging.WARNING, logger="ecosched"):
        namespace = run_blocks(upto)
    assert namespace[f"__ran_line_{block.line}__"] is True
    # The example users copy must run cleanly: no predictor fallback or other warning.
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []


def test_every_python_block_runs() -> None:
    blocks = readme_blocks()
    assert blocks, "README.md has no ```python block"
    namespace = run_blocks(blocks)
    assert all(namespace[f"__ran_line_{b.line}__"] is True for b in blocks)
