"""sow.faces: the one face detector, used by the heuristic planner and the eval's dlib metric."""

from __future__ import annotations

import pytest
from PIL import Image

from sow import faces
from sow.errors import InputError
from sow.io.images import load_condition
from sow.schemas import Box
from sow.stages import FaceBox


def test_the_default_is_the_cascade_and_finds_one_face(faces_dir):
    image = load_condition(faces_dir / "obama.jpg").image
    found = faces.detect_faces(image)
    assert faces.DEFAULT_BACKEND == "haar" and len(found) == 1
    face = found[0]
    assert isinstance(face, FaceBox) and face.score == 0.0  # the cascade gives no score
    assert 0 <= face.left and face.left + face.width <= image.width and face.width > image.width / 10


def test_the_cascade_answers_in_the_given_images_pixels(faces_dir):
    image = load_condition(faces_dir / "obama_and_biden.jpg").image  # larger than the 640-px long side it looks at
    assert max(image.size) > faces.HAAR_LONG_SIDE
    big = faces.detect_faces(image)
    half = faces.detect_faces(image.resize((image.width // 2, image.height // 2)))
    assert len(big) == len(half) == 2
    assert [f.area for f in big] == sorted((f.area for f in big), reverse=True)  # largest first
    for a, b in zip(big, half):  # the same faces, twice the coordinates (to the rounding of the resize)
        assert abs(a.left - 2 * b.left) <= 8 and abs(a.width - 2 * b.width) <= 8


def test_an_unknown_backend_is_one_line():
    with pytest.raises(InputError, match="face detector must be one of haar, dlib, got 'mtcnn'"):
        faces.detect_faces(Image.new("RGB", (64, 64)), "mtcnn")


def test_no_face_in_a_flat_image():
    assert faces.detect_faces(Image.new("RGB", (200, 100), (90, 90, 90))) == []
    assert faces.face_boxes(Image.new("RGB", (20, 20))) == []  # smaller than the smallest face searched for


@pytest.mark.parametrize(
    ("face", "size", "box"),
    [
        (FaceBox(10, 20, 30, 40), (100, 100), Box(x=10, y=20, w=30, h=40)),  # inside: unchanged
        (FaceBox(-5, -8, 30, 40), (100, 100), Box(x=0, y=0, w=30, h=40)),  # the corner moved onto the image, the side kept
        (FaceBox(90, 95, 30, 40), (100, 120), Box(x=90, y=95, w=10, h=25)),  # cut at the far edges (width, height apart)
        (FaceBox(100, 0, 30, 40), (100, 100), Box(x=100, y=0, w=1, h=40)),  # past the edge: one pixel
    ],
)
def test_inside(face, size, box):
    assert faces.inside(face, size) == box


def test_face_boxes_are_largest_first_then_leftmost(monkeypatch):
    found = [FaceBox(50, 0, 10, 10), FaceBox(5, 0, 10, 10), FaceBox(0, 0, 20, 20)]
    monkeypatch.setattr(faces, "detect_faces", lambda image, backend="haar", long_side=None: found)
    assert faces.face_boxes(Image.new("RGB", (100, 100))) == [Box(x=0, y=0, w=20, h=20), Box(x=5, y=0, w=10, h=10), Box(x=50, y=0, w=10, h=10)]


@pytest.mark.slow  # dlib HOG with one upsampling on a 1000x714 photo: about 9 s on 2 loaded cores
def test_dlib_is_the_same_detector_for_the_planner_and_the_eval(faces_dir):
    pytest.importorskip("dlib")
    from sow.eval.face_metrics import DlibMetric
    from sow.planners.heuristic import DLIB_LONG_SIDE

    photo = load_condition(faces_dir / "obama_and_biden.jpg").image
    image = photo.resize((photo.width // 2, photo.height // 2))  # 1000 px wide: the full-size search stays quick
    metric = DlibMetric()
    found = faces.detect_faces(image, "dlib", upsample=metric.upsample)
    assert metric.detect(image) == found and len(found) == 3  # dlib finds the third face the cascade misses
    assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)  # best first
    # the planner's group-photo search: the same detector on the photo scaled to DLIB_LONG_SIDE
    planner = faces.face_boxes(photo, "dlib", long_side=DLIB_LONG_SIDE)
    assert len(planner) == 3
    for box, face in zip(sorted(planner, key=lambda b: b.x), sorted(found, key=lambda f: f.left)):
        cx, cy = box.center[0] / 2, box.center[1] / 2  # the same face (the photo is twice the size): its centre inside it
        assert face.left <= cx <= face.left + face.width and face.top <= cy <= face.top + face.height
        assert abs(box.w / 2 - face.width) <= 0.2 * face.width  # HOG boxes come in the sizes of its pyramid levels
