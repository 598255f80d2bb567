"""Shared fixtures: a real (tiny, randomly initialised) CLIP checkpoint written with save_pretrained, and data
folders built from the real photos bundled in the repo's data/."""

import json
import shutil
from pathlib import Path

import pytest

from .checkpoints import write_clip_checkpoint

REPO = Path(__file__).resolve().parents[1]
BUNDLED_DATA = REPO / "data"
PHOTOS = BUNDLED_DATA / "images"


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return write_clip_checkpoint(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def embedder(tiny_clip_dir):
    from pairfilter_dagster.core.embedding import ClipEmbedder, ModelSpec

    return ClipEmbedder.load(ModelSpec(str(tiny_clip_dir), device="cpu"))


@pytest.fixture
def bundled_data_dir(tmp_path) -> Path:
    """A copy of the repo's bundled data folder (real photos, two manifests, one in a subfolder)."""
    target = tmp_path / "data"
    shutil.copytree(BUNDLED_DATA / "raw", target / "raw")
    shutil.copytree(PHOTOS, target / "images")
    return target


def write_manifest(path: Path, samples: list) -> Path:
    """Write samples (dicts become JSON, strings are written as they are) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((s if isinstance(s, str) else json.dumps(s)) + "\n" for s in samples))
    return path


def read_samples_with_photos(raw_dir: Path, pairing: str = "exactly_two") -> list:
    """Samples of the manifests under `raw_dir`, with the repo's photos allowed as an extra image root (tests
    refer to them by absolute path; by default only the data folder above `raw_dir` is allowed)."""
    from pairfilter_dagster.core.samples import SampleRules, read_samples

    rules = SampleRules.for_data_dir(raw_dir.parent, [str(raw_dir.parent), str(PHOTOS)], pairing)
    return list(read_samples(raw_dir, rules))


UNUSUAL_IMAGES = ("gray.png", "gray16.png", "rgba.png", "palette.png", "cmyk.jpg", "photo.webp", "rotated.jpg")
"""One real photo (cat.jpg) in the modes and formats real datasets hold; each must decode and score."""


def write_unusual_images(folder: Path) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(PHOTOS / "cat.jpg") as original:
        photo = original.convert("RGB")
    gray = photo.convert("L")
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: stored turned left, "rotate 90 degrees clockwise to display"
    writers = {
        "gray.png": lambda path: gray.save(path),
        "gray16.png": lambda path: Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(path),
        "rgba.png": lambda path: rgba.save(path),
        "palette.png": lambda path: photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(path),
        "cmyk.jpg": lambda path: photo.convert("CMYK").save(path, quality=95),
        "photo.webp": lambda path: photo.save(path, quality=95),
        "rotated.jpg": lambda path: photo.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif),
    }
    paths = {}
    for name in UNUSUAL_IMAGES:
        paths[name] = folder / name
        writers[name](paths[name])
    return paths


def write_decompression_bomb(path: Path, size: tuple[int, int] = (10_000, 9_000)) -> Path:
    """A real, tiny PNG (about 10 kB) that decodes to `size` pixels: 90 million by default, over PIL's limit."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", size).save(path)
    return path
