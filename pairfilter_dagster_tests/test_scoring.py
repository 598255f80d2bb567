import pytest

from pairfilter_dagster.core.scoring import cosine, embed_distinct_images, score_samples

from .conftest import PHOTOS, read_samples_with_photos, write_manifest


def test_each_distinct_image_is_embedded_once_and_rows_keep_input_order(embedder, tmp_path):
    cat, img2, img3 = (str(PHOTOS / n) for n in ("cat.jpg", "img2.jpg", "img3.jpg"))
    write_manifest(tmp_path / "raw" / "m.jsonl", [
        {"images": [cat, img2]}, {"images": [img2, img3]}, {"images": [img3, cat]}, {"images": [cat, img2]},
    ])
    passes_before = embedder.forward_passes
    report = score_samples(read_samples_with_photos(tmp_path / "raw"), embedder, batch_size=2)
    assert [row.sample_id for row in report.rows] == [f"m.jsonl:{i}" for i in range(1, 5)]
    assert report.unique_images == 3 and report.images_embedded == 3
    assert report.forward_passes == embedder.forward_passes - passes_before == 2  # batches of 2 over 3 images
    assert report.rows[0].image_pair_similarity == report.rows[3].image_pair_similarity
    assert report.status_counts == {"ok": 4}


def test_missing_and_unreadable_images_are_reported_per_sample(embedder, tmp_path):
    (tmp_path / "fake.jpg").write_text("<html>nope</html>")
    (tmp_path / "truncated.jpg").write_bytes((PHOTOS / "cat.jpg").read_bytes()[:2000])
    cat = str(PHOTOS / "cat.jpg")
    write_manifest(tmp_path / "raw" / "m.jsonl", [
        {"images": [cat, str(tmp_path / "gone.jpg")]},
        {"images": [str(tmp_path / "fake.jpg"), cat]},
        {"images": [cat, str(tmp_path / "truncated.jpg")]},
        {"images": [cat, str(PHOTOS / "img2.jpg")]},
        {"images": [cat]},
    ])
    report = score_samples(read_samples_with_photos(tmp_path / "raw"), embedder, batch_size=4)
    assert [row.status for row in report.rows] == [
        "missing_image", "unreadable_image", "unreadable_image", "ok", "not_a_pair",
    ]
    assert "gone.jpg" in report.rows[0].error and "fake.jpg" in report.rows[1].error
    assert "truncated.jpg" in report.rows[2].error
    assert all(row.image_pair_similarity == [] for row in report.rows if row.status != "ok")
    assert report.status_counts == {"missing_image": 1, "unreadable_image": 2, "ok": 1, "not_a_pair": 1}


def test_batch_size_must_be_positive(embedder):
    with pytest.raises(ValueError, match="batch_size"):
        embed_distinct_images([], embedder, batch_size=0)


def test_cosine_of_unit_vectors_stays_in_range():
    import numpy as np

    v = np.array([0.6, 0.8000001], dtype=np.float32)
    assert cosine(v, v) == 1.0
    assert cosine(v, -v) == -1.0
