"""Safety defaults: no remote code unless asked, a pinnable model revision, a UI bound to localhost. (Image paths
confined to the allowed roots: test_samples.py; no network during a run: test_bad_input.py.)"""

import re

import pytest

from pairfilter_dagster.core.embedding.model import ClipEmbedder, ModelLoadError, ModelSpec
from pairfilter_dagster.defs.resources import ClipModel

from .conftest import REPO
from .pipeline import DEFS as defs


def test_remote_code_is_off_unless_set():
    assert ModelSpec().trust_remote_code is False
    assert ClipModel().trust_remote_code is False
    assert defs.resources["clip"].trust_remote_code is False


def test_the_revision_is_passed_to_the_hub_and_named_when_it_fails(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert ClipModel(revision="3d74acf").revision == "3d74acf"
    with pytest.raises(ModelLoadError, match="at revision '3d74acf'"):
        ClipEmbedder.load(ModelSpec("openai/clip-vit-base-patch32", revision="3d74acf"))


def test_every_ui_command_in_the_readme_binds_to_localhost():
    code_blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    commands = [line for block in code_blocks for line in block.splitlines() if "dagster dev" in line]
    assert commands
    for command in commands:
        assert re.search(r"(-h|--host) 127\.0\.0\.1\b", command), command
