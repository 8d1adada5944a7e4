"""The regression runs that open DAM's gate give the same latents on the fused path as on the explicit one.

``tests/test_regression_checksums.py`` pins "dam-open" (tau = 0) and "dam-forced"
(``use_gate=False``) bit for bit; the fused path changed the order of the float operations,
so those two values were re-recorded. This is the evidence that only the rounding moved:
the same runs on the old explicit path (``tests/dam_reference.py``) agree to 1e-5 relative.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from dam_reference import ExplicitDAM

from sow.attention.dam import DAMState
from sow.schemas import Canvas

RELATIVE = 1e-5


def _script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "regression_checksums.py"
    spec = importlib.util.spec_from_file_location("regression_checksums", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("case", ["dam-open", "dam-forced"])
def test_fused_path_equals_the_explicit_path_on_the_regression_runs(tiny_pipe, monkeypatch, case):
    script = _script()
    face = Path(__import__("sow").__file__).resolve().parent / "data" / "sample_face.jpg"

    def latents():
        return tiny_pipe(str(face), "a chef in a busy kitchen", plan=script.plan(), seed=3, cycles=3,
                         canvas=Canvas(width=128, height=128), trace_attention=False, **script.CASES[case]).latents

    fused = latents()
    with monkeypatch.context() as patch:
        patch.setattr(DAMState, "attention", ExplicitDAM.attention)
        explicit = latents()
    assert (fused - explicit).abs().max() / explicit.abs().max() <= RELATIVE
    # that these runs differ from plain COW is test_regression_checksums.py's last test
