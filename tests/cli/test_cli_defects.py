"""The defect tests of this room (issue 13's classes by number; issue 12's one journal):

- 4. SOW_DEBUG=1 tracebacks are redacted
- 7. control characters from remote text
- 12. exit codes and messages (the rest is in the corpus)
"""

from __future__ import annotations

import json

import pytest

from sow.errors import InputError

from tests.support.defects import SECRET, TINIEST, good_plan, planner_plugin, run_cli, use_registry, write_file


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


# -- 4. SOW_DEBUG=1 tracebacks are redacted --------------------------------------------------------


def test_4_debug_tracebacks_are_redacted(tmp_path, face_path, capsys, monkeypatch):
    import sow.cli.commands as commands

    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    monkeypatch.setenv("SOW_DEBUG", "1")

    def broken(path):
        raise RuntimeError(f"the server said: key {SECRET} \x1b[2J is invalid")

    monkeypatch.setattr("sow.io.json_files.load_config_file", broken)
    code, out, err = run_cli(capsys, ["generate", str(face_path), "a chef", "-o", str(tmp_path / "o")])
    assert code == 1
    assert "Traceback" in err and "RuntimeError" in err
    assert SECRET not in err + out and "sk-" not in err and "\x1b" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")][0].startswith("error: unexpected RuntimeError")


# -- 7. control characters from remote text ---------------------------------------------------------

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"


def test_7_remote_text_is_printed_and_recorded_without_control_characters(tmp_path, face_path, capsys, monkeypatch):
    plugin = planner_plugin("chatty", lambda r: good_plan(r, notes=[f"I chose the face {ESCAPES}on the left"], prompt=f"a chef {ESCAPES}"))
    use_registry(monkeypatch, plugin)
    code, out, err = run_cli(capsys, ["plan", str(face_path), "a chef", "--planner", "chatty", "-o", str(tmp_path / "p.json")])
    assert code == 0, err
    assert "I chose the face on the left" in err
    for stream in (out, err, (tmp_path / "p.json").read_text()):
        assert not any(c in stream for c in "\x1b\x07\x9b\u202e")
    config = write_file(tmp_path / "c.json", json.dumps(TINIEST))
    code, _, err = run_cli(capsys, ["generate", str(face_path), "a chef", "--planner", "chatty", "--name", "g", "-q",
                                 "-o", str(tmp_path / "o"), "--config", str(config)])
    assert code == 0, err
    record = (tmp_path / "o" / "g.json").read_text()
    assert "on the left" in record and "\\u001b" not in record and "\x1b" not in record


def test_7_a_remote_error_is_printed_clean(tmp_path, face_path, capsys, monkeypatch):
    from sow.errors import PlannerError

    def refuse(request):
        raise PlannerError(f"API said 400 {ESCAPES}bad request")

    use_registry(monkeypatch, planner_plugin("api", refuse))
    code, _, err = run_cli(capsys, ["plan", str(face_path), "a chef", "--planner", "api", "-o", str(tmp_path / "p.json")])
    assert code == 1 and "400 bad request" in err
    assert not any(c in err for c in "\x1b\x07\x9b\u202e")


# -- 12. exit codes and messages (the rest is in the corpus) -------------------------------------------


def test_12_u2028_and_u0085_inside_json_strings_are_valid_json_lines(tmp_path, face_path):
    from sow.batch.runner import read_batch_file
    from sow.eval.spec import load_spec

    prompts = ["a chef\u2028in a kitchen", "a chef\x85at work", "a chef\u2029smiling"]
    lines = [json.dumps({"condition": str(face_path), "prompt": p}, ensure_ascii=False) for p in prompts]
    items = read_batch_file(write_file(tmp_path / "jobs.jsonl", "\n".join(lines) + "\n"))
    assert [i.job.prompt for i in items] == prompts
    spec = [json.dumps({"id": f"i{n}", "condition": str(face_path), "prompt": p, "setting": "normal"}, ensure_ascii=False)
            for n, p in enumerate(prompts)]
    assert [i.prompt for i in load_spec(write_file(tmp_path / "spec.jsonl", "\n".join(spec) + "\n"))] == prompts


def test_12_a_prompt_at_the_limit_accepted_up_front_is_never_refused_later(tiny_pipe, face_path):
    from sow.safety.prompt_checks import MAX_PROMPT_CHARS

    prompt = ("a chef " * MAX_PROMPT_CHARS)[: MAX_PROMPT_CHARS - 1] + "s"
    assert len(prompt) == MAX_PROMPT_CHARS
    result = tiny_pipe(face_path, prompt, seed=0, **TINIEST)  # the heuristic planner intensifies it past the limit
    assert len(result.plan.prompt) > MAX_PROMPT_CHARS
    with pytest.raises(InputError, match="the limit is 10,000"):
        tiny_pipe(face_path, prompt + "s", seed=0, **TINIEST)


def test_12_usage_errors_are_one_error_line(capsys):
    code, _, err = run_cli(capsys, ["generate", "x.jpg", "a chef", "--no-such-option"])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: No such option: --no-such-option") and lines[0].endswith("(see sow generate --help)")
    code, _, err = run_cli(capsys, ["generate", "x.jpg", "a chef", "--seed", "many"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: Invalid value for '--seed'")


def test_12_an_unknown_stage_option_is_a_usage_error():
    from sow.errors import StageOptionError
    from sow.plugins import build_registry

    registry = build_registry(load_entry_points=False)
    with pytest.raises(StageOptionError, match="has no option 'face_margn'; its options: detector, face_margin, max_people, pick"):
        registry.create("planner", "heuristic", face_margn=0.1)
    assert StageOptionError.exit_code == 2
