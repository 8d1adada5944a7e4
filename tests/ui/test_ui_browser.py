"""The web app in a real headless Chromium (selenium + the system's chromium-driver), on the tiny model.

Upload two faces (the preview shows both), plan (two boxes per person, no numbers before), drag the
second person's box_v with real pointer events (selenium's ActionChains: pointerdown, pointermove,
pointerup on the box canvas), generate; assert on what the page shows and on the plan JSON it offers
(the dragged box, snapped to the latent grid); removing a photo plans again for the people left;
a bad upload shows the one-line error. A screenshot of each step lands in the test's tmp
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

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
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


def _upload(driver, paths: list[Path]) -> None:
    field = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#sow-upload input[type=file]"), what="the upload field")
    field[0].send_keys("\n".join(str(p) for p in paths))
    _wait(driver, lambda d: all(p.stem in d.find_element(By.ID, "sow-upload").text for p in paths), what="the uploaded files")


def _shot(driver, folder: Path, name: str) -> Path:
    path = folder / name
    driver.save_screenshot(str(path))
    keep = os.environ.get("SOW_UI_SHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


def _boxes(driver) -> dict[tuple[int, str], list[int]]:
    """The box table as the page shows it: (person, box) -> [x, y, w, h] (read from its text, cell by cell)."""
    words = driver.find_element(By.ID, "sow-box-table").text.split("\n")
    if "h" not in words:
        return {}
    cells, rows = words[words.index("h") + 1 :], {}
    while len(cells) >= 6 and cells[0].isdigit() and cells[1] in ("box_v", "box_r"):
        try:
            rows[(int(cells[0]), cells[1])] = [int(float(v)) for v in cells[2:6]]
        except ValueError:
            break
        cells = cells[6:]
    return rows


def _canvas_point(driver, canvas, x: float, y: float) -> tuple[int, int]:
    """Canvas pixel (x, y) of the plan -> offset from the centre of the box component's drawing surface.

    The page shows the canvas enlarged under a label band (sow.ui.boxes.display_image); the component
    fits that picture into its surface, centred."""
    from sow.ui.boxes import LABEL_MARGIN, display_factor
    from sow.schemas import Plan

    k = display_factor(Plan(canvas={"width": CANVAS, "height": CANVAS}, box_v=[0, 0, 8, 8], box_r=[0, 0, 8, 8], prompt="x"))
    shown_w, shown_h = CANVAS * k, CANVAS * k + LABEL_MARGIN
    width, height = driver.execute_script("const c = arguments[0].getBoundingClientRect(); return [c.width, c.height]", canvas)
    scale = min(width / shown_w, height / shown_h)
    left, top = (width - shown_w * scale) / 2, (height - shown_h * scale) / 2
    return round(left + x * k * scale - width / 2), round(top + (y * k + LABEL_MARGIN) * scale - height / 2)


def test_two_people_plan_drag_the_second_box_generate_and_a_bad_upload(served, browser, faces_dir, tmp_path):
    url, cache = served
    driver = browser
    started = time.perf_counter()
    faces = [faces_dir / "obama.jpg", faces_dir / "biden.jpg"]
    driver.get(url)
    _upload(driver, faces)
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sow-faces img")) == 2, what="the preview of both faces")
    driver.find_element(By.CSS_SELECTOR, "#sow-prompt textarea").send_keys("two friends at a cafe")
    assert _boxes(driver) == {}  # no numbers (no zeros) before Plan
    _shot(driver, tmp_path, "1-uploaded.png")

    # Plan: two boxes per person, in the table and on the canvas
    driver.find_element(By.ID, "sow-plan-button").click()
    _wait(driver, lambda d: len(_boxes(d)) == 4, what="the plan's four boxes")
    planned = _boxes(driver)
    assert all(v % 8 == 0 for (_, kind), box in planned.items() if kind == "box_v" for v in box), planned  # as pasted
    assert driver.find_element(By.CSS_SELECTOR, "#sow-plan-prompt textarea").get_attribute("value").strip()
    canvas = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#sow-plan-editor canvas"), what="the box canvas")[0]
    _shot(driver, tmp_path, "2-planned.png")

    # Drag person 2's box_v with the pointer (real pointer events through the driver): down by 24 canvas px
    x, y, w, h = planned[(2, "box_v")]
    dy = 24 if y + h + 24 <= CANVAS else -min(24, y)
    start = _canvas_point(driver, canvas, x + w / 2, y + h / 2)
    end = _canvas_point(driver, canvas, x + w / 2 + 3, y + h / 2 + dy + 3)  # 3 px off the grid: the release snaps it
    actions = ActionChains(driver, duration=50)
    actions.move_to_element_with_offset(canvas, *start).click_and_hold()
    for step in range(1, 6):
        actions.move_to_element_with_offset(canvas, start[0] + (end[0] - start[0]) * step // 5, start[1] + (end[1] - start[1]) * step // 5)
    actions.release().perform()
    expected_y = y + dy
    _wait(driver, lambda d: _boxes(d).get((2, "box_v"), [None] * 4)[1] not in (None, y), what="the dragged box in the table")
    moved = _boxes(driver)
    assert moved[(2, "box_v")][1] == expected_y, moved  # released 3 px off: snapped back onto the nearest cell
    assert moved[(2, "box_v")][0] == x and moved[(2, "box_v")][2:] == [w, h]  # moved, not resized
    assert moved[(1, "box_v")] == planned[(1, "box_v")]  # the first person stayed
    assert driver.find_element(By.ID, "sow-error").text.strip() == ""
    _shot(driver, tmp_path, "3-dragged.png")

    # Generate: an image of the canvas size; the plan JSON offered has the moved box
    driver.find_element(By.ID, "sow-generate-button").click()
    gallery_img = "#sow-gallery img"
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, gallery_img), timeout=120, what="the generated image")
    img = driver.find_element(By.CSS_SELECTOR, gallery_img)
    _wait(driver, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img), what="the image to load")
    size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
    assert size == [CANVAS, CANVAS]
    _wait(driver, lambda d: "UNet evaluations" in d.find_element(By.ID, "sow-summary").text, what="the summary")
    _shot(driver, tmp_path, "4-generated.png")
    used = driver.find_element(By.ID, "sow-used-plan")
    driver.execute_script("arguments[0].scrollIntoView()", used)
    _wait(driver, lambda d: d.execute_script("const i = arguments[0].querySelector('img'); return i && i.complete && i.naturalWidth", used),
          what="the plan as used")
    used.screenshot(str(tmp_path / "4b-plan-as-used.png"))  # the plan picture as the page shows it: look at its text
    if os.environ.get("SOW_UI_SHOTS"):
        shutil.copy(tmp_path / "4b-plan-as-used.png", Path(os.environ["SOW_UI_SHOTS"]) / "4b-plan-as-used.png")
    links = _wait(driver, lambda d: [a for a in d.find_elements(By.CSS_SELECTOR, "#sow-downloads a") if "plan" in (a.get_attribute("href") or "")],
                  what="the plan download link")
    links[0].click()
    downloaded = driver.downloads / "plan.json"
    try:
        _wait(driver, lambda d: downloaded.is_file() and downloaded.stat().st_size > 0, timeout=10, what="the download")
        plan, via = json.loads(downloaded.read_text()), "the browser's download"
    except Exception:  # a headless build that keeps downloads to itself: fetch the link the page offers
        plan, via = json.loads(urllib.request.urlopen(links[0].get_attribute("href"), timeout=10).read()), "its link"
    second = plan["conditions"][1]["box_v"]
    assert [second[k] for k in "xywh"] == moved[(2, "box_v")]  # the plan file holds the dragged box, as pasted
    assert [plan["conditions"][0]["box_v"][k] for k in "xywh"] == planned[(1, "box_v")]
    assert cache.loads == 1

    # Removing a photo plans again for the people left: one person, two boxes
    driver.find_elements(By.CSS_SELECTOR, "#sow-upload button[aria-label='Remove this file']")[-1].click()
    _wait(driver, lambda d: set(_boxes(d)) == {(1, "box_v"), (1, "box_r")}, what="the plan for the one photo left")
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sow-faces img")) == 1, what="the preview of one face")
    _shot(driver, tmp_path, "5-one-photo-left.png")

    # A bad upload: the one-line error, no traceback
    bad = tmp_path / "not-a-photo.png"
    bad.write_bytes(b"this is text, not a PNG")
    driver.get(url)
    _upload(driver, [bad])
    message = _wait(driver, lambda d: d.find_element(By.ID, "sow-error").text.strip(), what="the error line")
    _shot(driver, tmp_path, "6-bad-upload.png")
    assert message.startswith("error: ") and "\n" not in message
    assert "not-a-photo.png" in message and "/tmp/gradio" not in message  # the name the user knows, not the cache path
    assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text
    assert cache.loads == 1  # the model was loaded once for the whole session
    print(f"browser test: {time.perf_counter() - started:.1f} s; plan JSON read through {via}")
