"""The paste (issue 26): after decoding, each condition's kept pixels are in the output exactly.

The expected kept pixels are rebuilt here from the files, independently of the pipeline: the
condition image (its plan crop), resized to the aligned box_v with Lanczos, the mask resized
with nearest neighbour and read at 128. On the tiny model the decode alone misses them by up to
~250/255, so equality is the paste's doing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sow.eval.kept_region import seam_score
from sow.io.paste import KeptCondition, band_width, feather_offset, kept_layout, paste_array, paste_outputs
from sow.schemas import Box, Canvas, Plan

ONE = Plan(canvas={"width": 128, "height": 128}, conditions=[{"image": 0, "box_v": [40, 24, 48, 48], "box_r": [24, 72, 80, 56]}], prompt="a chef")
TWO = Plan(
    canvas={"width": 192, "height": 128},
    conditions=[{"image": 0, "box_v": [8, 8, 64, 64], "box_r": [8, 72, 64, 56]}, {"image": 1, "box_v": [104, 16, 48, 48], "box_r": [96, 64, 64, 64]}],
    prompt="two friends at a cafe",
)


def expected_kept(path_or_image, box: Box, mask: Image.Image | None = None, crop: Box | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(box-sized uint8 RGB, bool keep) rebuilt from the condition file as the README describes it."""
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    image = image.convert("RGB")
    if crop is not None:
        image = image.crop((crop.x, crop.y, crop.right, crop.bottom))
    pixels = np.asarray(image.resize((box.w, box.h), Image.Resampling.LANCZOS))
    if mask is None:
        return pixels, np.ones((box.h, box.w), bool)
    return pixels, np.asarray(mask.convert("L").resize((box.w, box.h), Image.Resampling.NEAREST)) >= 128


def region(image: Image.Image, box: Box) -> np.ndarray:
    return np.asarray(image.convert("RGB"))[box.y : box.bottom, box.x : box.right]


def holed_mask(side: int) -> Image.Image:
    mask = Image.new("L", (side, side), 255)
    mask.paste(0, (side // 3, side // 3, 2 * side // 3, 2 * side // 3))  # a hole in the middle
    return mask


# -- on the tiny model -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["feather", "hard"])
def test_one_condition_kept_pixels_exact_after_the_paste(tiny_pipe, face_path, mode):
    out = tiny_pipe(face_path, "a chef", plan=ONE, seed=5, canvas=ONE.canvas, cycles=1, paste=mode)
    box = out.record.conditions[0].aligned_box_v
    pixels, keep = expected_kept(face_path, box)
    assert np.array_equal(region(out.image, box)[keep], pixels[keep])
    before = region(out.artifacts["unpasted"][0], box).astype(int)
    assert np.abs(before - pixels).max() > 20  # the decode alone is far from it: the paste did this
    assert out.record.config.paste == mode


def test_paste_none_is_the_decode_and_says_so(tiny_pipe, face_path):
    out = tiny_pipe(face_path, "a chef", plan=ONE, seed=5, canvas=ONE.canvas, cycles=1, paste="none")
    box = out.record.conditions[0].aligned_box_v
    pixels, keep = expected_kept(face_path, box)
    assert not np.array_equal(region(out.image, box), pixels)
    assert out.artifacts["unpasted"] is out.images
    assert any(w.startswith("paste none") for w in out.record.warnings)


@pytest.mark.parametrize("mode", ["feather", "hard"])
def test_two_conditions_with_a_holed_mask_and_an_alpha_channel_non_square(tiny_pipe, faces_dir, face_path, tmp_path, mode):
    # condition 2: an RGBA file whose alpha hides its left third
    rgba = Image.open(faces_dir / "biden.jpg").convert("RGBA").resize((485, 1102))  # under the loader's working size
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (0, 0, rgba.width // 3, rgba.height))
    rgba.putalpha(alpha)
    second = tmp_path / "alpha.png"
    rgba.save(second)
    holes = holed_mask(200)
    out = tiny_pipe([face_path, second], "two friends", plan=TWO, seed=2, canvas=TWO.canvas, cycles=1, paste=mode, mask=[holes, None])
    for k, (source, mask) in enumerate([(face_path, holes), (second, alpha)]):
        box = out.record.conditions[k].aligned_box_v
        pixels, keep = expected_kept(source, box, mask)
        assert 0 < keep.sum() < keep.size  # a mask with a hole / an alpha that hides part
        assert np.array_equal(region(out.image, box)[keep], pixels[keep]), f"condition {k + 1}"
    # the hole is generated, not gray and not the condition
    box = out.record.conditions[0].aligned_box_v
    hole = region(out.image, box)[box.h // 2, box.w // 2]
    assert not np.array_equal(hole, [128, 128, 128])


def test_every_image_of_a_batch_and_each_output_type_holds_the_exact_values(tiny_pipe, face_path):
    box = None
    for output_type in ("np", "pt"):
        out = tiny_pipe(face_path, "a chef", plan=ONE, seed=5, canvas=ONE.canvas, cycles=1, num_images=2, output_type=output_type)
        box = out.record.conditions[0].aligned_box_v
        pixels, keep = expected_kept(face_path, box)
        images = out.images if output_type == "np" else out.images.permute(0, 2, 3, 1).numpy()
        assert images.dtype == np.float32 and images.shape[0] == 2
        for one in images:
            inside = one[box.y : box.bottom, box.x : box.right]
            assert np.array_equal(inside[keep], pixels[keep].astype(np.float32) / np.float32(255))
    latent = tiny_pipe(face_path, "a chef", plan=ONE, seed=5, canvas=ONE.canvas, cycles=1, output_type="latent")
    assert isinstance(latent.images, torch.Tensor) and any(w.startswith("output_type latent") for w in latent.record.warnings)


def test_the_feather_touches_only_the_band_on_the_generated_side(tiny_pipe, face_path):
    out = tiny_pipe(face_path, "a chef", plan=ONE, seed=5, canvas=ONE.canvas, cycles=1, paste="feather", paste_band=6)
    after = np.asarray(out.image).astype(int)
    before = np.asarray(out.artifacts["unpasted"][0]).astype(int)
    _, union, _ = kept_layout(out.artifacts["kept"], ONE.canvas)
    changed = np.abs(after - before).max(axis=-1) > 0
    import cv2

    distance = cv2.distanceTransform((~union).astype(np.uint8), cv2.DIST_L2, 5)
    assert changed[~union].any()
    assert distance[changed & ~union].max() <= 6  # nothing beyond the band
    assert seam_score(after, union).ratio < seam_score(np.asarray(_hard(out)), union).ratio


def _hard(out) -> Image.Image:
    return paste_outputs(out.artifacts["unpasted"], out.artifacts["kept"], ONE.canvas, "hard", None, "pil").images[0]


# -- the paste on known pixels (no model) ------------------------------------------------------


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture, (H, W, 3) in 40..200."""
    import cv2

    noise = np.random.default_rng(seed).normal(size=(height, width, 3))
    smooth = cv2.GaussianBlur(noise, (0, 0), 3)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return 40 + 160 * smooth


def _disk(height: int, width: int, cy: int, cx: int, r: int) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r


def test_the_seam_measure_ranks_a_hard_edge_worse_than_a_feathered_one():
    generated = _texture(96, 128)
    kept = _disk(96, 128, 48, 64, 24)
    target = np.clip(generated + 70, 0, 255)  # the kept pixels: the same picture, 70 levels brighter
    hard = paste_array(generated, target, kept, "hard", 8)
    feather = paste_array(generated, target, kept, "feather", 8)
    assert np.array_equal(hard[kept], target[kept]) and np.array_equal(feather[kept], target[kept])
    plain, hard_seam, soft_seam = (seam_score(x, kept).ratio for x in (generated, hard, feather))
    assert 0.7 < plain < 1.5  # no edge: the image goes on across the border as beside it
    assert hard_seam > 5
    assert soft_seam < 2 and hard_seam > 4 * soft_seam


def test_seam_score_by_hand():
    image = np.zeros((4, 6))
    image[:, 1] = 1  # columns: 0 1 0 | 10 10 10
    image[:, 3:] = 10
    kept = np.zeros((4, 6), bool)
    kept[:, 3:] = True
    seam = seam_score(image, kept)
    # jump: |10 - 0| at the 4 border pairs; beside: |0 - 1| outside (columns 1|2), |10 - 10| inside (3|4)
    assert (seam.jump, seam.beside, seam.ratio) == (10.0, 0.5, 20.0)


def test_band_width_scales_with_the_canvas():
    assert band_width(Canvas(width=512, height=512), None) == 8
    assert band_width(Canvas(width=1024, height=768), None) == 12
    assert band_width(Canvas(width=128, height=128), None) == 2
    assert band_width(Canvas(width=512, height=512), 5) == 5


def test_feather_offset_is_zero_on_the_kept_pixels_and_past_the_band():
    generated = _texture(40, 40)
    kept = _disk(40, 40, 20, 20, 8)
    offset = feather_offset(generated, generated + 50, kept, 4)
    assert not offset[kept].any()
    import cv2

    distance = cv2.distanceTransform((~kept).astype(np.uint8), cv2.DIST_L2, 5)
    assert not offset[distance > 4].any()
    near = (distance > 0) & (distance <= 1.0)
    assert np.all(offset[near] > 40)  # next to the border: almost the whole jump


def test_a_flow_family_gets_the_paste_too(faces_dir, face_path):
    """The paste works on pixels and boxes only: FLUX.1 (tiny) keeps both people's pixels exactly, every image."""
    from sow.pipeline import SOWPipeline

    pipe = SOWPipeline.from_pretrained("tiny-flux", device="cpu", dtype="fp32")
    plan = Plan(canvas={"width": 192, "height": 128}, prompt="two friends at a cafe", conditions=[
        {"image": 0, "box_v": [16, 16, 48, 48], "box_r": [16, 64, 48, 64]},
        {"image": 1, "box_v": [112, 32, 64, 48], "box_r": [112, 80, 64, 48]}])
    config = pipe.make_config(None, "normal", canvas={"width": 192, "height": 128}, cycles=1)
    second = faces_dir / "obama.jpg"
    out = pipe([face_path, second], "two friends at a cafe", plan=plan, seed=3, config=config, num_images=2)
    assert out.record.family == "flux1"
    for k, source in enumerate([face_path, second]):
        box = out.record.conditions[k].aligned_box_v
        pixels, keep = expected_kept(source, box)
        for image in out.images:
            assert np.array_equal(region(image, box)[keep], pixels[keep])
