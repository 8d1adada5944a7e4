"""Batch errors name the right line, and an unexpected error of one item is one line (fast: no model)."""

from __future__ import annotations

import pytest

from sow.batch.runner import _describe, read_batch_file
from sow.errors import InputError


def test_a_bad_line_is_named_by_its_number_in_the_file(tmp_path, face_path):
    jobs = tmp_path / "jobs.jsonl"
    good = '{"condition": "%s", "prompt": "a chef"}' % face_path
    jobs.write_text(f"# comment\n\n{good}\n{{oops\n")  # the bad object is on line 4 (comments and blanks count)
    with pytest.raises(InputError, match=r"line 4: not valid JSON"):
        read_batch_file(jobs)


def test_an_item_error_is_described_in_one_line_with_its_exit_code():
    assert _describe(RuntimeError("boom\nTraceback-ish detail")) == ("unexpected RuntimeError: boom", 1)
    assert _describe(KeyError()) == ("unexpected KeyError", 1)
    assert _describe(InputError("bad input\nmore")) == ("bad input", 2)
