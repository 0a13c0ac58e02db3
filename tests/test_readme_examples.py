"""The command lines the README and pipelines/README.md show parse against the real CLI (option names, values,
required options), so the documentation cannot drift from the commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_cli_help import check_example  # tests/ is on sys.path (pytest prepend mode)

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "pipelines/README.md")


def readme_examples(text: str) -> list[str]:
    """The ``mammoflow ...`` lines of the fenced code blocks (continuations joined), and those quoted inline."""
    lines = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        lines += [line.strip() for line in joined.splitlines() if line.strip().startswith("mammoflow ")]
    return lines


EXAMPLES = [(doc, line) for doc in DOCS for line in readme_examples((REPO / doc).read_text())]


def test_the_docs_have_examples() -> None:
    assert len(EXAMPLES) >= 20


@pytest.mark.parametrize(("doc", "line"), EXAMPLES, ids=[f"{d}:{i}" for i, (d, _) in enumerate(EXAMPLES)])
def test_documented_command_parses(doc: str, line: str) -> None:
    check_example(line)
