"""Shared fixtures: a real (tiny, randomly initialised) CLIP checkpoint written with save_pretrained, and data
folders built from the real photos bundled in the repo's data/."""

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED_DATA = REPO / "data"
PHOTOS = BUNDLED_DATA / "images"


def write_clip_checkpoint(folder: Path, *, projection_dim: int = 24, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny CLIP model plus its image processor, saved exactly as a hub checkpoint is laid out."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            vocab_size=99, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            image_size=image_size, patch_size=8,
        ),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)
    return folder


def write_vit_checkpoint(folder: Path) -> Path:
    """A tiny real image model that is not CLIP (a plain ViT), saved with save_pretrained."""
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
                       image_size=32, patch_size=8)).save_pretrained(folder)
    return folder


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
