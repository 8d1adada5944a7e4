"""The defect tests of this room (issue 13's classes by number; issue 12's one journal):

- 14. upper bounds for every count
"""

from __future__ import annotations

import pytest

from sow.errors import InputError


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


# -- 14. upper bounds for every count ---------------------------------------------------------------------


def _models():
    from sow.eval.runner import EvalConfig, InpaintSettings
    from sow.batch.runner import BatchJob
    from sow.schemas import Box, Canvas, GenerationConfig, ModulationSettings

    return [Box, Canvas, GenerationConfig, ModulationSettings, EvalConfig, InpaintSettings, BatchJob]


def test_14_every_count_in_the_config_has_an_upper_bound_with_its_reason():
    missing = []
    for model in _models():
        for name, field in model.model_fields.items():
            if field.annotation is not int:
                continue
            bounds = [getattr(m, "le", None) or getattr(m, "lt", None) for m in field.metadata]
            bound = next((b for b in bounds if b is not None), None)
            text = field.description or ""
            if bound is None:
                missing.append(f"{model.__name__}.{name}: no upper bound")
            elif not any(form in text for form in (str(bound), f"{bound:,}", str(bound - 1), f"{bound - 1:,}", "2**63")):
                missing.append(f"{model.__name__}.{name}: bound {bound} not explained in {text!r}")
    assert not missing, "\n".join(missing)


def test_14_a_billion_cycles_is_refused():
    from sow.schemas import GenerationConfig

    with pytest.raises(InputError, match="cycles: Input should be less than or equal to 200"):
        GenerationConfig.from_preset("normal", cycles=10**9)
