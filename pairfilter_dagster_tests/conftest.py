"""Shared fixtures: real (tiny, randomly initialised) CLIP and SigLIP checkpoints written with save_pretrained, and
data folders built from the real photos bundled in the repo's data/."""

import json
import shutil
from pathlib import Path

import pytest

from pairfilter_dagster.testing import PHOTOS, write_clip_checkpoint, write_siglip_checkpoint

REPO = Path(__file__).resolve().parents[1]
BUNDLED_DATA = REPO / "data"


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return write_clip_checkpoint(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    return write_siglip_checkpoint(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="session")
def embedder(tiny_clip_dir):
    from pairfilter_dagster.core.embedding.model import ClipEmbedder, ModelSpec

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
    from pairfilter_dagster.core.ingest.formats import read_samples
    from pairfilter_dagster.core.ingest.samples import SampleRules

    rules = SampleRules.for_data_dir(raw_dir.parent, [str(raw_dir.parent), str(PHOTOS)], pairing)
    return list(read_samples(raw_dir, rules))


LONGEST_MODULES_FIRST = ("test_webserver.py", "test_shard_workers.py", "test_code_quality.py", "test_faults.py",
                         "test_hostile_manifests.py", "test_definitions.py", "test_cli.py", "test_component.py", "test_ray_engine.py",
                         "test_object_storage.py", "test_hostile_images.py", "test_scoring.py")
"""The modules that take longest (`--durations`), longest first; the others follow in their usual order."""


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`--dist loadfile`, pyproject's addopts), each module runs whole on one worker, in its
    own order, and the workers take modules in collection order: the longest first, so that the one that takes
    most of the run (test_webserver's `dagster dev`) does not start last. A run without xdist keeps the usual
    order. The sort is stable: the tests of a module keep their order."""
    if not hasattr(config, "workerinput"):  # not an xdist worker
        return
    rank = {name: i for i, name in enumerate(LONGEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
