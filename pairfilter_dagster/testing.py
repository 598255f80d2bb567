"""Test fixtures that tests and the benchmark share, with no test framework: randomly initialised CLIP and SigLIP
checkpoints (and models without image features, to be refused) written exactly as a hub checkpoint is laid out
(config, safetensors weights, preprocessor config), so they load through the same `from_pretrained` path that users
take with a hub id (the build machines have no model hub); and image files made from the real photos bundled in the
repo's data/images; a local S3 server."""

import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from PIL import Image, ImageOps

PHOTOS = Path(__file__).resolve().parents[1] / "data" / "images"
"""The repo's bundled photos (a source checkout: the wheel ships no data)."""


def write_clip_checkpoint(
    folder: Path, *, size: str = "tiny", projection_dim: int = 24, image_size: int = 32, seed: int = 0
) -> Path:
    """`size="tiny"`: a two-layer model that loads and runs in well under a second (tests).
    `size="vit-b-32"`: the full ViT-B/32 architecture of openai/clip-vit-base-patch32 (same FLOPs; benchmarks)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    if size == "vit-b-32":
        config, processor = CLIPConfig(), CLIPImageProcessor()  # the defaults are ViT-B/32 at 224 px
    elif size == "tiny":
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
        processor = CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    else:
        raise ValueError(f"size: 'tiny' or 'vit-b-32', got {size!r}")
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return Path(folder)


def write_siglip_checkpoint(folder: Path, *, hidden_size: int = 32, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny two-layer SigLIP (text and vision towers; its image features are the attention-pooled vision output,
    `hidden_size` long, with no projection) and its image processor, as google/siglip-* checkpoints are laid out."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    tower = dict(hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = SiglipConfig(
        text_config=dict(**tower, vocab_size=99, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(**tower, image_size=image_size, patch_size=8),
    )
    torch.manual_seed(seed)
    SiglipModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return Path(folder)


def write_vit_checkpoint(folder: Path) -> Path:
    """A tiny real image model without image features (a plain ViT: no get_image_features), saved with
    save_pretrained."""
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
                       image_size=32, patch_size=8)).save_pretrained(folder)
    return folder


def write_bert_checkpoint(folder: Path) -> Path:
    """A tiny real text-only model (BERT), saved with save_pretrained: no image tower at all."""
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
                         vocab_size=99)).save_pretrained(folder)
    return Path(folder)


def photo_sources() -> list[Path]:
    return sorted(PHOTOS.glob("*.jpg")) + sorted(PHOTOS.glob("*.png"))


def distinct_photos(folder: Path, count: int, *, max_side: int | None = None, seed: int = 0) -> list[Path]:
    """`count` JPEGs with distinct content: random crops (70-95%) of the bundled photos, some mirrored, at most
    `max_side` pixels on a side if given."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(p).convert("RGB") for p in photo_sources()]
    paths = []
    for i in range(count):
        image = sources[i % len(sources)]
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.7, 0.95)), int(h * rng.uniform(0.7, 0.95))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = image.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        if max_side:
            crop.thumbnail((max_side, max_side))
        path = folder / f"photo_{i:05d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


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


@contextmanager
def local_s3(bucket: str) -> Iterator[Any]:
    """A real S3 API on a free loopback port (moto's server, the dev extra), the variables every AWS client reads
    set to it while the block runs, and an s3fs filesystem (the s3 extra) holding an empty `bucket`."""
    import logging

    from moto.server import ThreadedMotoServer
    from s3fs import S3FileSystem

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    variables = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    S3FileSystem.clear_instance_cache()  # an instance made before would still point elsewhere
    try:
        fs = S3FileSystem()
        fs.mkdir(bucket)
        yield fs
    finally:
        server.stop()
        S3FileSystem.clear_instance_cache()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
