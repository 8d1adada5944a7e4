"""docs/production.md states the limits the code enforces (a drift test) and the manifest lock works."""

from __future__ import annotations

from pathlib import Path

import pytest

from sow.cli import commands as cli

from sow.io import images
from sow.batch.runner import Manifest
from sow.errors import InputError

DOC = (Path(__file__).resolve().parents[1] / "docs" / "production.md").read_text()


def test_limits_in_the_docs_match_the_code():
    assert f"a side under {images.SMALL_SIDE} px" in DOC
    assert f"a side under {images.MIN_SIDE} px" in DOC
    assert f"longer side over {images.MAX_WORKING_SIDE} px" in DOC
    assert f"beyond {images.MAX_ASPECT_RATIO:g}:1" in DOC
    assert f"over {images.MAX_FILE_BYTES // 2**20} MiB" in DOC
    assert f"over {cli.MAX_JSON_BYTES // 2**20} MiB" in DOC
    for code in (cli.EXIT_OK, cli.EXIT_FAILURE, cli.EXIT_USAGE, cli.EXIT_INTERRUPTED):
        assert f"| {code} |" in DOC
    for mode in ("auto", "step", "deferred", "off"):
        assert f"`{mode}`" in DOC


def test_one_batch_per_output_folder(tmp_path):
    with Manifest(tmp_path).open(fresh=True):
        with pytest.raises(InputError, match="in use by another sow batch"):
            with Manifest(tmp_path).open(fresh=True):
                pass


def test_prompt_limit_in_the_docs():
    from sow.safety.prompt_checks import MAX_PROMPT_CHARS

    assert f"over {MAX_PROMPT_CHARS:,} characters" in DOC
