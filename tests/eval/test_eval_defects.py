"""The defect tests of this room (issue 13's classes by number; issue 12's one journal):

- 2. eval ids unique on the names written
"""

from __future__ import annotations

import json

import pytest

from sow.errors import InputError

from tests.support.defects import write_file


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


# -- 2. eval ids unique on the names written ------------------------------------------------------


def test_2_eval_ids_that_differ_only_in_case_or_punctuation_are_refused(tmp_path, face_path):
    from sow.eval.spec import load_spec

    for a, b in (("Obama", "obama"), ("a b", "a-b"), ("x.", "x")):
        spec = write_file(tmp_path / "spec.jsonl", "\n".join(
            json.dumps({"id": i, "condition": str(face_path), "prompt": "p", "setting": "normal"}) for i in (a, b)) + "\n")
        with pytest.raises(InputError, match="writes the same file"):
            load_spec(spec)


def test_2_eval_methods_sharing_a_folder_are_refused():
    from sow.eval.runner import EvalConfig, resolve_methods

    config = EvalConfig(ablations={"Fast": {"cycles": 1}, "fast": {"cycles": 2}})
    with pytest.raises(InputError, match="one folder"):
        resolve_methods(config)
