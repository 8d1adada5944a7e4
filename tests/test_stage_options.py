"""A stage's options are the user's input: a bad one is exit 2 naming the field, before any model loads."""

from __future__ import annotations

import pytest

from sow.errors import StageOptionError
from sow.hookspecs import hookimpl
from sow.pipeline import SOWPipeline
from sow.plugins import build_registry


@pytest.mark.parametrize(
    "options, named",
    [
        ({"chunk_elements": 0}, "chunk_elements"),
        ({"sync_free": "sometimes"}, "sync_free"),
        ({"chunk_size": 4}, "chunk_size"),
    ],
)
def test_a_bad_dam_option_is_exit_2_naming_the_field_before_the_model_loads(options, named):
    registry = build_registry(load_entry_points=False)
    with pytest.raises(StageOptionError, match=named) as info:
        # the model does not exist: the option error must come first
        SOWPipeline.from_pretrained("no/such-model", stage_options={"modulator": options}, registry=registry)
    assert info.value.exit_code == 2
    assert "attention modulator 'dam'" in str(info.value) and "\n" not in str(info.value)


def test_a_value_error_of_a_plugin_stage_taking_its_options_is_the_users_error(tiny_components):
    class Picky:
        name, description = "picky", "refuses a bad level"

        def __init__(self, level: int = 1) -> None:
            if level < 1:
                raise ValueError(f"level must be >= 1, not {level}")

        def preserve(self, latents, condition, region):
            return latents

    class Plugin:
        @hookimpl
        def register_preservers(self, register):
            register(Picky)

    registry = build_registry(load_entry_points=False, extra_plugins=[Plugin()])
    pipe = SOWPipeline(tiny_components, {"preserver": "picky"}, stage_options={"preserver": {"level": 0}}, registry=registry)
    with pytest.raises(StageOptionError, match="preserver 'picky'.*level must be >= 1") as info:
        pipe.stage("preserver")
    assert info.value.exit_code == 2


def test_stage_options_take_the_kinds_one_name_and_its_deprecated_alias_with_a_warning(tiny_components):
    from sow.errors import InputError

    registry = build_registry(load_entry_points=False)
    chosen = SOWPipeline(tiny_components, {"modulator": "dam"}, stage_options={"modulator": {"chunk_elements": 64}}, registry=registry)
    assert chosen.stage("modulator").chunk_elements == 64
    with pytest.warns(DeprecationWarning, match="stage_options key 'attention_modulator' is deprecated; use 'modulator'"):
        old = SOWPipeline(tiny_components, {"modulator": "dam"}, stage_options={"attention_modulator": {"chunk_elements": 32}}, registry=registry)
    assert old.stage("modulator").chunk_elements == 32
    with pytest.warns(DeprecationWarning), pytest.raises(InputError, match="attention modulator twice"):
        SOWPipeline(tiny_components, stage_options={"modulator": {}, "attention_modulator": {}}, registry=registry)
