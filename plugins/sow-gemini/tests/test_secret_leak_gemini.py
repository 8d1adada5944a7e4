"""The secret-leak test on the real Gemini planner: a fake key, a fake server that echoes it back.

Runs ``sow generate`` (single and --batch) and ``sow plan`` through the CLI with the
installed sow-gemini plugin against a server on 127.0.0.1 that puts the key in its error
messages and in its answers. The key must appear nowhere: stdout, stderr, logs, run
records, plan files, the plan cache, the batch manifest.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("sow_gemini", reason="sow-gemini not installed (pip install -e plugins/sow-gemini)")

from sow.cli.commands import main  # noqa: E402
from sow.plugins import reset_registry  # noqa: E402

FAKE_KEY = "AIzaSy-FAKE-robust-0123456789-abcdef"
FAST = {"canvas": {"width": 128, "height": 128}, "cycles": 1}


class EchoingGemini:
    """Answers every generateContent with ``mode``: 'reject' (400 quoting the key) or 'echo' (valid, key inside)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.seen_keys: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                key = self.headers.get("x-goog-api-key", "")
                owner.seen_keys.append(key)
                if owner.mode == "reject":
                    status, payload = 400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": f"API key not valid: {key}. Please pass a valid API key."}}
                else:
                    schema = body["generationConfig"]["responseJsonSchema"]["properties"]
                    if "prompt" in schema:
                        answer = {"description": f"a person (key {key})", "prompt": f"a chef, key {key}"}
                    elif "box_v" in schema:
                        answer = {"box_v": [40, 0, 48, 48], "reason": f"because {key}"}
                    else:
                        answer = {"box_r": [24, 48, 80, 80], "reason": f"because {key}"}
                    status, payload = 200, {"candidates": [{"content": {"role": "model", "parts": [{"text": json.dumps(answer)}]}, "finishReason": "STOP"}]}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("SOW_LOAD_PLUGINS", "gemini")
    monkeypatch.setenv("SOW_CACHE_DIR", str(tmp_path / "cache"))
    reset_registry()
    yield tmp_path
    reset_registry()


def _files_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("mode", ["reject", "echo"])
def test_fake_key_leaves_no_trace(env, face_path, capsys, caplog, mode):
    server = EchoingGemini(mode)
    caplog.set_level(logging.DEBUG)
    config = env / "fast.json"
    config.write_text(json.dumps(FAST))
    options = ["--planner", "gemini", "--planner-option", f"base_url={server.url}", "--planner-option", "backoff=0", "--planner-option", "http_retries=0", "--planner-option", "retries=0"]
    codes = []
    try:
        for argv in (
            ["generate", str(face_path), "a chef", *options, "--config", str(config), "-o", str(env / "single"), "-q"],
            ["plan", str(face_path), "a chef", *options, "--config", str(config), "-o", str(env / "plans" / "p.json")],
        ):
            with pytest.raises(SystemExit) as info:
                main(argv)
            codes.append(info.value.code)
        jobs = env / "jobs.jsonl"
        jobs.write_text(json.dumps({"condition": str(face_path), "prompt": "a chef", "name": "b"}) + "\n")
        with pytest.raises(SystemExit) as info:
            main(["generate", "--batch", str(jobs), *options, "--config", str(config), "-o", str(env / "batch"), "--json"])
        codes.append(info.value.code)
    finally:
        server.close()
    captured = capsys.readouterr()
    assert server.seen_keys and set(server.seen_keys) == {FAKE_KEY}  # the planner really used the key
    if mode == "reject":
        assert codes == [1, 1, 1] and "error: " in captured.err
        assert "failed" in _files_text(env / "batch")  # the manifest recorded the failure
    else:
        assert codes == [0, 0, 0], captured.err
        record = json.loads((env / "single" / "a-chef-s0.json").read_text())
        assert "***" in record["plan"]["prompt"]
        assert "***" in (env / "plans" / "p.json").read_text()
    haystack = "\n".join([captured.out, captured.err, caplog.text, _files_text(env)])
    assert FAKE_KEY not in haystack
    assert FAKE_KEY[8:24] not in haystack
