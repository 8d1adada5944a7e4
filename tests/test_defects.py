"""Issue 13, class by class: nothing lost, nothing leaked, no false success.

Each test names its class (1-14). The bad-input corpus (test_bad_input_corpus.py) holds the
one-line refusals; here are the cases that need more than an argv: races, plugins,
secrets, special files, the plan cache and the manifest.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest
from PIL import Image

from sow.cli.commands import main
from sow.errors import InputError, PluginError
from sow.hookspecs import hookimpl

REPO = Path(__file__).resolve().parents[1]
TINIEST = {"canvas": {"width": 64, "height": 64}, "cycles": 1, "num_inference_steps": 4, "t1": 2, "t2": 3, "t3": [1]}
SECRET = 'sk-"quoted\\back-1234567890'
"""A key with the two characters JSON escapes."""


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def _use_registry(monkeypatch, *plugins) -> None:
    """Make the process-wide registry the built-ins plus ``plugins`` (no entry points)."""
    import sow.plugins as plugins_module

    registry = plugins_module.build_registry(load_entry_points=False, extra_plugins=plugins)
    monkeypatch.setattr(plugins_module, "_registry", registry)
    monkeypatch.setattr(plugins_module, "get_registry", lambda: registry)
    import sow.pipeline
    import sow.planners.policy  # noqa: F401

    monkeypatch.setattr(sow.pipeline, "get_registry", lambda: registry)


def _planner_plugin(name: str, plan, cacheable: bool = False):
    """A plugin module registering a planner whose ``plan(request)`` is ``plan``."""

    class Planner:
        def __init__(self) -> None:
            self.name = name
            self.cacheable = cacheable
            self.calls = 0

        def plan(self, request):
            self.calls += 1
            return plan(request)

    Planner.name = name
    module = types.ModuleType(f"plugin_{name}")

    @hookimpl
    def register_planners(register):
        register(Planner, name=name, description="test planner")

    module.register_planners = register_planners
    return module


def _good_plan(request, **changes):
    from sow.schemas import Box, Plan

    canvas = request.config.canvas
    side = canvas.width // 2
    data = dict(canvas=canvas, box_v=Box(x=0, y=0, w=side, h=side), box_r=Box(x=0, y=0, w=canvas.width, h=canvas.height),
                prompt=request.prompt, user_prompt=request.prompt, planner="test")
    data.update(changes)
    return Plan(**data)


# -- 1. output paths unique across roles and jobs --------------------------------------------------


def test_1_batch_jobs_whose_files_would_collide_across_roles_are_refused_up_front(tmp_path, face_path):
    from sow.batch.runner import read_batch_file

    jobs = tmp_path / "jobs.jsonl"
    for second in ("foo.plan", "FOO"):  # foo.plan's image is foo's plan picture; FOO is foo on macOS
        lines = [json.dumps({"condition": str(face_path), "prompt": "a", "name": n}) for n in ("foo", second)]
        _write(jobs, "\n".join(lines) + "\n")
        with pytest.raises(InputError) as info:
            read_batch_file(jobs)
        assert "line" in str(info.value) and ("also the output file" in str(info.value) or "already used" in str(info.value))


def test_1_check_unique_compares_names_case_insensitively(tmp_path):
    from sow.io.outputs import check_unique
    from sow.io.results import output_paths

    check_unique(output_paths(tmp_path, "x", num_images=3, attention=True))  # one run: all distinct
    with pytest.raises(InputError, match="also the output file of a image"):
        check_unique({"a image": tmp_path / "Job.png", "b plan_image": tmp_path / "job.png"}, "output file")


# -- 2. eval ids unique on the names written ------------------------------------------------------


def test_2_eval_ids_that_differ_only_in_case_or_punctuation_are_refused(tmp_path, face_path):
    from sow.eval.spec import load_spec

    for a, b in (("Obama", "obama"), ("a b", "a-b"), ("x.", "x")):
        spec = _write(tmp_path / "spec.jsonl", "\n".join(
            json.dumps({"id": i, "condition": str(face_path), "prompt": "p", "setting": "normal"}) for i in (a, b)) + "\n")
        with pytest.raises(InputError, match="writes the same file"):
            load_spec(spec)


def test_2_eval_methods_sharing_a_folder_are_refused():
    from sow.eval.runner import EvalConfig, resolve_methods

    config = EvalConfig(ablations={"Fast": {"cycles": 1}, "fast": {"cycles": 2}})
    with pytest.raises(InputError, match="one folder"):
        resolve_methods(config)


# -- 3. concurrent runs on one --out ----------------------------------------------------------------


def test_3_placing_a_file_never_replaces_one_that_appeared_meanwhile(tmp_path):
    from sow.io.outputs import OutputExistsError, write_bytes_atomic

    target = tmp_path / "x.png"
    target.write_bytes(b"the other run's image")
    with pytest.raises(OutputExistsError, match="already exists"):
        write_bytes_atomic(target, b"mine", replace=False)
    assert target.read_bytes() == b"the other run's image"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temporary left
    write_bytes_atomic(tmp_path / "y.png", b"mine", replace=False)
    assert (tmp_path / "y.png").read_bytes() == b"mine"


def test_3_a_set_of_files_is_placed_whole_or_not_at_all(tmp_path):
    """What `sow plan` (plan + picture) and write_outputs (a run's files) rely on."""
    from sow.io.outputs import OutputExistsError
    from sow.io.results import place_files

    (tmp_path / "p.png").write_bytes(b"theirs")
    with pytest.raises(OutputExistsError):
        place_files({tmp_path / "p.json": b"mine", tmp_path / "p.png": b"mine"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"] and (tmp_path / "p.png").read_bytes() == b"theirs"
    place_files({tmp_path / "p.json": b"mine", tmp_path / "p.png": b"mine"}, overwrite=True)
    assert (tmp_path / "p.png").read_bytes() == b"mine"


def test_3_a_run_that_loses_the_race_fails_in_one_line_and_leaves_the_winners_files(tmp_path, face_path, capsys, monkeypatch):
    """Another run writes the record while this one generates: this one must not replace it, nor leave half a set."""
    import sow.pipeline

    out = tmp_path / "out"
    config = _write(tmp_path / "c.json", json.dumps(TINIEST))
    real_call = sow.pipeline.SOWPipeline.__call__

    def racing_call(self, *args, **kwargs):
        result = real_call(self, *args, **kwargs)
        out.mkdir(exist_ok=True)
        (out / "x.json").write_text("the winner's record")  # appears after check_free looked
        return result

    monkeypatch.setattr(sow.pipeline.SOWPipeline, "__call__", racing_call)
    code, _, err = _run(capsys, ["generate", str(face_path), "a chef", "--name", "x", "-o", str(out), "--config", str(config), "-q"])
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {out / 'x.json'} already exists; pass --overwrite to replace it, or choose another --out/--name"
    ]
    assert (out / "x.json").read_text() == "the winner's record"
    assert sorted(p.name for p in out.iterdir()) == ["x.json"]  # the loser's image and plan picture were taken back


# -- 4. SOW_DEBUG=1 tracebacks are redacted --------------------------------------------------------


def test_4_debug_tracebacks_are_redacted(tmp_path, face_path, capsys, monkeypatch):
    import sow.cli.commands as commands

    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    monkeypatch.setenv("SOW_DEBUG", "1")

    def broken(path):
        raise RuntimeError(f"the server said: key {SECRET} \x1b[2J is invalid")

    monkeypatch.setattr("sow.io.json_files.load_config_file", broken)
    code, out, err = _run(capsys, ["generate", str(face_path), "a chef", "-o", str(tmp_path / "o")])
    assert code == 1
    assert "Traceback" in err and "RuntimeError" in err
    assert SECRET not in err + out and "sk-" not in err and "\x1b" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")][0].startswith("error: unexpected RuntimeError")


# -- 5. every weight loader follows the pickle policy -----------------------------------------------

LOADERS = {"from_pretrained", "from_single_file"}
NO_WEIGHTS = ("Config", "Tokenizer", "Scheduler", "Processor", "ImageProcessorPil", "SOWPipeline")
"""Receivers whose from_pretrained reads JSON or text, never weights (and sow's own pipeline, which passes allow_pickle)."""
POLICY_HELPERS = {"safe_load_kwargs", "load_kwargs"}


def _receiver(call: ast.Call) -> str:
    func = call.func
    value = func.value if isinstance(func, ast.Attribute) else None
    if isinstance(value, ast.Name):
        return value.id
    if isinstance(value, ast.Attribute):
        return value.attr
    return ""


def _policy_call_sites(root: Path):
    """Yield (file:line, why it fails) for every weight-loading call that bypasses the policy."""
    for path in sorted(root.rglob("*.py")):
        if ".venv" in path.parts or "tests" in path.parts:
            continue
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        tree = ast.parse(source)
        helper_vars: set[str] = set()
        for node in ast.walk(tree):  # kwargs = load_kwargs(...) / {..., **safe_load_kwargs()}
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                calls = [n for n in ast.walk(node.value) if isinstance(n, ast.Call)]
                if any(getattr(c.func, "id", getattr(c.func, "attr", "")) in POLICY_HELPERS for c in calls):
                    helper_vars.add(node.targets[0].id)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            name = node.func.attr
            if name == "load" and _receiver(node) == "torch":
                ok = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                if not ok:
                    yield where, "torch.load without weights_only=True"
                continue
            if name not in LOADERS or _receiver(node).endswith(NO_WEIGHTS):
                continue
            keywords = {k.arg for k in node.keywords if k.arg}
            spreads = [k.value for k in node.keywords if k.arg is None]
            by_helper = any(
                (isinstance(v, ast.Call) and getattr(v.func, "id", getattr(v.func, "attr", "")) in POLICY_HELPERS)
                or (isinstance(v, ast.Name) and v.id in helper_vars)
                for v in spreads
            )
            marked = any("pickle-policy:" in lines[i] for i in range(node.lineno - 1, getattr(node, "end_lineno", node.lineno)))
            if not ("use_safetensors" in keywords or by_helper or marked):
                yield where, f"{_receiver(node)}.{name} without use_safetensors, a policy helper or a reviewed '# pickle-policy:' note"


def test_5_every_weight_loading_call_follows_the_pickle_policy():
    bad = [f"{w}: {why}" for root in (REPO / "sow", REPO / "plugins") for w, why in _policy_call_sites(root)]
    assert not bad, "\n".join(bad)


def test_5_the_scan_catches_a_new_bypassing_call(tmp_path, monkeypatch):
    planted = tmp_path / "planted"
    planted.mkdir()
    _write(planted / "m.py", "def f(p):\n    return StableDiffusionInpaintPipeline.from_pretrained(p, local_files_only=True)\n"
                             "def g(p):\n    return torch.load(p)\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert len(list(_policy_call_sites(planted))) == 2


def test_5_inpaint_loader_refuses_pickles_unless_allowed(tmp_path, monkeypatch):
    import diffusers

    from sow.errors import ModelLoadError
    from sow.eval.inpainting import load_inpaint_pipeline
    from sow.safety.security import reset_load_policy, set_load_policy

    seen = []

    def fake_from_pretrained(location, **kwargs):
        seen.append(kwargs.get("use_safetensors"))
        raise OSError("stop here")

    monkeypatch.setattr(diffusers.StableDiffusionInpaintPipeline, "from_pretrained", fake_from_pretrained)
    folder = tmp_path / "inpaint"
    folder.mkdir()
    try:
        for allow in (False, True):
            set_load_policy(allow_pickle=allow)
            with pytest.raises(ModelLoadError):
                load_inpaint_pipeline(str(folder))
    finally:
        reset_load_policy()
    assert seen == [True, None]  # safetensors only by default; either (safetensors first) when pickles are allowed


# -- 6. python -m sow never loads plugins from the working directory --------------------------------


def test_6_python_dash_m_ignores_a_dist_info_in_the_working_directory(tmp_path):
    marker = tmp_path / "ran.txt"
    dist = tmp_path / "evil_plugin-1.0.dist-info"
    dist.mkdir()
    _write(dist / "METADATA", "Metadata-Version: 2.1\nName: evil-plugin\nVersion: 1.0\n")
    _write(dist / "entry_points.txt", "[sow]\nevil = evil_plugin\n")
    _write(tmp_path / "evil_plugin.py", f"open({str(marker)!r}, 'w').write('ran')\n")
    env = {**os.environ, "SOW_LOAD_PLUGINS": "evil"}
    proc = subprocess.run([sys.executable, "-m", "sow", "plugins"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    assert "evil" not in proc.stdout + proc.stderr


def test_6_plugin_search_path_leaves_out_the_working_directory(tmp_path, monkeypatch):
    from sow.plugins import plugin_search_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", ".", str(tmp_path), "/usr/lib/python3/dist-packages"])
    assert plugin_search_path() == ["/usr/lib/python3/dist-packages"]


# -- 7. control characters from remote text ---------------------------------------------------------

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"


def test_7_remote_text_is_printed_and_recorded_without_control_characters(tmp_path, face_path, capsys, monkeypatch):
    plugin = _planner_plugin("chatty", lambda r: _good_plan(r, notes=[f"I chose the face {ESCAPES}on the left"], prompt=f"a chef {ESCAPES}"))
    _use_registry(monkeypatch, plugin)
    code, out, err = _run(capsys, ["plan", str(face_path), "a chef", "--planner", "chatty", "-o", str(tmp_path / "p.json")])
    assert code == 0, err
    assert "I chose the face on the left" in err
    for stream in (out, err, (tmp_path / "p.json").read_text()):
        assert not any(c in stream for c in "\x1b\x07\x9b\u202e")
    config = _write(tmp_path / "c.json", json.dumps(TINIEST))
    code, _, err = _run(capsys, ["generate", str(face_path), "a chef", "--planner", "chatty", "--name", "g", "-q",
                                 "-o", str(tmp_path / "o"), "--config", str(config)])
    assert code == 0, err
    record = (tmp_path / "o" / "g.json").read_text()
    assert "on the left" in record and "\\u001b" not in record and "\x1b" not in record


def test_7_a_remote_error_is_printed_clean(tmp_path, face_path, capsys, monkeypatch):
    from sow.errors import PlannerError

    def refuse(request):
        raise PlannerError(f"API said 400 {ESCAPES}bad request")

    _use_registry(monkeypatch, _planner_plugin("api", refuse))
    code, _, err = _run(capsys, ["plan", str(face_path), "a chef", "--planner", "api", "-o", str(tmp_path / "p.json")])
    assert code == 1 and "400 bad request" in err
    assert not any(c in err for c in "\x1b\x07\x9b\u202e")


# -- 8. redaction before serialisation ---------------------------------------------------------------


def test_8_a_key_with_quotes_and_backslashes_never_reaches_a_json_file(tmp_path, monkeypatch):
    from sow.batch.runner import Manifest
    from sow.io.outputs import save_json_atomic
    from sow.planners.cache import PlanCache
    from sow.schemas import Box, Plan

    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    escaped = json.dumps(SECRET)[1:-1]
    assert escaped != SECRET  # the escaped form is what a redaction after dumps would miss
    save_json_atomic({"error": f"bad key {SECRET}"}, tmp_path / "a.json")
    plan = Plan(box_v=Box(x=0, y=0, w=64, h=64), box_r=Box(x=0, y=0, w=64, h=64), prompt="p", notes=[f"echo {SECRET}"])
    cache_file = PlanCache(tmp_path / "cache").put("k", plan)
    manifest = Manifest(tmp_path)
    with manifest.open(fresh=True):
        manifest.append(event="failed", id="x", error=f"key {SECRET}")
    for path in (tmp_path / "a.json", cache_file, manifest.path):
        text = path.read_text()
        assert escaped not in text and SECRET not in text and "***" in text, path


# -- 9. sys.exit in plugin code is that plugin's failure -------------------------------------------------


def _exiting(request):
    sys.exit(0)


def test_9_sys_exit_in_a_planner_fails_generate_with_the_plugin_named(tmp_path, face_path, capsys, monkeypatch):
    _use_registry(monkeypatch, _planner_plugin("quitter", _exiting))
    config = _write(tmp_path / "c.json", json.dumps(TINIEST))
    code, _, err = _run(capsys, ["generate", str(face_path), "a chef", "--planner", "quitter", "-o", str(tmp_path / "o"), "--config", str(config), "-q"])
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "quitter" in errors[0] and "SystemExit" in errors[0]
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.png"))


def test_9_sys_exit_in_a_batch_makes_failed_items(tmp_path, face_path, tiny_pipe, monkeypatch):
    from sow.batch.runner import read_batch_file, run_batch

    _use_registry(monkeypatch, _planner_plugin("quitter", _exiting))
    monkeypatch.setattr(tiny_pipe, "registry", sys.modules["sow.plugins"].get_registry(), raising=False)
    jobs = _write(tmp_path / "jobs.jsonl", "\n".join(json.dumps({"condition": str(face_path), "prompt": f"p{i}"}) for i in range(2)) + "\n")
    summary = run_batch(tiny_pipe, read_batch_file(jobs), tmp_path / "out", overrides={**TINIEST, "stages": {"planner": "quitter"}})
    assert (summary.done, summary.failed) == (0, 2)
    assert all("quitter" in f["error"] or "SystemExit" in f["error"] for f in summary.failures)


def test_9_sys_exit_in_any_stage_of_a_run_is_a_plugin_error(tiny_pipe, face_path, monkeypatch):
    import sow.engine.inversion

    def exiting_invert(self, *args, **kwargs):
        sys.exit("bye")

    monkeypatch.setattr(sow.engine.inversion.DDIMInverter, "invert", exiting_invert)
    with pytest.raises(PluginError, match=r"plugin code in tests?.*test_defects stopped the run \(it called sys.exit\('bye'\)\)|stopped the run \(it called sys.exit\('bye'\)\)"):
        tiny_pipe(face_path, "a chef", seed=0, **TINIEST)


def test_9_sys_exit_at_plugin_import_is_a_load_failure(monkeypatch):
    import sow.plugins as plugins_module

    class ExitingEntryPoint:
        name, value, group, dist = "exiter", "exiter:plugin", "sow", None

        def load(self):
            raise SystemExit(3)

    monkeypatch.delenv("SOW_LOAD_PLUGINS", raising=False)
    monkeypatch.setattr(plugins_module, "plugin_entry_points", lambda: [ExitingEntryPoint()])
    registry = plugins_module.build_registry()
    assert [(f.name, f.error) for f in registry.failures] == [("exiter", "it called sys.exit(3)")]
    assert "heuristic" in registry.names("planner")


# -- 10. only regular files, with a size cap ---------------------------------------------------------------


def _within(seconds: float, function, *args, **kwargs):
    """``function(*args, **kwargs)`` in a thread; fails the test if it does not return within ``seconds`` (a FIFO hang)."""
    box: dict = {}

    def target():
        try:
            box["value"] = function(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__} hung"
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_10_fifos_and_devices_are_refused_everywhere_a_path_comes_in(tmp_path):
    from sow.batch.runner import read_batch_file
    from sow.eval.runner import load_eval_config
    from sow.eval.spec import load_spec, load_templates
    from sow.io.json_files import load_config_file, load_plan_file

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    readers = [load_plan_file, load_config_file, read_batch_file, load_spec, load_templates, load_eval_config]
    for reader in readers:
        for path in (fifo, Path("/dev/zero")):
            with pytest.raises(InputError, match="not a regular file"):
                _within(10, reader, path)


def test_10_a_file_is_read_only_up_to_its_cap(tmp_path):
    from sow.io.files import read_regular_bytes

    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2000)
    with pytest.raises(InputError, match="over the 1,000-byte limit"):
        read_regular_bytes(big, "plan file", 1000)
    assert read_regular_bytes(big, "plan file", 2000) == b" " * 2000


# -- 11. the plan cache --------------------------------------------------------------------------


def _cache_case(tmp_path, planner_plan):
    from sow.planners.cache import PlanCache
    from sow.schemas import GenerationConfig
    from sow.stages import PlanRequest

    plugin = _planner_plugin("paid", planner_plan, cacheable=True)
    planner = None
    collected = []
    plugin.register_planners(lambda factory, name, description: collected.append(factory))
    planner = collected[0]()
    request = PlanRequest(condition=Image.new("RGB", (96, 96), "gray"), prompt="a chef",
                          config=GenerationConfig.from_preset("normal", canvas={"width": 256, "height": 256}), seed=0)
    cache = PlanCache(tmp_path / "cache")
    return planner, request, cache


@pytest.mark.parametrize("stale", ["canvas", "crop", "fifo", "garbage"])
def test_11_a_bad_cache_entry_is_a_recorded_miss(tmp_path, stale):
    from sow.planners.policy import plan_with_policy
    from sow.schemas import Box, Canvas

    planner, request, cache = _cache_case(tmp_path, _good_plan)
    key = cache.key(request, planner, {})
    cache.folder.mkdir(parents=True)
    entry = _good_plan(request)
    if stale == "canvas":  # a plan for another canvas under this key: a tensor crash if it were used
        entry = entry.model_copy(update={"canvas": Canvas(width=512, height=512)})
        cache.path(key).write_text(entry.model_dump_json())
    elif stale == "crop":
        cache.path(key).write_text(entry.model_copy(update={"crop": Box(x=50, y=50, w=90, h=90)}).model_dump_json())
    elif stale == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("POSIX FIFOs")
        os.mkfifo(cache.path(key))
    else:
        cache.path(key).write_text("{not json")
    plan = _within(10, plan_with_policy, planner, request, cache=cache)
    assert planner.calls == 1
    assert plan.canvas == request.config.canvas and plan.crop is None
    assert any(f"plan cache entry {key[:12]} not used" in note for note in plan.notes)
    if stale != "fifo":  # the entry was replaced by a good one: the next run hits
        again = plan_with_policy(planner, request, cache=cache)
        assert planner.calls == 1 and "read from the plan cache" in again.notes[-1]


def test_11_a_failed_cache_write_is_a_warning(tmp_path):
    from sow.planners.cache import PlanCache
    from sow.planners.policy import plan_with_policy

    planner, request, _ = _cache_case(tmp_path, _good_plan)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    plan = plan_with_policy(planner, request, cache=PlanCache(blocker))
    assert planner.calls == 1
    assert plan.notes[-1].startswith("warning: plan cache not written")


# -- 12. exit codes and messages (the rest is in the corpus) -------------------------------------------


def test_12_u2028_and_u0085_inside_json_strings_are_valid_json_lines(tmp_path, face_path):
    from sow.batch.runner import read_batch_file
    from sow.eval.spec import load_spec

    prompts = ["a chef\u2028in a kitchen", "a chef\x85at work", "a chef\u2029smiling"]
    lines = [json.dumps({"condition": str(face_path), "prompt": p}, ensure_ascii=False) for p in prompts]
    items = read_batch_file(_write(tmp_path / "jobs.jsonl", "\n".join(lines) + "\n"))
    assert [i.job.prompt for i in items] == prompts
    spec = [json.dumps({"id": f"i{n}", "condition": str(face_path), "prompt": p, "setting": "normal"}, ensure_ascii=False)
            for n, p in enumerate(prompts)]
    assert [i.prompt for i in load_spec(_write(tmp_path / "spec.jsonl", "\n".join(spec) + "\n"))] == prompts


def test_12_a_prompt_at_the_limit_accepted_up_front_is_never_refused_later(tiny_pipe, face_path):
    from sow.safety.prompt_checks import MAX_PROMPT_CHARS

    prompt = ("a chef " * MAX_PROMPT_CHARS)[: MAX_PROMPT_CHARS - 1] + "s"
    assert len(prompt) == MAX_PROMPT_CHARS
    result = tiny_pipe(face_path, prompt, seed=0, **TINIEST)  # the heuristic planner intensifies it past the limit
    assert len(result.plan.prompt) > MAX_PROMPT_CHARS
    with pytest.raises(InputError, match="the limit is 10,000"):
        tiny_pipe(face_path, prompt + "s", seed=0, **TINIEST)


def test_12_usage_errors_are_one_error_line(capsys):
    code, _, err = _run(capsys, ["generate", "x.jpg", "a chef", "--no-such-option"])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: No such option: --no-such-option") and lines[0].endswith("(see sow generate --help)")
    code, _, err = _run(capsys, ["generate", "x.jpg", "a chef", "--seed", "many"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: Invalid value for '--seed'")


def test_12_an_unknown_stage_option_is_a_usage_error():
    from sow.errors import StageOptionError
    from sow.plugins import build_registry

    registry = build_registry(load_entry_points=False)
    with pytest.raises(StageOptionError, match="has no option 'face_margn'; its options: detector, face_margin, max_people, pick"):
        registry.create("planner", "heuristic", face_margn=0.1)
    assert StageOptionError.exit_code == 2


# -- 13. one broken plugin, reported by name; the rest works ----------------------------------------------


def _unknown_hook_plugin():
    module = types.ModuleType("typo_plugin")

    @hookimpl
    def register_planer(register):  # the typo: not a sow hook
        pass

    module.register_planer = register_planer
    return module


def _nameless_plugin():
    module = types.ModuleType("nameless_plugin")

    @hookimpl
    def register_planners(register):
        register(lambda: None)  # no name, and a lambda has none either
        register(type("Fine", (), {"name": "fine", "plan": lambda self, r: None}))

    module.register_planners = register_planners
    return module


def test_13_broken_plugins_are_reported_by_name_and_the_rest_works():
    from sow.plugins import build_registry

    first = _planner_plugin("twin", _good_plan)
    second = _planner_plugin("twin", _good_plan)
    second.__name__ = "plugin_twin_again"
    registry = build_registry(load_entry_points=False, extra_plugins=[_unknown_hook_plugin(), _nameless_plugin(), first, second])
    failures = {f.name: f.error for f in registry.failures}
    assert "register_planer" in failures["typo_plugin"]
    assert "without a name" in failures["nameless_plugin"]
    assert "registered by both plugin_twin and plugin_twin_again" in failures["plugin_twin_again"]
    assert registry.get("planner", "twin").distribution == "plugin_twin"
    assert {"heuristic", "fixed", "fine", "twin"} <= set(registry.names("planner"))


def test_13_sow_plugins_lists_the_rest_and_names_the_broken_one(capsys, monkeypatch):
    import sow.plugins as plugins_module

    class EntryPoint:
        def __init__(self, name, plugin):
            self.name, self.value, self.group, self.dist, self._plugin = name, name, "sow", None, plugin

        def load(self):
            return self._plugin

    monkeypatch.delenv("SOW_LOAD_PLUGINS", raising=False)
    monkeypatch.setattr(plugins_module, "plugin_entry_points", lambda: [EntryPoint("typo", _unknown_hook_plugin())])
    plugins_module.reset_registry()
    code, out, err = _run(capsys, ["plugins"])
    assert code == 0
    assert "heuristic" in out and "dam" in out
    assert "plugin typo (typo) failed to load: implements hook 'register_planer'" in " ".join(err.split())


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


# -- issue 12: one write_outputs, one journal --------------------------------------------------------------


def test_batch_and_cli_draw_the_same_plan_picture_for_an_unaligned_box(tmp_path, face_path, tiny_pipe, capsys):
    """Both go through write_outputs: box_v as pasted (snapped to the latent grid), not as planned."""
    from sow.batch.runner import read_batch_file, run_batch

    plan = {"canvas": {"width": 64, "height": 64}, "box_v": [3, 5, 32, 32], "box_r": [0, 0, 64, 64], "prompt": "a chef"}
    plan_file = _write(tmp_path / "plan.json", json.dumps(plan))
    jobs = _write(tmp_path / "jobs.jsonl", json.dumps({"condition": str(face_path), "prompt": "a chef", "plan": str(plan_file), "name": "b"}) + "\n")
    run_batch(tiny_pipe, read_batch_file(jobs), tmp_path / "batch", overrides=TINIEST)
    config = _write(tmp_path / "c.json", json.dumps(TINIEST))
    code, _, err = _run(capsys, ["generate", str(face_path), "a chef", "--plan", str(plan_file), "--name", "b", "-q",
                                 "-o", str(tmp_path / "cli"), "--config", str(config)])
    assert code == 0, err
    assert (tmp_path / "batch" / "b.plan.png").read_bytes() == (tmp_path / "cli" / "b.plan.png").read_bytes()
    assert (tmp_path / "batch" / "b.png").read_bytes() == (tmp_path / "cli" / "b.png").read_bytes()
    record = json.loads((tmp_path / "batch" / "b.json").read_text())
    assert record["aligned_box_v"] == {"x": 0, "y": 8, "w": 32, "h": 32} or record["aligned_box_v"]["x"] % 8 == 0


def test_resume_reruns_a_done_item_whose_output_file_is_missing(tmp_path, face_path, tiny_pipe):
    from sow.batch.runner import read_batch_file, run_batch

    jobs = _write(tmp_path / "jobs.jsonl", "\n".join(json.dumps({"condition": str(face_path), "prompt": f"p{i}", "name": f"j{i}"}) for i in range(2)) + "\n")
    items = read_batch_file(jobs)
    out = tmp_path / "out"
    run_batch(tiny_pipe, items, out, overrides=TINIEST)
    (out / "j1.plan.png").unlink()  # the manifest says done; the folder says otherwise
    summary = run_batch(tiny_pipe, items, out, overrides=TINIEST, resume=True)
    assert (summary.done, summary.skipped) == (1, 1)
    assert (out / "j1.plan.png").is_file()


def test_a_manifest_line_torn_without_its_newline_is_cut_before_the_next_append(tmp_path, face_path, tiny_pipe):
    from sow.batch.runner import MANIFEST_NAME, Manifest, read_batch_file, run_batch

    jobs = _write(tmp_path / "jobs.jsonl", "\n".join(json.dumps({"condition": str(face_path), "prompt": f"p{i}", "name": f"j{i}"}) for i in range(2)) + "\n")
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
        code, _, err = _run(capsys, argv)
        assert code == 2 and "expected KEY=VALUE" in err
