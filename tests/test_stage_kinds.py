"""One table of stage kinds (sow/stage_kinds.py): every list of stages is made from it, so a new kind is one edit."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from sow import hookspecs, stages
from sow.stage_kinds import ALIASES, KINDS, RUN_STAGES, STAGE_TABLE

ROOT = Path(__file__).resolve().parents[1]


def test_every_list_of_stages_is_the_table():
    names = [kind.name for kind in STAGE_TABLE]
    assert list(stages.STAGE_KINDS) == names
    assert all(stages.STAGE_KINDS[k.name] is getattr(stages, k.protocol) for k in STAGE_TABLE)
    stage_hooks = [n for n, v in vars(hookspecs).items() if hasattr(v, "sow_spec") and n != "register_model_families"]
    assert stage_hooks == [kind.hook for kind in STAGE_TABLE]
    from sow.schemas import StageNames

    assert StageNames().model_dump() == {kind.name: kind.default for kind in RUN_STAGES}
    assert stages.STAGE_FIELDS == {kind.name: kind.name for kind in RUN_STAGES}  # one name: the field is the kind
    from sow.plugins import build_registry

    assert list(build_registry(load_entry_points=False).entries) == names


def test_the_cli_options_and_the_pipeline_keywords_are_the_table():
    from sow.cli.commands import generate
    from sow.pipeline import chosen_stages

    options = set(inspect.signature(generate).parameters)
    assert {kind.name for kind in RUN_STAGES} <= options and "stages" not in options
    assert chosen_stages({kind.name: f"my-{kind.name}" for kind in RUN_STAGES}, "t").model_dump() == {
        kind.name: f"my-{kind.name}" for kind in RUN_STAGES
    }


def test_the_modulator_has_one_name_and_a_deprecated_alias():
    assert KINDS["modulator"].hook == "register_modulators" and ALIASES == {"attention_modulator": "modulator"}
    assert not hasattr(hookspecs, "register_attention_modulators")  # only the deprecated spec, which warns
    assert hasattr(hookspecs.DeprecatedHooks, "register_attention_modulators")
    with pytest.warns(DeprecationWarning, match="sow.stages.AttentionModulator is deprecated"):
        assert stages.AttentionModulator is stages.Modulator


NEW_KIND = """
import warnings
warnings.filterwarnings("error", message=".*is deprecated; (use|implement) ")  # no deprecated name of sow taken
from sow import hookimpl, hookspecs, stages
from sow.schemas import StageNames, GenerationConfig
from sow.plugins import build_registry
from sow.pipeline import chosen_stages
from sow.cli.commands import app

class Keep:
    name, description = "keep", "keeps the latents"

class Plugin:
    @hookimpl
    def register_refiners(self, register):
        register(Keep)

registry = build_registry(load_entry_points=False, extra_plugins=[Plugin()])
print("HOOK", hasattr(hookspecs, "register_refiners"))
print("PROTOCOL", stages.STAGE_KINDS["refiner"] is stages.Preserver)
print("REGISTRY", registry.get("refiner", "keep").factory is Keep)
print("FIELD", StageNames().refiner, GenerationConfig(stages={"refiner": "other"}).stages.refiner)
print("KEYWORD", chosen_stages({"refiner": "other"}, "from_pretrained").refiner)
from typer.testing import CliRunner
print("OPTION", "--refiner <name>" in CliRunner().invoke(app, ["generate", "--help"], obj={"text_only": True}).output)
"""


NEW_ROW = """    StageKind(
        name="refiner",
        field_help="Refiner plugin name.",
        protocol="Preserver",
        summary="refine the latents",
        builtins="Built-ins: none.",
        default="keep",
    ),
"""


def test_a_new_stage_kind_is_one_row_of_the_table(tmp_path):
    """A copy of sow with one edit, a row added to the table (behind an existing Protocol, for the test), gets
    the kind's hook, registry kind, config field, from_pretrained keyword and CLI option."""
    import shutil

    copy = tmp_path / "sow"
    shutil.copytree(ROOT / "sow", copy, ignore=shutil.ignore_patterns("__pycache__"))
    table = copy / "stage_kinds.py"
    text = table.read_text(encoding="utf-8")
    end = ')\n"""Every stage kind, in the order'
    assert text.count(end) == 1
    table.write_text(text.replace(end, NEW_ROW + end), encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", NEW_KIND], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "SOW_THREADS": "1", "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert lines == {"HOOK": "True", "PROTOCOL": "True", "REGISTRY": "True", "FIELD": "keep other", "KEYWORD": "other", "OPTION": "True"}
