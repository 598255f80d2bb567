import hashlib

import pytest
from PIL import Image

from pairfilter_dagster.core.images import ImageDecodeError, decode_rgb, inspect_image_file
from pairfilter_dagster.core.status import Status

from .conftest import PHOTOS


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
