"""The web app on a network (issue 27, classes 1, 2, 8, 11): driven through Gradio's HTTP API on 127.0.0.1.

A visitor can post anything to the API, whatever the page's widgets offer; these tests do so:
a server path in the model field, an upload over the cap, fields out of range. The operator's
refusals at start (a config every request would fail on, a port in use, a host that is no
address) are checked through the CLI.
"""

from __future__ import annotations

import io
import json
import socket

import pytest

gradio = pytest.importorskip("gradio", reason="the web app needs the extra sow[ui]")
gradio_client = pytest.importorskip("gradio_client", reason="gradio's client ships with gradio")
httpx = pytest.importorskip("httpx", reason="gradio depends on httpx")

from sow.errors import InputError  # noqa: E402
from sow.ui.limits import UiLimits  # noqa: E402
from sow.ui.session import ModelCache  # noqa: E402

UPLOAD_CAP = 96 * 1024
"""A small cap for the test server: the face photo (re-encoded small) fits, a 200 KiB file does not."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_components, tmp_path_factory):
    """The page on 127.0.0.1 offering only ``tiny``, with a recording loader and a 96 KiB upload cap."""
    from sow.pipeline import SOWPipeline
    from sow.ui.app import build_app, launch

    loaded: list[str] = []
    limits = UiLimits(models=("tiny",), max_upload_bytes=UPLOAD_CAP)
    cache = ModelCache(loader=lambda name: loaded.append(name) or SOWPipeline(tiny_components), limits=limits)
    demo = build_app("tiny", cache=cache, config_overrides={"canvas": {"width": 64, "height": 64}, "cycles": 1}, limits=limits)
    port = _free_port()
    launch(demo, port=port, prevent_thread_lock=True, max_upload_bytes=UPLOAD_CAP)
    from gradio_client import Client

    yield f"http://127.0.0.1:{port}/", loaded, Client(f"http://127.0.0.1:{port}/", verbose=False)
    demo.close()


@pytest.fixture(scope="module")
def small_face(face_path, tmp_path_factory) -> str:
    from PIL import Image

    path = tmp_path_factory.mktemp("faces") / "face.jpg"
    Image.open(face_path).convert("RGB").resize((160, 160)).save(path, quality=85)
    assert path.stat().st_size < UPLOAD_CAP
    return str(path)


def _plan(client, face: str, model: str, **fields):
    """Post the Plan button's request; the page's error line (or the client's refusal) as text."""
    from gradio_client import handle_file

    args = {"prompt": "a chef", "planner": "heuristic", "modulator": "dam", "preset": "normal", "seed": 0, "count": 1, "attention": False}
    args.update(fields)
    try:
        result = client.predict([handle_file(face)], model, args["prompt"], args["planner"], args["modulator"], args["preset"],
                                args["seed"], args["count"], args["attention"], api_name="/on_plan")
    except Exception as exc:  # noqa: BLE001 - gradio refusing the value itself is a refusal too
        return f"refused by gradio: {exc}"
    return result[-2]  # the error line (the plan state, a gr.State, is not returned to a client)


@pytest.mark.parametrize("model", ["/work/shared/data/sd21-base-config", "/etc/passwd", "stabilityai/stable-diffusion-2-1-base", "tiny-sdxl"])
def test_the_model_field_takes_only_the_operators_models(server, small_face, model):
    _, loaded, client = server
    message = _plan(client, small_face, model)
    assert "not offered" in message or "refused by gradio" in message, message
    assert model not in loaded  # nothing was read for a visitor's model name
    assert _plan(client, small_face, "tiny") == ""  # the offered model still plans


def test_an_upload_over_the_cap_is_refused_before_it_is_stored(server):
    url, _, _ = server
    big = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", io.BytesIO(b"\0" * (200 * 1024)), "image/png")})
    assert big.status_code == 413, big.text
    small = httpx.post(url + "gradio_api/upload", files={"files": ("small.png", io.BytesIO(b"\0" * 1024), "image/png")})
    assert small.status_code == 200


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("planner", "../../evil", "planner '../../evil' is not offered"),
        ("preset", "nope", "preset 'nope' is not offered"),
        ("count", 1000, "images 1000: must be a whole number in 1 .. 4"),
        ("seed", -5, "seed -5"),
        ("prompt", "x" * 10_001, "10,001 characters; the limit is 10,000"),
    ],
)
def test_every_field_is_checked_server_side(server, small_face, field, value, expected):
    _, _, client = server
    message = _plan(client, small_face, "tiny", **{field: value})
    assert expected in message or "refused by gradio" in message, message


def test_the_handlers_check_uploads_again(tmp_path):
    """A file that reaches a handler another way (not Gradio's upload route) is held to the same caps."""
    limits = UiLimits(models=("tiny",), max_upload_bytes=1000, upload_roots=(tmp_path / "uploads",))
    (tmp_path / "uploads").mkdir()
    inside = tmp_path / "uploads" / "a.png"
    inside.write_bytes(b"\0" * 10)
    assert limits.uploads([inside]) == [inside]
    with pytest.raises(InputError, match="not an uploaded file"):
        limits.uploads([tmp_path / "elsewhere.png"])
    inside.write_bytes(b"\0" * 2000)
    with pytest.raises(InputError, match="over the upload limit of 1,000 bytes"):
        limits.uploads([inside])
    with pytest.raises(InputError, match="17 photos uploaded; the limit is 16"):
        limits.uploads([inside] * 17)


def test_the_cache_holds_at_most_max_loaded_models_evicting_the_oldest():
    made: list[str] = []
    cache = ModelCache(loader=lambda name: made.append(name) or object(), limits=UiLimits(models=("a", "b", "c"), max_loaded=2))
    cache.get("a"), cache.get("b"), cache.get("a"), cache.get("c")
    assert cache.loaded == ["a", "c"]  # b was used longest ago
    cache.get("b")
    assert made == ["a", "b", "c", "b"] and cache.loaded == ["c", "b"]
    with pytest.raises(InputError, match="not offered here; choose one of: a, b, c"):
        cache.get("/etc")


def _ui(args: list[str], capsys) -> tuple[int, str]:
    from sow.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["ui", *args])
    return exit_info.value.code, capsys.readouterr().err.strip()


def test_sow_ui_checks_its_config_at_start(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"canvas": {"width": 100, "height": 64}}))
    code, err = _ui(["--config", str(config), "--port", str(_free_port())], capsys)
    assert code == 2 and err.startswith(f"error: --config {config}: invalid config: canvas.width") and "\n" not in err


def test_sow_ui_port_in_use_is_the_environments_problem_found_before_loading(capsys, monkeypatch):
    import sow.ui.session as session

    monkeypatch.setattr(session.ModelCache, "get", lambda self, name: pytest.fail("the model loaded before the port was checked"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = _ui(["--port", str(port)], capsys)
    assert code == 1 and err == f"error: port {port} on 127.0.0.1 is already in use (another server?); choose another --port"


@pytest.mark.parametrize("host, expected", [("no such host!", "not a host name or IP address"),
                                            ("256.1.1.1", "no such host"),
                                            ("192.0.2.77", "not an address of this machine")])
def test_sow_ui_bad_host_is_an_input_error(capsys, host, expected):
    code, err = _ui(["--host", host, "--port", str(_free_port())], capsys)
    assert code == 2 and expected in err and "bug" not in err, err


def test_sow_ui_refuses_a_model_that_is_not_there_before_serving(capsys, tmp_path):
    code, err = _ui(["--model", "tiny", "--model", str(tmp_path / "missing"), "--port", str(_free_port())], capsys)
    assert code == 2 and "not found" in err
