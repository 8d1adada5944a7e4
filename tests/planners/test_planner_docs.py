"""docs/planners.md quotes the prompts and rules the planners really use."""

from __future__ import annotations

from pathlib import Path

import pytest

DOC = (Path(__file__).resolve().parents[2] / "docs" / "planners.md").read_text(encoding="utf-8")


def test_the_toolkit_prompts_are_quoted_in_full():
    from sow.planners.toolkit import prompts

    for name in ("SYSTEM", "INTENSIFY", "POSITION", "REFINE"):
        assert getattr(prompts, name) in DOC, f"{name} changed: update docs/planners.md"


def test_gemini_options_are_documented():
    from sow_gemini import GeminiOptions

    for option, field in GeminiOptions.model_fields.items():
        assert f"| `{option}` | " in DOC, option


@pytest.mark.parametrize("name", ["INTENSIFY_TEMPLATE", "FACE_SUBJECT", "OBJECT_SUBJECT"])
def test_heuristic_rules_are_documented(name):
    from sow.planners import heuristic

    assert getattr(heuristic, name) in DOC


def test_the_heuristics_face_cascade_is_documented():
    from sow.faces import CASCADE_FILE

    assert CASCADE_FILE in DOC


def test_composition_patterns_are_documented():
    from sow.planners.heuristic import COMPOSITIONS, SIDES

    for rule in COMPOSITIONS:
        assert f"`{rule.pattern}`" in DOC
    for _, _, pattern in SIDES:
        assert f"`{pattern}`" in DOC
