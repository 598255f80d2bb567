"""Bad configuration, given as a user gives it (launch-time run config, as in the launchpad or --config-json), is
refused before any work with a message naming the field. Thresholds are covered in test_assets.py."""

import dagster as dg
import pytest
import torch

from pairfilter_dagster.core.embedding.model import ModelLoadError
from pairfilter_dagster.core.images import PIL_HARD_PIXEL_LIMIT
from pairfilter_dagster.defs.resources import ClipModel, PairfilterStorage
from pairfilter_dagster.testing import write_bert_checkpoint, write_vit_checkpoint

from .pipeline import PIPELINE as assets
from .test_assets import ASSETS, CHECKS, step_failure


def launch(selection, data_dir, clip_dir, *, clip=None, storage=None, **kwargs):
    return dg.materialize(
        [*selection, *CHECKS],
        resources={"clip": ClipModel.configure_at_launch(), "storage": PairfilterStorage.configure_at_launch()},
        run_config={"resources": {
            "clip": {"config": {"hf_clip": str(clip_dir), **(clip or {})}},
            "storage": {"config": {"data_dir": str(data_dir), **(storage or {})}},
        }},
        **kwargs,
    )


def assert_refused_before_any_work(caught, field, data_dir):
    message = str(caught.value.__cause__ or caught.value)
    assert field in message
    assert not (data_dir / "output").exists() and not (data_dir / "catalog.duckdb").exists()


@pytest.mark.parametrize("resource, field, value", [
    ("clip", "device", "tpu"), ("clip", "dtype", "int8"), ("storage", "pairing", "triples"),
])
def test_an_unknown_name_is_refused_at_launch(bundled_data_dir, tiny_clip_dir, resource, field, value):
    with pytest.raises(dg.DagsterInvalidConfigError, match=field) as caught:
        launch(ASSETS, bundled_data_dir, tiny_clip_dir, **{resource: {field: value}})
    assert_refused_before_any_work(caught, field, bundled_data_dir)


@pytest.mark.parametrize("resource, field, value", [
    ("clip", "batch_size", 0),
    ("clip", "hf_clip", ""),
    ("storage", "max_image_pixels", 0),
    ("storage", "max_image_pixels", PIL_HARD_PIXEL_LIMIT + 1),
    ("storage", "embeddings_per_file", 0),  # ge=1: each cache file holds at least one embedding
])
def test_a_value_out_of_range_fails_the_run_at_its_start(bundled_data_dir, tiny_clip_dir, resource, field, value):
    with pytest.raises(dg.DagsterResourceFunctionError) as caught:
        launch(ASSETS, bundled_data_dir, tiny_clip_dir, **{resource: {field: value}})
    assert_refused_before_any_work(caught, field, bundled_data_dir)


def test_a_bad_clip_override_fails_the_first_step_even_when_it_does_not_use_the_model(bundled_data_dir, tiny_clip_dir):
    """With the multiprocess executor (the CLI) the model step starts after ingestion; the first step checks the
    clip overrides itself. Materializing raw_samples alone shows that check at work."""
    result = launch([assets.raw_samples], bundled_data_dir, tiny_clip_dir, clip={"batch_size": 0},
                    raise_on_error=False)
    step, error = step_failure(result)
    assert step == "raw_samples" and "batch_size" in error
    assert not (bundled_data_dir / "output").exists() and not (bundled_data_dir / "catalog.duckdb").exists()


def test_image_roots_that_do_not_exist_fail_the_first_step(bundled_data_dir, tiny_clip_dir):
    result = launch(ASSETS, bundled_data_dir, tiny_clip_dir, storage={"image_roots": ["images", "/no/such/root"]},
                    raise_on_error=False)
    step, error = step_failure(result)
    assert step == "raw_samples" and "image_roots: '/no/such/root' is not an existing folder" in error
    assert not (bundled_data_dir / "output").exists() and not (bundled_data_dir / "catalog.duckdb").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused(bundled_data_dir, tiny_clip_dir):
    with pytest.raises(dg.DagsterResourceFunctionError) as caught:
        launch(ASSETS, bundled_data_dir, tiny_clip_dir, clip={"device": "cuda"})
    assert "no CUDA GPU" in str(caught.value.__cause__)
    assert_refused_before_any_work(caught, "device", bundled_data_dir)


def test_half_precision_on_cpu_is_refused(bundled_data_dir, tiny_clip_dir):
    with pytest.raises(dg.DagsterResourceFunctionError) as caught:
        launch(ASSETS, bundled_data_dir, tiny_clip_dir, clip={"device": "cpu", "dtype": "float16"})
    assert_refused_before_any_work(caught, "dtype", bundled_data_dir)


@pytest.mark.parametrize("write", [write_vit_checkpoint, write_bert_checkpoint])
def test_a_model_without_image_features_is_refused_with_one_message(bundled_data_dir, tmp_path, write):
    with pytest.raises(dg.DagsterResourceFunctionError) as caught:
        launch(ASSETS, bundled_data_dir, write(tmp_path / "model"))
    assert isinstance(caught.value.__cause__, ModelLoadError)
    assert_refused_before_any_work(caught, "has no get_image_features", bundled_data_dir)
    assert str(caught.value.__cause__).startswith("hf_clip: ")


def test_a_launchpad_override_of_one_field_keeps_the_defaults_from_the_environment(tmp_path, tiny_clip_dir):
    """Run config for a resource replaces the values set in code, so each field's own default must be the
    environment's: overriding batch_size alone must not switch the model back to the hub default."""
    import os
    import subprocess
    import sys

    code = ("from pairfilter_dagster.defs.resources import ClipModel, PairfilterStorage; "
            "print(ClipModel(batch_size=2).hf_clip); print(PairfilterStorage(pairing='all_pairs').data_dir)")
    env = {**os.environ, "PAIRFILTER_HF_CLIP": str(tiny_clip_dir), "PAIRFILTER_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(tiny_clip_dir), str(tmp_path)]
