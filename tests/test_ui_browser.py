"""The web app in a real headless Chromium (selenium + the system's chromium-driver), on the tiny model.

Upload a face, plan, move a box, generate; assert on what the page shows and on the plan JSON it
offers; a bad upload shows the one-line error. A screenshot of each step lands in the test's tmp
dir (``SOW_UI_SHOTS=folder`` keeps a copy). Without chromium the test skips, except under CI
(``CI=true``), where .ci/run installs it and a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import pytest

gradio = pytest.importorskip("gradio", reason="the web app needs the extra sow[ui]")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (extra dev)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CANVAS = 128
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_components):
    from sow.pipeline import SOWPipeline
    from sow.ui.app import build_app, launch
    from sow.ui.session import ModelCache

    cache = ModelCache(loader=lambda name: SOWPipeline(tiny_components))
    demo = build_app("tiny", cache=cache, config_overrides={"canvas": {"width": CANVAS, "height": CANVAS}, "cycles": 1})
    port = _free_port()
    launch(demo, port=port, prevent_thread_lock=True)
    yield f"http://127.0.0.1:{port}/", cache
    demo.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromium-driver are missing; .ci/run installs them")
        pytest.skip("no chromium / chromedriver here (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800", "--disable-gpu"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    driver.downloads = downloads
    yield driver
    driver.quit()


def _wait(driver, predicate, timeout=60, what="the page"):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: predicate(d), message=f"waiting for {what}")


def _value(driver, elem_id: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input").get_attribute("value")


def _upload(driver, path: Path) -> None:
    field = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#sow-upload input[type=file]"), what="the upload field")
    field[0].send_keys(str(path))
    _wait(driver, lambda d: path.stem in d.find_element(By.ID, "sow-upload").text, what="the uploaded file")


def _shot(driver, folder: Path, name: str) -> Path:
    path = folder / name
    driver.save_screenshot(str(path))
    keep = os.environ.get("SOW_UI_SHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


def test_upload_plan_move_a_box_generate_and_a_bad_upload(served, browser, faces_dir, tmp_path):
    url, cache = served
    driver = browser
    started = time.perf_counter()
    face = sorted(p for p in faces_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png") and "32bit" not in p.name)[0]
    driver.get(url)
    _upload(driver, face)
    driver.find_element(By.CSS_SELECTOR, "#sow-prompt textarea").send_keys("a chef in a busy kitchen")
    _shot(driver, tmp_path, "1-uploaded.png")

    # Plan: the boxes fill in, the picture appears
    driver.find_element(By.ID, "sow-plan-button").click()
    _wait(driver, lambda d: _value(d, "sow-box-v-w") not in ("", "0"), what="the plan's boxes")
    picture = lambda d: d.find_element(By.CSS_SELECTOR, "#sow-plan-image img").get_attribute("src")  # noqa: E731
    _wait(driver, picture, what="the plan picture")
    first_picture = picture(driver)
    x, w = int(float(_value(driver, "sow-box-v-x"))), int(float(_value(driver, "sow-box-v-w")))
    assert 0 < w <= CANVAS
    assert driver.find_element(By.CSS_SELECTOR, "#sow-plan-prompt textarea").get_attribute("value").strip()
    _shot(driver, tmp_path, "2-planned.png")

    # Move box_v: a new x redraws the picture
    moved = 0 if x >= 8 else CANVAS - w
    moved -= moved % 8
    field = driver.find_element(By.CSS_SELECTOR, "#sow-box-v-x input")
    field.clear()
    field.send_keys(str(moved))
    _wait(driver, lambda d: picture(d) != first_picture, what="the redrawn plan picture")
    assert driver.find_element(By.ID, "sow-error").text.strip() == ""
    _shot(driver, tmp_path, "3-moved.png")

    # Generate: an image of the canvas size; the plan JSON offered has the moved box
    driver.find_element(By.ID, "sow-generate-button").click()
    gallery_img = "#sow-gallery img"
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, gallery_img), timeout=90, what="the generated image")
    img = driver.find_element(By.CSS_SELECTOR, gallery_img)
    _wait(driver, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img), what="the image to load")
    size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
    assert size == [CANVAS, CANVAS]
    _wait(driver, lambda d: "UNet evaluations" in d.find_element(By.ID, "sow-summary").text, what="the summary")
    _shot(driver, tmp_path, "4-generated.png")
    links = _wait(driver, lambda d: [a for a in d.find_elements(By.CSS_SELECTOR, "#sow-downloads a") if "plan" in (a.get_attribute("href") or "")],
                  what="the plan download link")
    links[0].click()
    downloaded = driver.downloads / "plan.json"
    try:
        _wait(driver, lambda d: downloaded.is_file() and downloaded.stat().st_size > 0, timeout=10, what="the download")
        plan, via = json.loads(downloaded.read_text()), "the browser's download"
    except Exception:  # a headless build that keeps downloads to itself: fetch the link the page offers
        plan, via = json.loads(urllib.request.urlopen(links[0].get_attribute("href"), timeout=10).read()), "its link"
    box_v = plan["conditions"][0]["box_v"]  # the plan file holds a list of conditions
    assert box_v["x"] == moved and box_v["w"] == w
    assert cache.loads == 1

    # A bad upload: the one-line error, no traceback
    bad = tmp_path / "not-a-photo.png"
    bad.write_bytes(b"this is text, not a PNG")
    driver.get(url)
    _upload(driver, bad)
    driver.find_element(By.CSS_SELECTOR, "#sow-prompt textarea").send_keys("a chef")
    driver.find_element(By.ID, "sow-plan-button").click()
    message = _wait(driver, lambda d: d.find_element(By.ID, "sow-error").text.strip(), what="the error line")
    _shot(driver, tmp_path, "5-bad-upload.png")
    assert message.startswith("error: ") and "\n" not in message
    assert "not-a-photo.png" in message and "/tmp/gradio" not in message  # the name the user knows, not the cache path
    assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text
    assert cache.loads == 1  # the model was loaded once for the whole session
    print(f"browser test: {time.perf_counter() - started:.1f} s; plan JSON read through {via}")
