"""Face metrics for ``sow eval``: the built-in backends and the ID-distance they measure.

Two backends register under the ``metric`` kind (:class:`sow.stages.FaceMetric`):

- ``dlib`` (default, offline): dlib's HOG face detector, its 68-point landmark model
  and its 128-d ResNet face embedding (the files of ``face_recognition_models``);
  Euclidean distance; two faces closer than 0.6 are one person (dlib's convention).
- ``facenet``: MTCNN detection and an InceptionResnetV1 (VGGFace2) embedding from
  ``facenet-pytorch``, the measurement of the paper. It needs facenet-pytorch, its
  torchvision dependency and the recognition weights; without them it refuses with one
  line at creation.

:func:`measure_identity` is the harness's measurement: detect faces in the generated
image's box_v region (with a margin), take the largest, and compare its embedding with
the condition's largest face.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sow.errors import SowError
from sow.faces import detect_faces
from sow.hookspecs import hookimpl
from sow.schemas import Box
from sow.stages import FaceBox, FaceMetric

DLIB_THRESHOLD = 0.6
"""dlib's same-person convention for its 128-d embedding (Euclidean distance)."""
DLIB_UPSAMPLE = 1
"""Image pyramid upsamplings of the HOG detector (1 finds faces down to about 40 px)."""
FACENET_THRESHOLD = 1.0
"""A common same-person convention for FaceNet's unit-length VGGFace2 embedding (Euclidean)."""
FACENET_SIZE = 160
"""InceptionResnetV1's input side in pixels."""
REGION_MARGIN = 0.25
"""How far the searched region extends past box_v, as a share of its sides."""


class MetricUnavailable(SowError):
    """A metric backend whose libraries or weights are missing."""


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _face_recognition_models_dir() -> Path:
    """The ``models/`` folder of ``face_recognition_models``, found without importing it.

    Importing the package needs ``pkg_resources`` (removed from recent setuptools); its
    data files are plain files beside its ``__init__.py``, so the package path suffices.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MetricUnavailable(
            "metric 'dlib' needs the face_recognition_models package (its model files): "
            'pip install "sow[eval]" (or pip install dlib-bin face_recognition_models)'
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class DlibMetric:
    """dlib: HOG detector, 68-point landmarks, 128-d ResNet embedding, Euclidean distance, 0.6."""

    name = "dlib"
    description = "dlib HOG detector + 128-d ResNet embedding, Euclidean, same person below 0.6 (offline)."

    def __init__(self, upsample: int = DLIB_UPSAMPLE, jitters: int = 1, threshold: float = DLIB_THRESHOLD) -> None:
        try:
            import dlib
        except ImportError:
            raise MetricUnavailable(
                "metric 'dlib' needs dlib: pip install \"sow[eval]\" (or pip install dlib-bin face_recognition_models)"
            ) from None
        models = _face_recognition_models_dir()
        landmarks = models / "shape_predictor_68_face_landmarks.dat"
        recognition = models / "dlib_face_recognition_resnet_model_v1.dat"
        for path in (landmarks, recognition):
            if not path.is_file():
                raise MetricUnavailable(f"metric 'dlib': model file {path} is missing; reinstall face_recognition_models")
        self.upsample = upsample
        self.jitters = jitters
        self.threshold = threshold
        self._landmarks = dlib.shape_predictor(str(landmarks))
        self._recognition = dlib.face_recognition_model_v1(str(recognition))
        self._dlib = dlib

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """dlib's HOG faces at full size, highest score first (:func:`sow.faces.detect_faces`)."""
        return detect_faces(image, "dlib", upsample=self.upsample)

    def embed(self, image: Image.Image, face: FaceBox) -> np.ndarray:
        array = _rgb_array(image)
        rect = self._dlib.rectangle(face.left, face.top, face.left + face.width - 1, face.top + face.height - 1)
        shape = self._landmarks(array, rect)
        return np.asarray(self._recognition.compute_face_descriptor(array, shape, self.jitters), dtype=np.float64)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


class FacenetMetric:
    """facenet-pytorch: MTCNN detector, InceptionResnetV1 (VGGFace2) 512-d embedding, Euclidean."""

    name = "facenet"
    description = "MTCNN + InceptionResnetV1 (VGGFace2) from facenet-pytorch, as in the paper (needs its weights)."

    def __init__(
        self,
        weights: str | None = None,
        device: str = "cpu",
        threshold: float = FACENET_THRESHOLD,
        min_probability: float = 0.9,
    ) -> None:
        try:
            import torch
            from facenet_pytorch import MTCNN, InceptionResnetV1
        except ImportError as exc:
            raise MetricUnavailable(
                f"metric 'facenet' is unavailable ({exc}): it needs facenet-pytorch (pip install --no-deps "
                "facenet-pytorch), a torchvision matching your torch, and its VGGFace2 weights; use --metric dlib offline"
            ) from None
        try:
            if weights:
                model = InceptionResnetV1(pretrained=None, classify=False)
                state = torch.load(weights, map_location="cpu", weights_only=True)
                model.load_state_dict({k: v for k, v in state.items() if not k.startswith("logits.")}, strict=False)
            else:  # facenet-pytorch reads its torch-hub cache, downloading when it can
                model = InceptionResnetV1(pretrained="vggface2")
        except Exception as exc:  # download failures come in many types
            raise MetricUnavailable(
                f"metric 'facenet': could not load the VGGFace2 weights ({type(exc).__name__}); pass "
                "--metric-option weights=PATH to a downloaded 20180402-114759-vggface2.pt"
            ) from None
        self.threshold = threshold
        self.min_probability = min_probability
        self._torch = torch
        self._device = torch.device(device)
        self._mtcnn = MTCNN(keep_all=True, device=self._device)
        self._model = model.eval().to(self._device)

    def detect(self, image: Image.Image) -> list[FaceBox]:
        boxes, probs = self._mtcnn.detect(image.convert("RGB"))
        if boxes is None:
            return []
        faces = [
            FaceBox(round(x1), round(y1), max(1, round(x2 - x1)), max(1, round(y2 - y1)), float(p))
            for (x1, y1, x2, y2), p in zip(boxes, probs)
            if p is not None and p >= self.min_probability
        ]
        return sorted(faces, key=lambda f: -f.score)

    def embed(self, image: Image.Image, face: FaceBox) -> np.ndarray:
        crop = image.convert("RGB").crop((face.left, face.top, face.left + face.width, face.top + face.height))
        crop = crop.resize((FACENET_SIZE, FACENET_SIZE), Image.Resampling.BILINEAR)
        pixels = (np.asarray(crop, dtype=np.float32) - 127.5) / 128.0  # facenet's fixed standardization
        tensor = self._torch.from_numpy(pixels).permute(2, 0, 1)[None].to(self._device)
        with self._torch.no_grad():
            return self._model(tensor)[0].cpu().numpy().astype(np.float64)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


@hookimpl
def register_metrics(register):
    register(DlibMetric)
    register(FacenetMetric)


# -- the measurement ---------------------------------------------------------------------


@dataclass
class Reference:
    """The condition's face: its embedding, or why there is none."""

    embedding: np.ndarray | None
    faces: int
    note: str = ""


@dataclass
class IdentityMeasurement:
    """What the metric found in one generated image."""

    faces: int
    """Faces detected in the box_v region."""
    face: FaceBox | None
    """The largest of them, in the generated image's pixels."""
    distance: float | None
    """ID-distance to the condition's face; None without a face on either side."""
    same_person: bool | None
    note: str = ""

    @property
    def detected(self) -> bool:
        return self.faces > 0


def largest_face(faces: list[FaceBox]) -> FaceBox | None:
    return max(faces, key=lambda f: f.area) if faces else None


def reference_face(metric: FaceMetric, condition: Image.Image) -> Reference:
    """Embed the largest face of the condition image."""
    faces = metric.detect(condition)
    face = largest_face(faces)
    if face is None:
        return Reference(None, 0, "no face in the condition")
    return Reference(metric.embed(condition, face), len(faces))


def search_region(box: Box, width: int, height: int, margin: float = REGION_MARGIN) -> tuple[int, int, int, int]:
    """``box`` grown by ``margin`` of its sides on every side, clipped to the image: (left, top, right, bottom)."""
    dx, dy = round(box.w * margin), round(box.h * margin)
    return max(0, box.x - dx), max(0, box.y - dy), min(width, box.right + dx), min(height, box.bottom + dy)


def measure_identity(
    metric: FaceMetric, generated: Image.Image, box_v: Box, reference: Reference, margin: float = REGION_MARGIN
) -> IdentityMeasurement:
    """Detect faces in ``generated`` around ``box_v`` and compare the largest with ``reference``.

    No face in the region is a detection failure (``faces == 0``), never an exception.
    """
    left, top, right, bottom = search_region(box_v, generated.width, generated.height, margin)
    crop = generated.convert("RGB").crop((left, top, right, bottom))
    faces = metric.detect(crop)
    face = largest_face(faces)
    if face is None:
        return IdentityMeasurement(0, None, None, None, "no face")
    placed = FaceBox(face.left + left, face.top + top, face.width, face.height, face.score)
    if reference.embedding is None:
        return IdentityMeasurement(len(faces), placed, None, None, reference.note)
    distance = metric.distance(metric.embed(crop, face), reference.embedding)
    return IdentityMeasurement(len(faces), placed, distance, distance < metric.threshold)


# -- several people ----------------------------------------------------------------------


@dataclass
class PersonMeasurement:
    """One condition (person) of a several-people image: its face, its distance to itself and to the others."""

    condition: int
    """The condition's index in the plan (0-based)."""
    face: FaceBox | None
    """The face found around this condition's box_v (the largest there), in the generated image's pixels."""
    distance: float | None
    """ID-distance to this condition's own reference face."""
    other_distance: float | None
    """The smallest ID-distance to another condition's reference face (None with one reference)."""
    closest: int | None
    """The condition whose reference is nearest to this face (``condition`` itself unless swapped)."""
    same_person: bool | None
    """Own distance under the threshold and no other reference nearer (an identity swap is False)."""
    note: str = ""

    @property
    def detected(self) -> bool:
        return self.face is not None

    @property
    def swapped(self) -> bool:
        """The face is nearer another condition's reference than its own: an identity swap."""
        return self.closest is not None and self.closest != self.condition


def measure_people(
    metric: FaceMetric,
    generated: Image.Image,
    boxes: list[Box],
    references: list[Reference],
    margin: float = REGION_MARGIN,
) -> list[PersonMeasurement]:
    """Per condition: the face around its box_v, compared with every condition's reference.

    Each generated face is matched to its own condition by position (the face found around
    that condition's box_v); its distance to its own reference is the ID-distance, and a
    face nearer another condition's reference than its own is an identity swap, counted as
    not the same person. A search region that reaches a neighbour's box keeps only faces
    whose centre lies nearer this box's centre than any other's.
    """
    image = generated.convert("RGB")
    out: list[PersonMeasurement] = []
    centres = [b.center for b in boxes]
    for i, box in enumerate(boxes):
        left, top, right, bottom = search_region(box, image.width, image.height, margin)
        crop = image.crop((left, top, right, bottom))
        faces = []
        for f in metric.detect(crop):
            cx, cy = f.left + left + f.width / 2, f.top + top + f.height / 2
            nearest = min(range(len(boxes)), key=lambda k: (centres[k][0] - cx) ** 2 + (centres[k][1] - cy) ** 2)
            if nearest == i:
                faces.append(f)
        face = largest_face(faces)
        if face is None:
            out.append(PersonMeasurement(i, None, None, None, None, None, "no face"))
            continue
        placed = FaceBox(face.left + left, face.top + top, face.width, face.height, face.score)
        embedding = metric.embed(crop, face)
        distances = [None if r.embedding is None else metric.distance(embedding, r.embedding) for r in references]
        own = distances[i]
        others = [d for k, d in enumerate(distances) if k != i and d is not None]
        known = [(d, k) for k, d in enumerate(distances) if d is not None]
        closest = min(known)[1] if known else None
        same = None if own is None else bool(own < metric.threshold and closest == i)
        note = "" if own is not None else references[i].note
        if closest is not None and closest != i:
            note = f"identity swap: nearest to condition {closest + 1}"
        out.append(PersonMeasurement(i, placed, own, min(others) if others else None, closest, same, note))
    return out
