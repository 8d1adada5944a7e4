"""The regression runs that open DAM's gate give the same latents as the dense equations.

``tests/engine/test_regression_checksums.py`` pins "dam-open" (tau = 0) and "dam-forced"
(``use_gate=False``) as stored arrays. This is the evidence that they are DAM's equations and
not only a record of what the code did: the same whole runs with every self-attention layer
computed by the independent dense reference (``tests/support/dam_reference.py``: masks from the boxes,
the (N, N) bias, the softmax, in float64) agree to 1e-5 relative.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tests.support.dam_reference import reference_attention

from sow.attention.dam import DAMState
from sow.schemas import Canvas

RELATIVE = 1e-5


def _script():
    path = Path(__file__).resolve().parents[2] / "scripts" / "regression_checksums.py"
    spec = importlib.util.spec_from_file_location("regression_checksums", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("case", ["dam-open", "dam-forced"])
def test_fused_path_equals_the_dense_equations_on_the_regression_runs(tiny_pipe, monkeypatch, case):
    script = _script()
    face = Path(__import__("sow").__file__).resolve().parent / "data" / "sample_face.jpg"

    def latents():
        return tiny_pipe(str(face), "a chef in a busy kitchen", plan=script.plan(), seed=3, cycles=3,
                         canvas=Canvas(width=128, height=128), trace_attention=False, **script.CASES[case]).latents

    fused = latents()
    with monkeypatch.context() as patch:
        patch.setattr(DAMState, "attention", reference_attention)
        dense = latents()
    assert (fused - dense).abs().max() / dense.abs().max() <= RELATIVE
    # that these runs differ from plain COW is test_regression_checksums.py's last test
