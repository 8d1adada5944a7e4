"""CLI conventions a newcomer meets first: --version, -h everywhere, choices listed, defaults shown, early refusals, threads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sow.cli.commands import main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("generate", "plan", "plugins", "eval", "eval-spec", "bench")


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


@pytest.fixture(autouse=True)
def wide_help(monkeypatch):
    """Help tables as wide as needed, so no metavar is cut across lines."""
    import typer.rich_utils

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 250)


def help_text(argv: list[str], capsys) -> str:
    assert run(argv) == 0
    # rich wraps at the terminal width: join the table's cells into one line of words
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().out).split())


def test_version(capsys):
    from importlib.metadata import version

    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sow {version('sow')}"


@pytest.mark.parametrize("command", COMMANDS)
def test_dash_h_on_every_command(command, capsys):
    text = help_text([command, "-h"], capsys)
    assert f"Usage: sow {command}" in text and "-h, --help" in text


def test_shell_completion_is_offered(capsys):
    text = help_text(["--help"], capsys)
    assert "--install-completion" in text and "--show-completion" in text


@pytest.mark.parametrize(
    ("command", "choices"),
    [
        ("generate", ["<normal|attribute|style|cow-reference>", "<fail|heuristic>", "<auto|fp32|fp16|bf16>", "<4bit|8bit>", "<auto|cpu|cuda|cuda:N>"]),
        ("plan", ["<normal|attribute|style|cow-reference>", "<fail|heuristic>", "<4bit|8bit>"]),
        ("bench", ["<auto|fp32|fp16|bf16>", "<sdpa|math>", "<auto|cpu|cuda|cuda:N>"]),
        ("eval", ["<auto|fp32|fp16|bf16>", "<auto|cpu|cuda|cuda:N>"]),
    ],
)
def test_choices_are_listed_by_help(command, choices, capsys):
    text = help_text([command, "--help"], capsys)
    for choice in choices:
        assert choice in text


def test_flags_render_without_a_bool_metavar(capsys):
    """typer 0.29 prints `<bool>` after every flag; pyproject pins below it."""
    text = help_text(["generate", "--help"], capsys)
    assert "<bool>" not in text and "--overwrite / --no-overwrite" in text


def test_a_bad_choice_is_a_usage_error(tmp_path, face_path, capsys):
    assert run(["generate", str(face_path), "a chef", "--preset", "noir", "-o", str(tmp_path)]) == 2
    assert "noir" in capsys.readouterr().err


def test_eval_defaults_are_auto_and_shown(capsys):
    from sow.eval.runner import EvalConfig

    config = EvalConfig()
    assert (config.device, config.dtype) == ("auto", "auto")  # as generate and bench
    text = help_text(["eval", "--help"], capsys)
    assert "--device <auto|cpu|cuda|cuda:N>" in text and "[default: (auto, or --config's)]" in text
    assert "[default: (dlib, or --config's)]" in text and "[default: (tiny, or --config's)]" in text


@pytest.mark.parametrize(("command", "arguments"), [
    ("generate", ["CONDITION", "PROMPT"]), ("plan", ["CONDITION", "PROMPT"]), ("eval", ["SPEC"]), ("eval-spec", ["FACES"]),
])  # fmt: skip
def test_one_argument_style(command, arguments, capsys):
    """Arguments are named in capitals in the usage line, as the docstrings and messages name them."""
    usage = re.findall(r"[A-Za-z-]+", help_text([command, "--help"], capsys).split("[OPTIONS]", 1)[1])[: len(arguments)]
    assert usage == arguments


def test_only_the_missing_argument_is_named(face_path, capsys):
    assert run(["generate", str(face_path)]) == 2
    err = capsys.readouterr().err
    assert "Missing argument PROMPT" in err and "CONDITION" not in err


def test_save_attention_without_modulation_is_refused_before_the_model_loads(tmp_path, face_path, capsys, monkeypatch):
    import sow.pipeline

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(sow.pipeline.SOWPipeline, "from_pretrained", no_load)
    assert run(["generate", str(face_path), "a chef", "-q", "--save-attention", "--modulator", "none", "-o", str(tmp_path)]) == 2
    assert "--save-attention needs attention modulation" in capsys.readouterr().err


def test_eval_spec_names_only_its_own_options(tmp_path, faces_dir, capsys):
    out = tmp_path / "spec.jsonl"
    out.write_text("earlier")
    assert run(["eval-spec", str(faces_dir), "-o", str(out), "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--name" not in err and out.read_text() == "earlier"


def test_threads_option_and_environment(monkeypatch):
    import torch

    from sow.models.performance import cpu_threads, default_threads
    from sow.errors import InputError

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("SOW_THREADS", raising=False)
        assert cpu_threads(3) == 3
        import os

        cores = len(os.sched_getaffinity(0))
        assert cpu_threads() == default_threads() == max(1, min(8, cores // 2))
        monkeypatch.setenv("SOW_THREADS", "2")
        assert cpu_threads() == 2 and cpu_threads(1) == 1  # the option wins over the variable
        monkeypatch.setenv("SOW_THREADS", "many")
        with pytest.raises(InputError, match="SOW_THREADS='many'"):
            cpu_threads()
        monkeypatch.setenv("SOW_THREADS", "1")
        assert run(["--threads", "2", "plugins"]) == 0
        assert torch.get_num_threads() == 2
        assert run(["plugins"]) == 0  # from the variable
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_ctrl_c_exits_at_once():
    """`sow` interrupted: exit 130 right after "interrupted", without waiting for worker threads."""
    code = (
        "import threading, time, sys\n"
        "threading.Thread(target=time.sleep, args=(60,)).start()  # a non-daemon worker, as torch/tokenizers leave\n"
        "import sow.cli.commands as c\n"
        "c.main = lambda argv=None: c._fail('interrupted', c.EXIT_INTERRUPTED)\n"
        "c.run()\n"
    )
    import time

    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50, cwd=ROOT)
    assert done.returncode == 130 and done.stderr.strip().endswith("interrupted")
    assert time.perf_counter() - start < 30  # the sleeping worker would hold it for 60 s
