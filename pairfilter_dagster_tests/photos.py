"""Many distinct real photos from the few bundled ones, for the Ray tests and the benchmark."""

import random
from pathlib import Path

from PIL import Image, ImageOps

from .conftest import PHOTOS

SOURCES = sorted(PHOTOS.glob("*.jpg")) + sorted(PHOTOS.glob("*.png"))


def distinct_photos(folder: Path, count: int, *, max_side: int | None = None, seed: int = 0) -> list[Path]:
    """`count` JPEGs with distinct content: random crops (70-95%) of the bundled photos, some mirrored, at most
    `max_side` pixels on a side if given."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(p).convert("RGB") for p in SOURCES]
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
