"""The defect tests of this room (issue 13's classes by number; issue 12's one journal):

- 1. output paths unique across roles and jobs
- issue 12: one write_outputs, one journal
"""

from __future__ import annotations

import json

import pytest

from sow.errors import InputError

from tests.support.defects import TINIEST, run_cli, write_file


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


# -- 1. output paths unique across roles and jobs --------------------------------------------------


def test_1_batch_jobs_whose_files_would_collide_across_roles_are_refused_up_front(tmp_path, face_path):
    from sow.batch.runner import read_batch_file

    jobs = tmp_path / "jobs.jsonl"
    for second in ("foo.plan", "FOO"):  # foo.plan's image is foo's plan picture; FOO is foo on macOS
        lines = [json.dumps({"condition": str(face_path), "prompt": "a", "name": n}) for n in ("foo", second)]
        write_file(jobs, "\n".join(lines) + "\n")
        with pytest.raises(InputError) as info:
            read_batch_file(jobs)
        assert "line" in str(info.value) and ("also the output file" in str(info.value) or "already used" in str(info.value))


def test_1_check_unique_compares_names_case_insensitively(tmp_path):
    from sow.io.outputs import check_unique
    from sow.io.results import output_paths

    check_unique(output_paths(tmp_path, "x", num_images=3, attention=True))  # one run: all distinct
    with pytest.raises(InputError, match="also the output file of a image"):
        check_unique({"a image": tmp_path / "Job.png", "b plan_image": tmp_path / "job.png"}, "output file")


# -- issue 12: one write_outputs, one journal --------------------------------------------------------------


def test_batch_and_cli_draw_the_same_plan_picture_for_an_unaligned_box(tmp_path, face_path, tiny_pipe, capsys):
    """Both go through write_outputs: box_v as pasted (snapped to the latent grid), not as planned."""
    from sow.batch.runner import read_batch_file, run_batch

    plan = {"canvas": {"width": 64, "height": 64}, "box_v": [3, 5, 32, 32], "box_r": [0, 0, 64, 64], "prompt": "a chef"}
    plan_file = write_file(tmp_path / "plan.json", json.dumps(plan))
    jobs = write_file(tmp_path / "jobs.jsonl", json.dumps({"condition": str(face_path), "prompt": "a chef", "plan": str(plan_file), "name": "b"}) + "\n")
    run_batch(tiny_pipe, read_batch_file(jobs), tmp_path / "batch", overrides=TINIEST)
    config = write_file(tmp_path / "c.json", json.dumps(TINIEST))
    code, _, err = run_cli(capsys, ["generate", str(face_path), "a chef", "--plan", str(plan_file), "--name", "b", "-q",
                                 "-o", str(tmp_path / "cli"), "--config", str(config)])
    assert code == 0, err
    assert (tmp_path / "batch" / "b.plan.png").read_bytes() == (tmp_path / "cli" / "b.plan.png").read_bytes()
    assert (tmp_path / "batch" / "b.png").read_bytes() == (tmp_path / "cli" / "b.png").read_bytes()
    record = json.loads((tmp_path / "batch" / "b.json").read_text())
    assert record["aligned_box_v"] == {"x": 0, "y": 8, "w": 32, "h": 32} or record["aligned_box_v"]["x"] % 8 == 0


def test_resume_reruns_a_done_item_whose_output_file_is_missing(tmp_path, face_path, tiny_pipe):
    from sow.batch.runner import read_batch_file, run_batch

    jobs = write_file(tmp_path / "jobs.jsonl", "\n".join(json.dumps({"condition": str(face_path), "prompt": f"p{i}", "name": f"j{i}"}) for i in range(2)) + "\n")
    items = read_batch_file(jobs)
    out = tmp_path / "out"
    run_batch(tiny_pipe, items, out, overrides=TINIEST)
    (out / "j1.plan.png").unlink()  # the manifest says done; the folder says otherwise
    summary = run_batch(tiny_pipe, items, out, overrides=TINIEST, resume=True)
    assert (summary.done, summary.skipped) == (1, 1)
    assert (out / "j1.plan.png").is_file()


def test_a_manifest_line_torn_without_its_newline_is_cut_before_the_next_append(tmp_path, face_path, tiny_pipe):
    from sow.batch.runner import MANIFEST_NAME, Manifest, read_batch_file, run_batch

    jobs = write_file(tmp_path / "jobs.jsonl", "\n".join(json.dumps({"condition": str(face_path), "prompt": f"p{i}", "name": f"j{i}"}) for i in range(2)) + "\n")
    items = read_batch_file(jobs)
    out = tmp_path / "out"
    run_batch(tiny_pipe, items[:1], out, overrides=TINIEST)
    with open(out / MANIFEST_NAME, "a") as handle:  # a kill in the middle of a line: no newline
        handle.write('{"event": "start", "id": "j1", "job": "')
    summary = run_batch(tiny_pipe, items, out, overrides=TINIEST, resume=True)
    assert (summary.done, summary.skipped) == (1, 1)
    lines = (out / MANIFEST_NAME).read_text().split("\n")
    assert lines[-1] == "" and all(isinstance(json.loads(line), dict) for line in lines[:-1])  # nothing glued on
    again = run_batch(tiny_pipe, items, out, overrides=TINIEST, resume=True)
    assert (again.done, again.skipped) == (0, 2)
    assert sum(1 for e in Manifest(out).entries() if e.get("event") == "done") == 2


def test_both_journals_share_one_torn_line_policy(tmp_path):
    from sow.batch.runner import Manifest
    from sow.eval.rows import EvalRow, read_rows

    def entry(id_: str) -> dict:  # a whole eval row (the eval reads rows typed), a plain entry for the manifest
        return EvalRow(id=id_, item_key="k", method="m", setting="normal", prompt="p", condition="c.jpg", seed=0, seconds=0.0).to_dict()

    def read_eval_rows(path):
        return [row.to_dict() for row in read_rows(path)]

    a, c = json.dumps(entry("a\u2028b"), ensure_ascii=False), json.dumps(entry("c"))
    for path, read in ((tmp_path / "rows.jsonl", read_eval_rows), (tmp_path / "manifest.jsonl", lambda p: Manifest(p.parent).entries())):
        path.write_text(f'{a}\n{c}\n{{"id": "torn', encoding="utf-8")
        assert read(path) == [entry("a\u2028b"), entry("c")]
        path.write_text(f'{a}\nnot json\n{c}\n', encoding="utf-8")
        with pytest.raises(InputError, match="line 2 is not a JSON row"):
            read(path)


def test_key_value_options_have_one_parser(capsys, tmp_path):
    from sow.io.options import parse_key_values

    assert parse_key_values(["a=1", "b=x", "c=[1, 2]", "d=" + "9" * 5000]) == {"a": 1, "b": "x", "c": [1, 2], "d": "9" * 5000}
    for argv in (["generate", "x.jpg", "p", "--planner-option", "novalue"], ["eval", "s.jsonl", "--metric-option", "novalue"]):
        code, _, err = run_cli(capsys, argv)
        assert code == 2 and "expected KEY=VALUE" in err
