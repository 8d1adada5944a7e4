"""The sow-gemini plugin through the real google-genai client against a fake Gemini server on 127.0.0.1.

Needs the plugin installed (`pip install -e plugins/sow-gemini`, as in the README's tests block).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata

import pytest

from sow.cli.commands import main
from sow.errors import InputError, PlannerError
from sow.io.images import load_condition
from sow.planners.policy import plan_with_policy
from sow.plugins import build_registry
from sow.schemas import GenerationConfig, Plan
from sow.stages import PlanRequest

from sow.planners.toolkit import SYSTEM, stage_text
from sow_gemini import GeminiPlanner  # not installed? pip install -e plugins/sow-gemini

KEY = "sk-test-SECRET-4242"
PATH = re.compile(r"^/v1[a-z0-9]*/models/(?P<model>[^/:]+):generateContent$")

RECOGNITION = {
    "description": "a smiling middle-aged man with short dark hair",
    "prompt": "a smiling middle-aged man with short dark hair as a chef in a busy kitchen",
}
POSITION = {"box_v": [160, 40, 200, 200]}
REFINEMENT = {"box_r": {"x": 110, "y": 240, "w": 300, "h": 272}}  # an object with x/y/w/h reads too


def answer(obj=None, text=None, tokens=100):
    body = text if text is not None else json.dumps(obj)
    return 200, {
        "candidates": [{"content": {"role": "model", "parts": [{"text": body}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": tokens - 20, "candidatesTokenCount": 20, "totalTokenCount": tokens},
    }, 0.0


def error(code, status, message):
    return code, {"error": {"code": code, "message": message, "status": status}}, 0.0


GOOD = [answer(RECOGNITION), answer(POSITION), answer(REFINEMENT)]


class FakeGemini:
    """A scripted Gemini endpoint: each POST gets the next (status, JSON body, delay) of ``script``."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict, float]] = []
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, payload, delay = fake.script.pop(0) if fake.script else error(500, "INTERNAL", "script ran out")
                if delay:
                    time.sleep(delay)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout scenario)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = FakeGemini()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def key(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("SOW_CACHE_DIR", str(tmp_path / "cache"))
    return KEY


def planner(fake, **options):
    return GeminiPlanner(base_url=fake.url, **{"backoff": 0.01, **options})


@pytest.fixture
def request_(face_path):
    return PlanRequest(condition=load_condition(face_path).image, prompt="a chef in a busy kitchen", config=GenerationConfig())


def assert_no_key(*texts):
    for text in texts:
        assert KEY not in text


def test_discovered_through_its_entry_point():
    points = {ep.name: ep for ep in metadata.entry_points(group="sow")}
    assert points["gemini"].value == "sow_gemini" and points["gemini"].dist.name == "sow-gemini"
    entry = build_registry().get("planner", "gemini")
    assert entry.distribution == "sow-gemini" and entry.factory is GeminiPlanner


def test_good_answer(fake, request_, caplog):
    caplog.set_level(logging.DEBUG)
    fake.script = list(GOOD)
    plan = planner(fake).plan(request_)
    assert len(fake.requests) == 3
    for req in fake.requests:
        assert PATH.match(req["path"]).group("model") == "gemini-2.5-flash"
        assert req["headers"]["x-goog-api-key"] == KEY  # sent as a header, never in the URL
        parts = req["body"]["contents"][0]["parts"]
        assert parts[0]["inlineData"]["mime_type"] == "image/jpeg" and parts[1]["text"]
        assert req["body"]["generationConfig"]["responseMimeType"] == "application/json"
        assert req["body"]["systemInstruction"]["parts"][0]["text"] == SYSTEM  # the toolkit's words
    schemas = [r["body"]["generationConfig"]["responseJsonSchema"] for r in fake.requests]
    assert "prompt" in schemas[0]["properties"] and "box_v" in schemas[1]["properties"] and "box_r" in schemas[2]["properties"]
    texts = [r["body"]["contents"][0]["parts"][1]["text"] for r in fake.requests]
    assert texts[0] == stage_text("intensify", prompt="a chef in a busy kitchen", canvas=None, width=512, height=512)
    assert RECOGNITION["prompt"] in texts[1] and "between 180 and 256 pixels" in texts[1]
    assert "box_v = [160, 40, 200, 200]" in texts[2]  # stage 3 sees box_v
    assert plan.box_v.as_list() == [160, 40, 200, 200] and plan.box_r.as_list() == [110, 240, 300, 272]
    assert plan.prompt == RECOGNITION["prompt"] and plan.user_prompt == "a chef in a busy kitchen"
    assert plan.planner == "gemini" and plan.repairs == []
    assert any("3 requests" in n and "300 tokens" in n for n in plan.notes)
    assert_no_key(plan.model_dump_json(), caplog.text)


def test_malformed_json_is_asked_again_then_one_clear_line(fake, request_):
    fake.script = [answer(text='{"description": "a man", "prompt": tr'), answer({"description": "a man"})]
    with pytest.raises(PlannerError) as info:
        planner(fake).plan(request_)
    message = str(info.value)
    assert message.startswith("gemini intensify answer unusable after 2 tries") and "prompt" in message and "\n" not in message
    assert len(fake.requests) == 2
    retry = fake.requests[1]["body"]["contents"]  # the toolkit's retry: the bad answer, then the feedback
    assert [c["role"] for c in retry] == ["user", "model", "user"]
    assert retry[1]["parts"][0]["text"].startswith('{"description": "a man", "prompt": tr')
    assert retry[2]["parts"][0]["text"].startswith("Your answer could not be used")


def test_a_bad_answer_then_a_good_one_is_recorded(fake, request_):
    fake.script = [answer(text="no json"), *GOOD]
    plan = planner(fake).plan(request_)
    assert len(fake.requests) == 4 and plan.box_v.as_list() == [160, 40, 200, 200]
    assert any(r.startswith("intensify answer read on retry 1") for r in plan.repairs)


def test_malformed_json_with_the_heuristic_fallback(fake, request_):
    fake.script = [answer(text="not json at all")]
    plan = plan_with_policy(planner(fake, retries=0), request_, on_error="heuristic")
    assert plan.planner == "heuristic"
    assert "'gemini' failed" in plan.notes[0] and "no JSON object" in plan.notes[0]


def test_boxes_off_the_canvas_are_repaired_and_recorded(fake, request_):
    fake.script = [
        answer(RECOGNITION),
        answer({"box_v": [420, -60, 320, 300]}),
        answer({"box_r": [-100, 250, 900, 900]}),
    ]
    plan = planner(fake).plan(request_)
    lo, hi = request_.config.side_limits()
    assert max(plan.box_v.w, plan.box_v.h) == hi  # scaled into the side limits
    assert plan.box_v.fits(plan.canvas) and plan.box_r.fits(plan.canvas)
    joined = "\n".join(plan.repairs)
    assert "outside 180..256" in joined and "moved inside" in joined and "box_r" in joined


def test_429_then_success_retries_with_backoff(fake, request_):
    fake.script = [error(429, "RESOURCE_EXHAUSTED", "quota"), error(503, "UNAVAILABLE", "busy"), *GOOD]
    start = time.perf_counter()
    plan = planner(fake, backoff=0.2, thinking_budget=0).plan(request_)
    waited = time.perf_counter() - start
    assert len(fake.requests) == 5 and plan.box_v.as_list() == [160, 40, 200, 200]
    assert waited >= 0.2 + 0.4  # the SDK's exponential backoff: 0.2 s, then 0.4 s (plus jitter)
    thinking = fake.requests[-1]["body"]["generationConfig"]["thinkingConfig"]
    assert list(thinking.values()) == [0]  # the SDK spells the key thinking_budget; the API takes either


def test_retries_run_out(fake, request_):
    fake.script = [error(503, "UNAVAILABLE", "busy")] * 3
    with pytest.raises(PlannerError, match=r"server error 503 .* after 2 attempt"):
        planner(fake, http_retries=1).plan(request_)
    assert len(fake.requests) == 2


def test_timeout(fake, request_):
    fake.script = [(200, answer(RECOGNITION)[1], 20.0)]  # the server would answer after 20 s
    start = time.perf_counter()
    with pytest.raises(PlannerError, match=r"did not answer the intensify request within 0.3 s"):
        planner(fake, timeout=0.3, http_retries=0).plan(request_)
    # gave up long before the answer came (a busy CI machine adds seconds, not 20), and did not retry
    assert time.perf_counter() - start < 10
    assert len(fake.requests) == 1


def test_401_names_the_key_variable_and_never_the_key(fake, request_, caplog):
    caplog.set_level(logging.DEBUG)
    fake.script = [error(401, "UNAUTHENTICATED", f"API key not valid: {KEY}")]
    with pytest.raises(PlannerError) as info:
        planner(fake).plan(request_)
    message = str(info.value)
    assert "rejected the API key" in message and "GEMINI_API_KEY" in message
    assert len(fake.requests) == 1  # not retried
    assert_no_key(message, caplog.text)


def test_missing_key_and_bad_option(monkeypatch, fake, request_):
    monkeypatch.delenv("GEMINI_API_KEY")
    from sow.errors import PlannerSetupError

    with pytest.raises(PlannerSetupError, match="GEMINI_API_KEY") as missing:  # configuration: exit 2
        planner(fake).plan(request_)
    assert missing.value.exit_code == 2
    with pytest.raises(PlannerSetupError, match="GEMINI_API_KEY"):
        planner(fake).preflight()  # the CLI asks before any model loads
    assert fake.requests == []
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    fake.script = list(GOOD)
    assert planner(fake).plan(request_).planner == "gemini"
    with pytest.raises(InputError, match="timeout"):
        GeminiPlanner(timeout=-1)
    with pytest.raises(InputError, match="api_key"):
        GeminiPlanner(api_key="x")


def test_cli_plan_uses_the_cache_and_never_writes_the_key(fake, face_path, tmp_path, capsys):
    fake.script = list(GOOD)
    argv = ["plan", str(face_path), "a chef in a busy kitchen", "--planner", "gemini",
            "--planner-option", f"base_url={fake.url}", "-o", str(tmp_path / "plan.json")]
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 0, captured.err
    plan = Plan.model_validate_json((tmp_path / "plan.json").read_text())
    assert plan.planner == "gemini" and len(fake.requests) == 3
    with pytest.raises(SystemExit) as info:
        main([*argv, "--overwrite"])
    assert info.value.code == 0 and len(fake.requests) == 3  # the cache answered
    captured2 = capsys.readouterr()
    assert "plan cache" in captured2.err
    cached = "".join(p.read_text() for p in (tmp_path / "cache" / "plans").glob("*.json"))
    assert_no_key(captured.err, captured.out, captured2.err, (tmp_path / "plan.json").read_text(), cached)
    # a 401 through the CLI: one line, exit 1, no key
    fake.script = [error(401, "UNAUTHENTICATED", f"bad key {KEY}")]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--overwrite", "--no-cache"])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "rejected the API key" in err and "--on-planner-error heuristic" in err
    assert_no_key(err)


@pytest.fixture
def reuse_tiny(monkeypatch, tiny_components):
    """The CLI builds the tiny model on each call; reuse the session's instead (same weights, faster)."""
    monkeypatch.setattr("sow.pipeline.load_components", lambda *args, **kwargs: tiny_components)


def test_generate_falls_back_to_the_heuristic_planner_when_asked(reuse_tiny, monkeypatch, face_path, tmp_path, capsys):
    monkeypatch.delenv("GEMINI_API_KEY")
    config = tmp_path / "fast.json"
    config.write_text(json.dumps({"canvas": {"width": 256, "height": 256}, "cycles": 2}))
    argv = ["generate", str(face_path), "a chef", "--planner", "gemini", "--config", str(config), "-q", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "no Gemini API key" in err and "--on-planner-error heuristic" in err  # configuration: exit 2
    with pytest.raises(SystemExit) as info:
        main([*argv, "--on-planner-error", "heuristic"])
    err = capsys.readouterr().err
    assert info.value.code == 0, err
    assert "planner 'gemini' failed (no Gemini API key" in err and "heuristic planner planned instead" in err
    record = json.loads(next((tmp_path / "o").glob("*.json")).read_text())
    assert record["plan"]["planner"] == "heuristic" and "gemini" in record["plan"]["notes"][0]


def test_several_photos_one_position_answer_with_a_fallback_per_condition(fake, face_path):
    """Several conditions: the toolkit's strip of the photos, every box_v in one answer, every box_r in one."""
    image = load_condition(face_path).image
    request = PlanRequest(condition=image, prompt="two friends", config=GenerationConfig(canvas={"width": 768, "height": 512}),
                          conditions=[image, image])
    fake.script = [
        answer({"description": "two men", "prompt": "two smiling men, two friends"}),
        answer({"boxes": [[40, 40, 240, 240]]}),  # box_v of photo 2 missing
        answer({"boxes": [[0, 280, 380, 232], [384, 280, 384, 232]]}),
    ]
    plan = planner(fake).plan(request)
    assert len(fake.requests) == 3
    position = fake.requests[1]["body"]
    assert len(position["contents"][0]["parts"]) == 2  # the strip of both photos, then the question
    assert "2 photos side by side" in position["contents"][0]["parts"][1]["text"]
    assert "boxes" in position["generationConfig"]["responseJsonSchema"]["properties"]
    assert [c.image for c in plan.conditions] == [0, 1] and plan.overlaps(8) == []
    assert plan.conditions[0].box_v.as_list() == [40, 40, 240, 240]
    assert any(r.startswith("condition 2: the answer gave no box_v") for r in plan.repairs)
