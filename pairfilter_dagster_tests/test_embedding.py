import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel

from pairfilter_dagster.core.embedding.model import ClipEmbedder, ModelLoadError, ModelSpec
from pairfilter_dagster.core.scoring import score_samples
from pairfilter_dagster.testing import PHOTOS, write_clip_checkpoint, write_vit_checkpoint

from .conftest import read_samples_with_photos, write_manifest

PAIRS = [("cat.jpg", "img2.jpg"), ("img1.png", "img3.jpg"), ("cat.jpg", "cat_crop.jpg"), ("img2.jpg", "img2_small.png")]


def data_juicer_similarity(model, processor, path1, path2) -> float:
    """Data-Juicer's image_pair_similarity_filter.compute_stats, step for step: PIL open + RGB, the image
    processor over both images, two batch-of-one forward passes, torch cosine similarity."""
    images = [Image.open(path1).convert("RGB"), Image.open(path2).convert("RGB")]
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        features = [model.get_image_features(pixels[i].unsqueeze(0)) for i in range(2)]
    features = [f if isinstance(f, torch.Tensor) else f.pooler_output for f in features]
    return torch.cosine_similarity(features[0], features[1], dim=1).item()


def scores_for(pairs, folder, tmp_path, embedder, batch_size=3):
    write_manifest(tmp_path / "raw" / "m.jsonl", [{"images": [str(folder / a), str(folder / b)]} for a, b in pairs])
    rows, _ = score_samples(read_samples_with_photos(tmp_path / "raw"), embedder, batch_size=batch_size)
    assert [row.status for row in rows] == ["ok"] * len(pairs)
    return [row.image_pair_similarity for row in rows]


def test_scores_equal_the_data_juicer_algorithm(tiny_clip_dir, embedder, tmp_path):
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    processor = CLIPImageProcessor.from_pretrained(tiny_clip_dir)
    ours = scores_for(PAIRS, PHOTOS, tmp_path, embedder)
    for (a, b), scores in zip(PAIRS, ours):
        assert len(scores) == 1
        assert scores[0] == pytest.approx(data_juicer_similarity(model, processor, PHOTOS / a, PHOTOS / b), abs=1e-5)


def test_identical_content_in_two_files_scores_one_and_is_embedded_once(embedder, tmp_path):
    copy = tmp_path / "copy_of_cat.jpg"
    copy.write_bytes((PHOTOS / "cat.jpg").read_bytes())
    write_manifest(tmp_path / "raw" / "m.jsonl", [{"images": [str(PHOTOS / "cat.jpg"), str(copy)]}])
    before = embedder.images_embedded
    rows, report = score_samples(read_samples_with_photos(tmp_path / "raw"), embedder, batch_size=8)
    assert rows[0].image_pair_similarity[0] == pytest.approx(1.0, abs=1e-6)
    assert embedder.images_embedded - before == 1 == report.images_embedded


def test_a_checkpoint_with_a_non_default_projection_size_works(tmp_path):
    folder = write_clip_checkpoint(tmp_path / "clip-proj-40", projection_dim=40, image_size=48, seed=3)
    embedder = ClipEmbedder.load(ModelSpec(str(folder), device="cpu"))
    vectors = embedder.embed([Image.open(PHOTOS / "cat.jpg").convert("RGB")])
    assert vectors.shape == (1, 40)
    assert float((vectors**2).sum()) == pytest.approx(1.0, abs=1e-5)
    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPImageProcessor.from_pretrained(folder)
    (score,) = scores_for([("cat.jpg", "img3.jpg")], PHOTOS, tmp_path, embedder)
    assert score[0] == pytest.approx(data_juicer_similarity(model, processor, PHOTOS / "cat.jpg", PHOTOS / "img3.jpg"), abs=1e-5)


def test_model_is_in_eval_mode_on_the_chosen_device(embedder):
    assert embedder.device == "cpu" and not embedder.model.training


def test_a_missing_folder_fails_with_one_clear_message(tmp_path):
    with pytest.raises(ModelLoadError) as caught:
        ClipEmbedder.load(ModelSpec(str(tmp_path / "no-such-model")))
    message = str(caught.value)
    assert "no-such-model" in message
    for way_out in ("local folder", "HF_HUB_OFFLINE", "PAIRFILTER_HF_CLIP"):
        assert way_out in message


def test_a_hub_id_that_cannot_be_downloaded_names_the_ways_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here; offline mode fails fast instead of retrying
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="openai/clip-vit-base-patch32") as caught:
        ClipEmbedder.load(ModelSpec("openai/clip-vit-base-patch32"))
    assert "HF_HUB_OFFLINE" in str(caught.value) and "PAIRFILTER_HF_CLIP" in str(caught.value)


def test_an_image_model_without_image_features_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="is a ViTModel .*, which has no get_image_features"):
        ClipEmbedder.load(ModelSpec(str(write_vit_checkpoint(tmp_path / "vit"))))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused(tiny_clip_dir):
    with pytest.raises(ValueError, match="device"):
        ClipEmbedder.load(ModelSpec(str(tiny_clip_dir), device="cuda"))


@pytest.mark.parametrize("field, value", [("device", "tpu"), ("dtype", "int8"), ("hf_clip", "")])
def test_bad_model_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ModelSpec(**{field: value})


def test_the_compiled_model_gives_the_same_embeddings(tiny_clip_dir, embedder):
    compiled = ClipEmbedder.load(ModelSpec(str(tiny_clip_dir), device="cpu", compile=True))
    images = [Image.open(PHOTOS / name).convert("RGB") for name in ("cat.jpg", "img1.png", "img3.jpg")]
    full, short = compiled.embed(images), compiled.embed(images[:1])  # a short batch is padded, not recompiled
    assert full.shape == (3, 24) and short.shape == (1, 24)
    assert abs(full - embedder.embed(images)).max() < 1e-5 and abs(short - full[:1]).max() < 1e-5
