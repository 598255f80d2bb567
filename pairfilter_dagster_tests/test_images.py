import hashlib

import numpy as np
import pytest
from PIL import Image

from pairfilter_dagster.core.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    PIL_HARD_PIXEL_LIMIT,
    ImageAccess,
    ImageDecodeError,
    decode_rgb,
    inspect_image_file,
)
from pairfilter_dagster.core.schema import Status
from pairfilter_dagster.testing import PHOTOS, UNUSUAL_IMAGES, write_decompression_bomb, write_unusual_images


def test_hash_is_of_the_file_content(tmp_path):
    copy = tmp_path / "copy.jpg"
    copy.write_bytes((PHOTOS / "cat.jpg").read_bytes())
    original = inspect_image_file(str(PHOTOS / "cat.jpg"))
    assert original.status is Status.OK
    assert original.content_hash == inspect_image_file(str(copy)).content_hash
    assert original.content_hash == hashlib.sha256((PHOTOS / "cat.jpg").read_bytes()).hexdigest()
    assert inspect_image_file(str(PHOTOS / "img2.jpg")).content_hash != original.content_hash


def test_missing_and_empty_files_get_a_status(tmp_path):
    missing = inspect_image_file(str(tmp_path / "nope.jpg"))
    assert missing.status is Status.MISSING_IMAGE and "nope.jpg" in missing.error
    (tmp_path / "empty.jpg").write_bytes(b"")
    empty = inspect_image_file(str(tmp_path / "empty.jpg"))
    assert empty.status is Status.UNREADABLE_IMAGE and "empty" in empty.error


@pytest.mark.parametrize("name", ["cat.jpg", "img1.png"])
def test_real_jpeg_and_png_decode_to_rgb(name):
    image = decode_rgb(str(PHOTOS / name))
    assert image.mode == "RGB" and image.size == Image.open(PHOTOS / name).size


def test_text_file_named_jpg_is_unreadable(tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_text("<html>not an image</html>")
    with pytest.raises(ImageDecodeError, match="fake.jpg"):
        decode_rgb(str(fake))


def test_exif_rotated_photo_is_turned_upright(tmp_path):
    photo = Image.open(PHOTOS / "cat.jpg")
    exif = photo.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated = tmp_path / "rotated.jpg"
    photo.save(rotated, exif=exif)
    assert decode_rgb(str(rotated)).size == (photo.height, photo.width)


EXPECTED_MODE = {"gray.png": "L", "gray16.png": "I;16", "rgba.png": "RGBA", "palette.png": "P", "cmyk.jpg": "CMYK",
                 "photo.webp": "RGB", "rotated.jpg": "RGB"}


@pytest.mark.parametrize("name", UNUSUAL_IMAGES)
def test_unusual_modes_decode_to_the_same_picture_in_rgb(name, tmp_path):
    path = write_unusual_images(tmp_path)[name]
    with Image.open(path) as opened, Image.open(PHOTOS / "cat.jpg") as original:
        assert opened.mode == EXPECTED_MODE[name]  # the file really is in that mode
        photo = original.convert("RGB")
    reference = photo.convert("L").convert("RGB") if name.startswith("gray") else photo
    assert inspect_image_file(str(path)).status is Status.OK
    decoded = decode_rgb(str(path))
    assert decoded.mode == "RGB" and decoded.size == photo.size  # rotated.jpg: turned upright
    difference = np.abs(np.asarray(decoded, dtype=np.int16) - np.asarray(reference, dtype=np.int16)).mean()
    assert difference < 8, f"{name} decodes to a different picture (mean difference {difference:.1f})"


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    path = write_unusual_images(tmp_path)["gray16.png"]
    with Image.open(PHOTOS / "cat.jpg") as photo, Image.open(path) as opened:
        gray, pil_rgb = photo.convert("L"), opened.convert("RGB")
    assert np.array_equal(np.asarray(decode_rgb(str(path)).convert("L")), np.asarray(gray))
    assert np.asarray(pil_rgb).mean() > 250  # what PIL's own conversion gives: almost white


def test_truncated_jpeg_passes_the_header_and_fails_to_decode(tmp_path):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((PHOTOS / "cat.jpg").read_bytes()[:4000])
    assert inspect_image_file(str(truncated)).status is Status.OK
    with pytest.raises(ImageDecodeError, match="truncated.jpg"):
        decode_rgb(str(truncated))


@pytest.mark.parametrize("content", [b"<!DOCTYPE html><html><body>404 Not Found</body></html>", b"just some text\n"])
def test_text_or_html_named_jpg_is_unreadable_at_inspection(tmp_path, content):
    fake = tmp_path / "photo.jpg"
    fake.write_bytes(content)
    found = inspect_image_file(str(fake))
    assert found.status is Status.UNREADABLE_IMAGE and found.content_hash is None
    assert "photo.jpg" in found.error and "not an image format" in found.error
    assert repr(content[:20]) in found.error  # what the file holds instead, e.g. an HTML error page


def test_a_folder_named_like_an_image_is_unreadable(tmp_path):
    (tmp_path / "album.jpg").mkdir()
    found = inspect_image_file(str(tmp_path / "album.jpg"))
    assert found.status is Status.UNREADABLE_IMAGE and "album.jpg" in found.error


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns, then we refuse
def test_a_decompression_bomb_is_too_large_and_never_decoded(tmp_path):
    bomb = write_decompression_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 100_000
    found = inspect_image_file(str(bomb))
    assert found.status is Status.IMAGE_TOO_LARGE and found.content_hash is None
    assert "90000000 pixels" in found.error and f"max_image_pixels={DEFAULT_MAX_IMAGE_PIXELS}" in found.error


def test_the_pixel_limit_is_configurable(tmp_path):
    with Image.open(PHOTOS / "cat.jpg") as photo:
        width, height = photo.size
    assert inspect_image_file(str(PHOTOS / "cat.jpg"), ImageAccess(max_pixels=width * height)).status is Status.OK
    smaller = inspect_image_file(str(PHOTOS / "cat.jpg"), ImageAccess(max_pixels=width * height - 1))
    assert smaller.status is Status.IMAGE_TOO_LARGE and f"{width}x{height}" in smaller.error


def test_beyond_pils_hard_limit_an_image_is_too_large_whatever_the_setting(tmp_path):
    bomb = write_decompression_bomb(tmp_path / "huge.png", size=(15_000, 12_000))  # 180 M > 2 x PIL's limit
    found = inspect_image_file(str(bomb), ImageAccess(max_pixels=PIL_HARD_PIXEL_LIMIT))
    assert found.status is Status.IMAGE_TOO_LARGE and "decompression bomb" in found.error
