"""The face metrics on real photos: the properties sow eval's numbers rest on."""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest
from PIL import Image

from sow.errors import SowError
from sow.eval.face_metrics import (
    DLIB_THRESHOLD,
    MetricUnavailable,
    Reference,
    largest_face,
    measure_identity,
    reference_face,
    search_region,
)
from sow.schemas import Box, Canvas
from sow.stages import FaceMetric

pytest.importorskip("dlib", reason="the eval extra (dlib-bin, face_recognition_models) is not installed")

SINGLE_FACE = ("32bit.png", "biden.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg")
OBAMA = ("32bit.png", "obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg")


@pytest.fixture(scope="module")
def registry(builtin_registry):
    return builtin_registry


@pytest.fixture(scope="module")
def photos(faces_dir):
    return {name: Image.open(faces_dir / name) for name in [*SINGLE_FACE, "obama_and_biden.jpg"]}


@pytest.fixture(scope="module")
def embeddings(dlib_metric, photos):
    """name -> (faces found, embedding of the largest)."""
    out = {}
    for name in SINGLE_FACE:
        image = photos[name].convert("RGB")
        faces = dlib_metric.detect(image)
        out[name] = (faces, dlib_metric.embed(image, largest_face(faces)) if faces else None)
    return out


def test_metrics_are_a_registered_kind(registry, dlib_metric):
    assert {"dlib", "facenet"} <= set(registry.names("metric"))
    assert isinstance(dlib_metric, FaceMetric)
    assert dlib_metric.threshold == DLIB_THRESHOLD == 0.6


def test_every_single_face_photo_has_exactly_one_face(embeddings, photos):
    assert photos["32bit.png"].mode == "RGBA"  # the RGBA photo is measured like the others
    for name in SINGLE_FACE:
        faces, vector = embeddings[name]
        assert len(faces) == 1, f"{name}: {len(faces)} faces"
        assert vector.shape == (128,) and np.isfinite(vector).all()


def test_same_person_pairs_are_closer_than_the_threshold(dlib_metric, embeddings):
    for a, b in itertools.combinations(OBAMA, 2):
        distance = dlib_metric.distance(embeddings[a][1], embeddings[b][1])
        assert 0 <= distance < 0.6, f"{a} vs {b}: {distance:.3f}"


def test_different_people_are_farther_than_the_threshold(dlib_metric, embeddings):
    for name in OBAMA:
        distance = dlib_metric.distance(embeddings[name][1], embeddings["biden.jpg"][1])
        assert distance > 0.6, f"{name} vs biden: {distance:.3f}"


def test_group_photo_holds_obama_and_biden(dlib_metric, embeddings, photos):
    image = photos["obama_and_biden.jpg"].convert("RGB")
    faces = dlib_metric.detect(image)
    # the two men; HOG also finds a child's half-shadowed face low on the right edge
    assert len(faces) >= 2
    two = sorted(faces, key=lambda f: -f.area)[:2]
    vectors = [dlib_metric.embed(image, f) for f in two]
    names = []
    for vector in vectors:
        to_obama = dlib_metric.distance(vector, embeddings["obama.jpg"][1])
        to_biden = dlib_metric.distance(vector, embeddings["biden.jpg"][1])
        assert min(to_obama, to_biden) < 0.6 < max(to_obama, to_biden)
        names.append("obama" if to_obama < to_biden else "biden")
    assert sorted(names) == ["biden", "obama"]
    assert dlib_metric.distance(*vectors) > 0.6


@pytest.mark.parametrize(
    "picture",
    [
        Image.new("RGB", (320, 320), (128, 128, 128)),
        Image.fromarray(np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (320, 1))).convert("RGB"),
    ],
    ids=["gray", "gradient"],
)
def test_a_picture_without_a_face_is_a_detection_failure(dlib_metric, embeddings, picture):
    assert dlib_metric.detect(picture) == []
    reference = Reference(embeddings["obama.jpg"][1], 1)
    measured = measure_identity(dlib_metric, picture, Box(x=40, y=40, w=200, h=200), reference)
    assert (measured.detected, measured.faces, measured.distance, measured.same_person) == (False, 0, None, None)
    assert measured.note == "no face"
    assert reference_face(dlib_metric, picture).embedding is None


def test_identity_is_measured_in_the_box_v_region(dlib_metric, photos):
    """A face pasted at box_v is found there and compared with the condition's face."""
    from sow.engine.seeding import seed_canvas

    box = Box(x=160, y=40, w=200, h=240)
    canvas = seed_canvas(photos["obama2.jpg"], box, Canvas(width=512, height=512))
    obama = reference_face(dlib_metric, photos["obama.jpg"].convert("RGB"))
    biden = reference_face(dlib_metric, photos["biden.jpg"].convert("RGB"))
    same = measure_identity(dlib_metric, canvas, box, obama)
    assert same.detected and same.same_person and same.distance < 0.6
    face = same.face
    assert box.x <= face.center[0] <= box.right and box.y <= face.center[1] <= box.bottom
    assert measure_identity(dlib_metric, canvas, box, biden).same_person is False
    elsewhere = Box(x=0, y=300, w=120, h=120)  # the gray part of the canvas: no face there
    assert not measure_identity(dlib_metric, canvas, elsewhere, obama).detected


def test_search_region_grows_box_and_stays_inside_the_image():
    assert search_region(Box(x=100, y=100, w=100, h=80), 512, 512, 0.25) == (75, 80, 225, 200)
    assert search_region(Box(x=0, y=0, w=512, h=512), 512, 512, 0.25) == (0, 0, 512, 512)


def test_facenet_refuses_with_one_line_when_unavailable(registry):
    if importlib.util.find_spec("facenet_pytorch") and importlib.util.find_spec("torchvision"):
        pytest.skip("facenet-pytorch and torchvision are installed: the refusal cannot happen here")
    with pytest.raises(MetricUnavailable) as info:
        registry.create("metric", "facenet")
    message = str(info.value)
    assert "\n" not in message and "facenet-pytorch" in message and "--metric dlib" in message
    assert isinstance(info.value, SowError)


def test_dlib_without_its_model_files_refuses_with_one_line(registry, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    with pytest.raises(MetricUnavailable, match=r"face_recognition_models.*sow\[eval\]"):
        registry.create("metric", "dlib")


def test_cli_eval_with_unavailable_metric_exits_with_one_line(tmp_path, faces_dir, capsys):
    if importlib.util.find_spec("facenet_pytorch") and importlib.util.find_spec("torchvision"):
        pytest.skip("facenet-pytorch and torchvision are installed")
    from sow.cli.commands import main

    spec = tmp_path / "spec.jsonl"
    spec.write_text(f'{{"id": "a", "condition": "{faces_dir / "obama.jpg"}", "prompt": "a chef", "setting": "normal"}}\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(spec), "-o", str(tmp_path / "out"), "--metric", "facenet", "-q"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: metric 'facenet' is unavailable") and "\n" not in err
    assert not (tmp_path / "out" / "rows.jsonl").exists()
