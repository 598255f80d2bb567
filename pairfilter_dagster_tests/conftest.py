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
