"""Configuration a typo or a script gets wrong: one line naming the setting, before any work, and nothing created."""

import json

import pytest

from pairfilter_dagster.cli import main


@pytest.mark.parametrize("make, says", [
    (lambda tmp: tmp / "no-such-data", "does not exist"),
    (lambda tmp: (tmp / "a-file").write_text("x") and tmp / "a-file", "is not a folder"),
])
def test_a_data_dir_that_is_not_a_folder_is_refused_and_not_created(tmp_path, monkeypatch, capsys, make, says):
    data_dir = make(tmp_path)
    monkeypatch.setenv("PAIRFILTER_DATA_DIR", str(tmp_path / "ignored"))
    config = json.dumps({"resources": {"storage": {"config": {"data_dir": str(data_dir)}}}})
    assert main(["--config-json", config]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pairfilter-materialize: error: data_dir: {str(data_dir)!r} {says}")
    assert not (tmp_path / "no-such-data").exists() and not (tmp_path / "ignored").exists()


@pytest.mark.parametrize("config, says", [
    ({"resources": {"storage": {"config": {"max_line_bytes": "many"}}}},
     "1 validation error for PairfilterStorage: max_line_bytes: Input should be a valid integer"),
    ({"resources": {"storage": {"config": {"image_roots": "images"}}}},
     "1 validation error for PairfilterStorage: image_roots: Input should be a valid list"),
    ({"resources": {"storage": 5}}, "resources.storage: must be a mapping, got int 5"),
    ({"resources": {"storage": {"config": ["data"]}}}, "resources.storage.config: must be a mapping, got list"),
])
def test_a_wrong_type_for_a_setting_is_one_line_naming_it(bundled_data_dir, monkeypatch, capsys, config, says):
    monkeypatch.setenv("PAIRFILTER_DATA_DIR", str(bundled_data_dir))
    assert main(["--config-json", json.dumps(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pairfilter-materialize: error: {says}"), err
    assert not (bundled_data_dir / "output").exists() and not (bundled_data_dir / "catalog.duckdb").exists()
