"""Every Python block of README.md and docs/*.md runs, as written, on the tiny model.

A block that cannot run here says so on the line before its fence:
``<!-- code: skip (needs a CUDA GPU and the SD 2.1-base weights) -->``; the reason is
required and shown as the skip reason. Blocks run in a fresh namespace in a temporary
working folder (they write files like ``chef.png``), offline, with the plan cache there too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\s*$\n(.*?)^```\s*$", re.M | re.S)
SKIP = re.compile(r"<!--\s*code:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->\s*$")


def python_blocks() -> list:
    """(file, line, code, skip reason or None) of every ```python block."""
    blocks = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = SKIP.search(before)
            blocks.append(pytest.param(match.group(1), marker.group("reason") if marker else None,
                                       id=f"{path.relative_to(ROOT)}:{line}"))  # fmt: skip
    return blocks


def test_the_docs_have_python_blocks():
    ids = [p.id for p in python_blocks()]
    assert any(i.startswith("README.md:") for i in ids) and len(ids) >= 5


@pytest.mark.slow
@pytest.mark.parametrize(("code", "skip"), python_blocks())
def test_python_block_runs(code, skip, tmp_path, monkeypatch):
    if skip:
        pytest.skip(skip)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SOW_CACHE_DIR", str(tmp_path / "cache"))
    for key in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    exec(compile(code, "<docs block>", "exec"), {"__name__": "docs_block"})
