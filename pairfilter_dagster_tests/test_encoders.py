"""Any Hugging Face image encoder with image features: CLIP (the default and the parity reference) and SigLIP score
as a direct transformers computation does; a checkpoint without image features is refused with one message naming
hf_clip; a real Dagster run scores with SigLIP."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

from pairfilter_dagster.core.embedding.model import TEXT_SIDE_WEIGHTS, ClipEmbedder, ModelLoadError, ModelSpec
from pairfilter_dagster.core.embedding.ray_engine import ClipEmbedActor, preprocess_batch
from pairfilter_dagster.core.images import ImageAccess
from pairfilter_dagster.core.scoring import score_samples
from pairfilter_dagster.testing import PHOTOS, write_bert_checkpoint, write_vit_checkpoint

from .conftest import read_samples_with_photos, write_manifest
from .test_assets import ASSETS, metadata, query, run

PAIRS = [("cat.jpg", "img2.jpg"), ("img1.png", "img3.jpg"), ("cat.jpg", "cat_crop.jpg"), ("img2.jpg", "img2_small.png")]


def direct_similarity(model, processor, path_a, path_b) -> float:
    """transformers alone: the checkpoint's processor, get_image_features (its pooler_output when transformers 5
    returns an output object), L2 normalisation, dot product."""
    vectors = []
    for path in (path_a, path_b):
        pixels = processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            output = model.get_image_features(pixel_values=pixels)
        features = output if isinstance(output, torch.Tensor) else output.pooler_output
        vectors.append(torch.nn.functional.normalize(features, dim=-1)[0])
    return float(vectors[0] @ vectors[1])


@pytest.fixture(params=["clip", "siglip"])
def checkpoint(request, tiny_clip_dir, tiny_siglip_dir):
    return {"clip": tiny_clip_dir, "siglip": tiny_siglip_dir}[request.param]


def test_scores_equal_a_direct_transformers_computation(checkpoint, tmp_path):
    embedder = ClipEmbedder.load(ModelSpec(str(checkpoint), device="cpu"))
    model, processor = AutoModel.from_pretrained(checkpoint).eval(), AutoImageProcessor.from_pretrained(checkpoint)
    write_manifest(tmp_path / "raw" / "m.jsonl", [{"images": [str(PHOTOS / a), str(PHOTOS / b)]} for a, b in PAIRS])
    rows, _ = score_samples(read_samples_with_photos(tmp_path / "raw"), embedder, batch_size=3)
    assert [row.status for row in rows] == ["ok"] * len(PAIRS)
    for (a, b), row in zip(PAIRS, rows):
        assert row.image_pair_similarity[0] == pytest.approx(direct_similarity(model, processor, PHOTOS / a, PHOTOS / b),
                                                             abs=1e-5)


def test_siglip_loads_as_siglip_and_its_features_are_the_pooled_output(tiny_siglip_dir):
    embedder = ClipEmbedder.load(ModelSpec(str(tiny_siglip_dir), device="cpu"))
    assert type(embedder.model).__name__ == "SiglipModel" and embedder.dimension == 32
    pixels = torch.from_numpy(embedder.preprocess(Image.open(PHOTOS / "cat.jpg").convert("RGB")))[None]
    with torch.no_grad():
        output = embedder.model.get_image_features(pixel_values=pixels)
    assert not isinstance(output, torch.Tensor)  # transformers 5: BaseModelOutputWithPooling
    assert tuple(output.pooler_output.shape) == (1, 32)
    vector = embedder.embed([Image.open(PHOTOS / "cat.jpg").convert("RGB")])
    assert vector.shape == (1, 32) and vector.dtype == np.float32
    assert float((vector**2).sum()) == pytest.approx(1.0, abs=1e-5)


def test_each_model_family_has_its_own_cache_key_and_clips_key_is_unchanged(tiny_clip_dir, tiny_siglip_dir, embedder):
    siglip = ClipEmbedder.load(ModelSpec(str(tiny_siglip_dir), device="cpu"))
    assert siglip.model_key != embedder.model_key
    assert ClipEmbedder.load(ModelSpec(str(tiny_siglip_dir), device="cpu")).model_key == siglip.model_key
    hashed = {name.split(".")[0] for name in embedder.model.state_dict() if not name.startswith(TEXT_SIDE_WEIGHTS)}
    assert hashed == {"vision_model", "visual_projection"}
    # CLIP caches written before other families were supported keep their key: the digest as it was computed then.
    import hashlib
    import json

    digest = hashlib.sha256()
    processor = embedder.image_processor
    digest.update(json.dumps({"class": type(processor).__name__, **processor.to_dict()}, sort_keys=True, default=str).encode())
    digest.update(b"float32")
    for name, tensor in sorted(embedder.model.state_dict().items()):
        if name.startswith(("vision_model.", "visual_projection.")):
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    assert embedder.model_key == digest.hexdigest()


@pytest.mark.parametrize("write, model_class", [(write_bert_checkpoint, "BertModel"), (write_vit_checkpoint, "ViTModel")])
def test_a_checkpoint_without_image_features_is_refused_naming_hf_clip(tmp_path, write, model_class):
    folder = write(tmp_path / "model")
    with pytest.raises(ModelLoadError) as caught:
        ClipEmbedder.load(ModelSpec(str(folder), device="cpu"))
    message = str(caught.value)
    assert message.startswith(f"hf_clip: {str(folder)!r} is a {model_class}")
    assert "has no get_image_features" in message and "CLIP" in message and "SigLIP" in message


def test_the_ray_model_actor_embeds_siglip_at_its_own_dimension(tiny_siglip_dir):
    """The Ray engine's two stages, called as Ray Data calls them (without Ray): SigLIP has no projection_dim."""
    spec = ModelSpec(str(tiny_siglip_dir), device="cpu")
    paths = [str(PHOTOS / "cat.jpg"), str(PHOTOS / "img3.jpg")]
    hashes = [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in paths]
    batch = preprocess_batch({"content_hash": np.asarray(hashes, dtype=object), "path": np.asarray(paths)}, spec,
                             ImageAccess())
    assert list(batch["error"]) == ["", ""]
    embedded = ClipEmbedActor(spec)(batch)
    direct = ClipEmbedder.load(spec).embed([Image.open(path).convert("RGB") for path in paths])
    assert embedded["embedding"].shape == (2, 32)
    assert abs(embedded["embedding"] - direct).max() < 1e-5


def test_a_dagster_run_with_hf_clip_set_to_a_siglip_folder(bundled_data_dir, tiny_siglip_dir):
    result = run(ASSETS, bundled_data_dir, tiny_siglip_dir, {"min_score": 0.0})
    assert result.success and all(check.passed for check in result.get_asset_check_evaluations())
    stats = metadata(result, "image_pair_stats")
    assert stats["model"] == str(tiny_siglip_dir) and stats["status_ok"] == 9 and stats["images_embedded"] == 14
    model = AutoModel.from_pretrained(tiny_siglip_dir).eval()
    processor = AutoImageProcessor.from_pretrained(tiny_siglip_dir)
    rows = query(bundled_data_dir, "SELECT images, image_pair_similarity FROM image_pair_stats WHERE status = 'ok'")
    assert len(rows) == 9
    for (path_a, path_b), (score,) in rows:
        assert score == pytest.approx(direct_similarity(model, processor, path_a, path_b), abs=1e-5)
    (dimension,) = {length for (length,) in query(bundled_data_dir, "SELECT len(embedding) FROM embedding_cache")}
    assert dimension == 32
    assert metadata(result, "filtered_samples")["kept"] == 9
