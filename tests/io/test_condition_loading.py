"""The one condition loader: every file becomes RGB (+ mask) by a documented conversion, or a one-line InputError."""

from __future__ import annotations

import numpy as np
import pytest
from tests.support.hostile_files import exif_rotated_jpeg, face_like, png_bomb, save, transparent_png, truncated_jpeg
from PIL import Image

from sow.io import images
from sow.errors import InputError
from sow.io.images import load_condition


def _refused(path, fragment: str) -> str:
    with pytest.raises(InputError) as info:
        load_condition(path)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    return message


def test_rgba_alpha_becomes_the_mask(tmp_path):
    rgba = face_like((80, 80)).convert("RGBA")
    alpha = np.zeros((80, 80), np.uint8)
    alpha[:, :40] = 255  # left half kept
    rgba.putalpha(Image.fromarray(alpha))
    loaded = load_condition(save(rgba, tmp_path / "a.png"))
    assert loaded.image.mode == "RGB" and loaded.mask is not None
    mask = np.asarray(loaded.mask)
    assert mask[:, :40].min() == 255 and mask[:, 40:].max() == 0
    assert any("mask" in n for n in loaded.notes)


def test_shared_32bit_png_is_rgba_with_mask():
    from pathlib import Path

    path = Path("/work/shared/data/faces/32bit.png")
    if not path.is_file():
        pytest.skip(f"shared RGBA sample not found at {path}")
    loaded = load_condition(path)
    assert loaded.image.mode == "RGB"
    assert loaded.mask is not None or any("opaque" in n for n in loaded.notes)


@pytest.mark.parametrize("mode", ["LA", "PA"])
def test_other_alpha_modes(tmp_path, mode):
    base = face_like((64, 64)).convert("RGBA")
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:10] = 0
    base.putalpha(Image.fromarray(alpha))
    image = base.convert("LA") if mode == "LA" else base.convert("PA") if mode == "PA" else base
    loaded = load_condition(image)
    assert loaded.mask is not None and np.asarray(loaded.mask)[:10].max() == 0


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (64, 64), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.paste(0, (0, 0, 64, 16))
    image.info["transparency"] = 0
    path = save(image, tmp_path / "p.png", transparency=0)
    loaded = load_condition(path)
    assert loaded.mask is not None
    assert np.asarray(loaded.mask)[:16].max() == 0 and np.asarray(loaded.mask)[16:].min() == 255
    assert loaded.image.getpixel((32, 40)) == (200, 100, 50)


def test_opaque_alpha_is_dropped(tmp_path):
    loaded = load_condition(save(face_like((64, 64)).convert("RGBA"), tmp_path / "o.png"))
    assert loaded.mask is None and any("opaque" in n for n in loaded.notes)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"])
def test_colour_modes_convert_to_rgb(mode):
    loaded = load_condition(face_like((64, 64)).convert(mode) if mode != "LAB" else face_like((64, 64)).convert("LAB"))
    assert loaded.image.mode == "RGB" and loaded.image.size == (64, 64)
    if mode not in ("RGB",):
        assert any(f"from {mode}" in n for n in loaded.notes)


def test_cmyk_jpeg_file(tmp_path):
    path = save(face_like((64, 64)).convert("CMYK"), tmp_path / "c.jpg", format="JPEG")
    loaded = load_condition(path)
    original = np.asarray(face_like((64, 64)), np.float32)
    assert np.abs(np.asarray(loaded.image, np.float32) - original).mean() < 20


def test_16bit_grayscale_scaled(tmp_path):
    array = np.full((64, 64), 65535, np.uint16)
    array[:, :32] = 0
    path = save(Image.fromarray(array), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    loaded = load_condition(path)
    pixels = np.asarray(loaded.image)
    assert pixels[:, 40].min() == 255 and pixels[:, :32].max() == 0
    assert any("16-bit" in n for n in loaded.notes)


def test_float_image_scaled_and_nan_refused():
    array = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    loaded = load_condition(Image.fromarray(array, mode="F"))
    assert np.asarray(loaded.image).max() == 255
    array[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        load_condition(Image.fromarray(array, mode="F"))


def test_exif_orientation_applied(tmp_path):
    path = exif_rotated_jpeg(tmp_path / "r.jpg", orientation=6, size=(120, 80))
    loaded = load_condition(path)
    assert loaded.image.size == (80, 120)
    assert any("EXIF orientation 6" in n for n in loaded.notes)


def test_first_frame_of_animation(tmp_path):
    frames = [face_like((64, 64)), Image.new("RGB", (64, 64), (255, 0, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    loaded = load_condition(path)
    assert any("first of 2 frames" in n for n in loaded.notes)


def test_small_is_warned_tiny_refused():
    loaded = load_condition(face_like((40, 48)))
    assert loaded.image.size == (40, 48) and any("small condition" in n for n in loaded.notes)
    with pytest.raises(InputError, match="too small"):
        load_condition(face_like((images.MIN_SIDE - 1, 64)))


def test_huge_is_downscaled_with_mask(tmp_path):
    side = images.MAX_WORKING_SIDE
    rgba = Image.new("RGBA", (side * 2, side), (200, 10, 10, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, side, side // 2))
    loaded = load_condition(rgba)
    assert loaded.image.size == (side, side // 2) and loaded.mask.size == loaded.image.size
    assert any("downscaled" in n for n in loaded.notes)


def test_large_jpeg_decoded_reduced(tmp_path):
    path = save(face_like((2600, 1300)), tmp_path / "big.jpg", format="JPEG", quality=50)
    loaded = load_condition(path)
    assert loaded.image.size == (images.MAX_WORKING_SIDE, images.MAX_WORKING_SIDE // 2)


def test_non_square_kept_elongated_refused():
    assert load_condition(face_like((300, 100))).image.size == (300, 100)
    with pytest.raises(InputError, match="elongated"):
        load_condition(face_like((900, 100)))


def test_refusals_are_one_line(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    _refused(tmp_path / "empty.png", "empty file")
    (tmp_path / "notes.jpg").write_text("just some text, not a JPEG")
    _refused(tmp_path / "notes.jpg", "not an image file Pillow can read")
    _refused(truncated_jpeg(tmp_path / "t.jpg"), "corrupt or truncated")
    message = _refused(png_bomb(tmp_path / "bomb.png"), "Pillow's limit")
    assert f"{Image.MAX_IMAGE_PIXELS:,}" in message
    _refused(transparent_png(tmp_path / "clear.png"), "fully transparent")
    _refused(tmp_path / "nope.png", "no such file")
    _refused(tmp_path, "is a folder")
    _refused("/dev/null", "not a regular file")


def test_bomb_limit_follows_pillow_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50 * 50)
    path = save(face_like((60, 60)), tmp_path / "x.png")
    assert "2,500 pixels" in _refused(path, "too large")


def test_digest_is_of_the_file_bytes(tmp_path):
    import hashlib

    path = save(face_like((64, 64)), tmp_path / "d.png")
    assert load_condition(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def _masked() -> Image.Image:
    alpha = np.zeros((64, 64), np.uint8)
    alpha[20:40, 20:40] = 255
    image = face_like((64, 64)).convert("RGBA")
    image.putalpha(Image.fromarray(alpha))
    return image


ODD_BUT_ACCEPTED = {
    "20px": (lambda: face_like((20, 20)), "small condition"),
    "wide 1000x130": (lambda: face_like((1000, 130)), None),
    "tall 130x1000": (lambda: face_like((130, 1000)), None),
    "16-bit gray": (lambda: Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 15).astype(np.uint16)), "16-bit"),
    "CMYK": (lambda: face_like((80, 64)).convert("CMYK"), "from CMYK"),
    "1-bit": (lambda: face_like((64, 64)).convert("1"), "from 1"),
    "masked RGBA": (_masked, "condition mask"),
}


@pytest.mark.parametrize("case", sorted(ODD_BUT_ACCEPTED))
def test_odd_conditions_generate_end_to_end(tiny_pipe, case):
    make, note = ODD_BUT_ACCEPTED[case]
    result = tiny_pipe(make(), "a chef", canvas={"width": 128, "height": 128}, cycles=1)
    assert result.image.size == (128, 128)
    assert result.plan.box_v.fits(result.plan.canvas)
    if note:
        assert any(note in w for w in result.record.warnings), result.record.warnings


def test_pillow_guard_switched_off_is_respected(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert load_condition(face_like((64, 64))).image.size == (64, 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InputError, match="limit of 100 pixels"):
        load_condition(face_like((64, 64)))
