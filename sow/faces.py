"""Face detection: one function for the heuristic planner and the eval's face metric.

:func:`detect_faces` finds faces with one of two detectors that are genuinely different:

- ``haar`` (the default): OpenCV's bundled Haar cascade (``cv2.data.haarcascades``; no
  download, always installed). Fast, frontal faces; the image is first scaled to
  :data:`HAAR_LONG_SIDE` and its histogram equalised.
- ``dlib``: dlib's HOG detector (the ``eval`` extra: ``dlib-bin``), which finds the turned and
  shadowed faces of group photos the cascade misses, and gives each face a score.

Both answer with :class:`sow.stages.FaceBox` es in the given image's pixels (a face may reach past
the border), best first: dlib's highest score first; the cascade, which gives no score, largest
first. The heuristic planner takes them as boxes inside the photo (:func:`face_boxes`); the
``dlib`` metric of ``sow eval`` (:mod:`sow.eval.face_metrics`) takes them as they are. (The
``facenet`` metric keeps its own MTCNN detector: it belongs to that model.)

May import the root contract (``sow.schemas``, ``sow.stages``, ``sow.errors``) and
``sow.geometry``; OpenCV and dlib are imported when a detector is first used.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.util import find_spec
from typing import Literal

import numpy as np
from PIL import Image

from sow.errors import InputError, PlannerError
from sow.schemas import Box
from sow.stages import FaceBox

Backend = Literal["haar", "dlib"]
BACKENDS: tuple[str, ...] = ("haar", "dlib")
DEFAULT_BACKEND: Backend = "haar"
"""The cascade: always installed (``opencv-python-headless``), no model file to download."""

CASCADE_FILE = "haarcascade_frontalface_alt2.xml"
"""The OpenCV cascade used (the fewest false positives on our test photos among the frontal ones)."""
HAAR_LONG_SIDE = 640
"""The cascade looks at the image scaled to this long side (speed; faces stay > 24 px)."""
MIN_NEIGHBORS = 5
"""Haar ``minNeighbors``: overlapping hits needed for a face."""
MIN_FACE_FRACTION = 1 / 12
"""Smallest face side the cascade searches for, as a fraction of the (scaled) image's short side."""


def has_dlib() -> bool:
    """Whether the ``dlib`` backend can run (dlib is installed)."""
    return find_spec("dlib") is not None


def detect_faces(
    image: Image.Image, backend: Backend = DEFAULT_BACKEND, *, long_side: int | None = None, upsample: int = 0
) -> list[FaceBox]:
    """The faces in ``image``, in its pixels, best first (see the module's docstring).

    ``long_side``: scale the image down to this long side before detecting (never up); the
    faces are scaled back and rounded. Default: :data:`HAAR_LONG_SIDE` for ``haar``, the full
    image for ``dlib``. ``upsample``: dlib's image-pyramid upsamplings (each finds faces half as
    large, at four times the cost); the cascade ignores it.
    """
    if backend not in BACKENDS:
        raise InputError(f"face detector must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if long_side is None and backend == "haar":
        long_side = HAAR_LONG_SIDE
    scale = min(1.0, long_side / max(image.size)) if long_side else 1.0
    if backend == "haar":
        hits = _haar(_scaled(image.convert("L"), scale))
        faces = [FaceBox(*(round(v / scale) for v in hit)) for hit in hits]
        return sorted(faces, key=lambda f: (-f.area, f.left, f.top))
    rects, scores, _ = _dlib_detector().run(np.ascontiguousarray(np.asarray(_scaled(image.convert("RGB"), scale), dtype=np.uint8)), upsample, 0.0)
    faces = [
        FaceBox(round(r.left() / scale), round(r.top() / scale), round(r.width() / scale), round(r.height() / scale), float(s))
        for r, s in zip(rects, scores)
    ]
    return sorted(faces, key=lambda f: -f.score)


def face_boxes(image: Image.Image, backend: Backend = DEFAULT_BACKEND, *, long_side: int | None = None) -> list[Box]:
    """:func:`detect_faces` as boxes inside the image (at least one pixel), largest first (ties: leftmost)."""
    boxes = [inside(face, image.size) for face in detect_faces(image, backend, long_side=long_side)]
    return sorted(boxes, key=lambda b: (-b.w * b.h, b.x, b.y))


def inside(face: FaceBox, size: tuple[int, int]) -> Box:
    """``face`` as a :class:`~sow.schemas.Box` inside an image of ``size``: its corner moved onto the
    image, its sides cut at the far edges (at least one pixel)."""
    width, height = size
    x, y = max(0, face.left), max(0, face.top)
    return Box(x=x, y=y, w=max(1, min(face.width, width - x)), h=max(1, min(face.height, height - y)))


def _scaled(image: Image.Image, scale: float) -> Image.Image:
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR)


def _haar(gray_image: Image.Image) -> list[tuple[int, int, int, int]]:
    """The cascade's ``(x, y, w, h)`` hits on a grayscale image (histogram equalised first)."""
    import cv2

    gray = cv2.equalizeHist(np.asarray(gray_image))
    min_side = max(24, round(min(gray.shape) * MIN_FACE_FRACTION))
    if min(gray.shape) < min_side:
        return []
    hits = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=MIN_NEIGHBORS, minSize=(min_side, min_side))
    return [tuple(int(v) for v in hit) for hit in (hits if len(hits) else [])]


@lru_cache(maxsize=1)
def _cascade():
    import cv2

    classifier = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE_FILE)
    if classifier.empty():  # pragma: no cover - a broken OpenCV install
        raise PlannerError(f"OpenCV could not load its bundled {CASCADE_FILE}; reinstall opencv-python-headless")
    return classifier


@lru_cache(maxsize=1)
def _dlib_detector():
    import dlib

    return dlib.get_frontal_face_detector()
