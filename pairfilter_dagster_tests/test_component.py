"""The Component as a dg project uses it: `dg check defs` / `dg list defs` on this repo (whose own pipeline is an
`ImagePairSimilarityFilter` instance in defs/pairfilter/defs.yaml), and another team's dg project made in a temp
folder with two instances over two datasets, each with its own thresholds and key prefix, checked and listed by dg,
then both materialized for real side by side in one code location.

The dg commands run as subprocesses of the `dg` next to this interpreter (dg 1.13 loads a project's definitions in
its own process, so no `uv` and no flag is needed); VIRTUAL_ENV is set to this interpreter's environment, which
silences dg's "active virtual environment does not match" warning when the project has a .venv of its own."""

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pairfilter_dagster.defs.partitions import all_shards_tags
from pairfilter_dagster.testing import PHOTOS

from .conftest import BUNDLED_DATA, REPO
from .test_assets import query

DG = str(Path(sys.executable).parent / "dg")
COMPONENT_TYPE = "pairfilter_dagster.ImagePairSimilarityFilter"
PROJECT_MODULE = "pairfilter_two_datasets"
SHARDS = ["pairs.jsonl", "more/edge_cases.jsonl"]  # the bundled manifests, as paths relative to raw/
ASSET_NAMES = {"raw_samples", "image_pair_stats", "filtered_samples", "similarity_report", "image_embeddings"}
CHECKS = {
    "image_pair_stats:scores_finite_and_in_range", "image_pair_stats:one_row_per_sample",
    "filtered_samples:kept_samples_satisfy_config", "filtered_samples:every_sample_accounted_for",
    "filtered_samples:every_manifest_readable",
    "image_embeddings:embeddings_align_with_metadata",
}
JOBS = {"shard_job", "dataset_job", "pairfilter_job"}
# Two instances over two copies of the bundled data. The tiny random CLIP scores every bundled pair above 0.9, so
# b's range (0.95..0.999) keeps a strict, non-empty subset of what a's (0.1..1.0) keeps: max_score matters too.
INSTANCES = {
    "a": dict(min_score=0.1, max_score=1.0, any_or_all="any", group="dataset_a"),
    "b": dict(min_score=0.95, max_score=0.999, any_or_all="all", group="dataset_b"),
}


def run_dg(*args: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("DAGSTER_HOME", None)  # dg then uses a temporary instance
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run([DG, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def run_dg_together(*commands: list[str], cwd: Path, pythonpath: Path | None = None) -> list[subprocess.CompletedProcess]:
    """Independent dg commands at once (each takes seconds, mostly importing Dagster)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda command: run_dg(*command, cwd=cwd, pythonpath=pythonpath), commands))


def listed_defs(done: subprocess.CompletedProcess) -> dict:
    """The output of `dg list defs --json`."""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout)


def write_dg_project(root: Path, module: str, instances: dict[str, dict]) -> Path:
    """A minimal dg project another team would have: pyproject.toml, `<module>/definitions.py` loading the defs
    folder, and one `<module>/defs/<name>/defs.yaml` per instance (`instances`: name -> the YAML's attributes)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [project]
        name = "{module.replace("_", "-")}"
        version = "0.0.1"

        [tool.dg]
        directory_type = "project"

        [tool.dg.project]
        root_module = "{module}"
        """))
    package = root / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "definitions.py").write_text(textwrap.dedent("""\
        from pathlib import Path

        import dagster as dg


        @dg.definitions
        def defs() -> dg.Definitions:
            return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
        """))
    for name, attributes in instances.items():
        folder = package / "defs" / name
        folder.mkdir(parents=True)
        (folder / "defs.yaml").write_text(yaml.safe_dump({"type": COMPONENT_TYPE, "attributes": attributes},
                                                         sort_keys=False))
    return root


def instance_attributes(name: str, tiny_clip_dir: Path) -> dict:
    # data_dir is relative to the YAML's folder <root>/<module>/defs/<name>/: the dataset is <root>/datasets/<name>.
    return {"data_dir": f"../../../datasets/{name}", "hf_clip": str(tiny_clip_dir), **INSTANCES[name],
            "asset_key_prefix": [name]}


def copy_bundled_data(target: Path) -> Path:
    """What the `bundled_data_dir` fixture makes: the repo's manifests and its photos."""
    shutil.copytree(BUNDLED_DATA / "raw", target / "raw")
    shutil.copytree(PHOTOS, target / "images")
    return target


@pytest.fixture(scope="module")
def two_datasets_project(tmp_path_factory, tiny_clip_dir) -> Path:
    root = tmp_path_factory.mktemp("two-datasets-project")
    for name in INSTANCES:
        copy_bundled_data(root / "datasets" / name)
    return write_dg_project(root, PROJECT_MODULE, {name: instance_attributes(name, tiny_clip_dir)
                                                    for name in INSTANCES})


def import_definitions(root: Path, module: str):
    """The project's `defs` (the `@dg.definitions` function), imported with the project folder on sys.path."""
    sys.path.insert(0, str(root))
    return importlib.import_module(f"{module}.definitions").defs


def forget_project(root: Path, module: str) -> None:
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m == module or m.startswith(f"{module}.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def load_two_datasets(two_datasets_project):
    """Loads the temp project's Definitions in this process, as its code server would."""
    yield import_definitions(two_datasets_project, PROJECT_MODULE)
    forget_project(two_datasets_project, PROJECT_MODULE)


# ---------------------------------------------------------------------------------------------------------------
# This repo: a dg project whose own pipeline is the Component instance in defs/pairfilter/defs.yaml.


def test_dg_checks_and_lists_the_projects_own_instance():
    done, listing = run_dg_together(["check", "defs"], ["list", "defs", "--json"], cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "All component YAML validated successfully." in done.stdout
    assert "All definitions loaded successfully." in done.stdout

    listed = listed_defs(listing)
    assert {a["asset_key"] for a in listed["assets"]} == ASSET_NAMES
    assert {a["group_name"] for a in listed["assets"]} == {"pairfilter"}
    assert all(a["source"].startswith("pairfilter_dagster/defs/pairfilter/defs.yaml:") for a in listed["assets"])
    assert {c["key"] for c in listed["asset_checks"]} == CHECKS
    assert {j["name"] for j in listed["jobs"]} == JOBS
    assert [(s["name"], s["cron_schedule"]) for s in listed["schedules"]] == [("pairfilter_daily", "0 3 * * *")]
    assert [s["name"] for s in listed["sensors"]] == ["pairfilter_new_manifests"]
    assert {r["name"] for r in listed["resources"]} == {"clip", "storage"}


def test_the_component_is_registered_for_dg(two_datasets_project):
    """The `dagster_dg_cli.registry_modules` entry point makes `dg list components` (and so `dg scaffold defs`)
    offer the Component in any project of an environment where the package is installed."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '[project.entry-points."dagster_dg_cli.registry_modules"]\npairfilter_dagster = "pairfilter_dagster"' in pyproject
    if "pairfilter_dagster" not in {e.name for e in entry_points(group="dagster_dg_cli.registry_modules")}:
        pytest.skip("the installed package predates its dg entry point: reinstall it (pip install -e .)")
    done = run_dg("list", "components", "--json", cwd=two_datasets_project)
    assert done.returncode == 0, done.stderr[-3000:]
    assert COMPONENT_TYPE in {c["key"] for c in json.loads(done.stdout)["items"]}


# ---------------------------------------------------------------------------------------------------------------
# Another team's dg project: two instances side by side.


def test_dg_checks_and_lists_two_instances_side_by_side(two_datasets_project):
    root = two_datasets_project
    *checks, listing = run_dg_together(["check", "yaml"], ["check", "defs"], ["list", "defs", "--json"], cwd=root,
                                       pythonpath=root)
    for done in checks:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "All component YAML validated successfully." in done.stdout

    listed = listed_defs(listing)
    for name, attributes in INSTANCES.items():
        source = f"{PROJECT_MODULE}/defs/{name}/defs.yaml:1"
        assets = [a for a in listed["assets"] if a["asset_key_parts"][0] == name]
        assert {a["asset_key"] for a in assets} == {f"{name}/{asset}" for asset in ASSET_NAMES}
        assert {a["group_name"] for a in assets} == {attributes["group"]}
        assert {a["source"] for a in assets} == {source}
        image_pair_stats = next(a for a in assets if a["asset_key"] == f"{name}/image_pair_stats")
        assert image_pair_stats["dependency_keys"] == [f"{name}/raw_samples"]
        assert {c["key"] for c in listed["asset_checks"] if c["asset_key"].startswith(f"{name}/")} == {
            f"{name}/{check}" for check in CHECKS}
        assert {j["name"] for j in listed["jobs"] if j["name"].startswith(f"{name}__")} == {
            f"{name}__{job}" for job in JOBS}
        assert [s["name"] for s in listed["schedules"] if s["name"].startswith(f"{name}__")] == [
            f"{name}__pairfilter_daily"]
        assert [s["name"] for s in listed["sensors"] if s["name"].startswith(f"{name}__")] == [
            f"{name}__pairfilter_new_manifests"]
    # Nothing else: every definition of the code location belongs to one of the two instances.
    assert len(listed["assets"]) == 2 * len(ASSET_NAMES) and len(listed["asset_checks"]) == 2 * len(CHECKS)
    assert len(listed["jobs"]) == 6
    assert len(listed["schedules"]) == 2 and len(listed["sensors"]) == 2
    assert {r["name"] for r in listed["resources"]} == {"a_clip", "a_storage", "b_clip", "b_storage"}


@pytest.mark.parametrize("attribute, value, message", [
    ("min_score", 1.5, "Input should be less than or equal to 1"),
    ("min_scroe", 0.5, "Extra inputs are not permitted"),
])
def test_dg_check_names_a_bad_attribute(tmp_path, tiny_clip_dir, attribute, value, message):
    bad = {**instance_attributes("b", tiny_clip_dir), attribute: value}
    root = write_dg_project(tmp_path, "pairfilter_bad_yaml", {"a": instance_attributes("a", tiny_clip_dir),
                                                             "b": bad})
    # The instance's folder is named: dg 1.13's `check yaml` without paths keys the YAML files it validates by
    # component type, so of several instances of one type it validates only one (whichever it finds last).
    done, loaded = run_dg_together(["check", "yaml", "pairfilter_bad_yaml/defs/b"], ["check", "defs"], cwd=root,
                                   pythonpath=root)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    yaml_lines = (root / "pairfilter_bad_yaml" / "defs" / "b" / "defs.yaml").read_text().splitlines()
    line = next(i for i, text in enumerate(yaml_lines, 1) if text.strip().startswith(f"{attribute}:"))
    assert f"pairfilter_bad_yaml/defs/b/defs.yaml:{line} - {COMPONENT_TYPE} attributes.{attribute}" in done.stdout

    # Loading validates every instance: the error names the attribute, its file and line, and pydantic's reason.
    output = loaded.stdout + loaded.stderr
    assert loaded.returncode == 1, output[-3000:]
    assert f"attributes.{attribute}" in output and "pairfilter_bad_yaml/defs/b/defs.yaml" in output
    assert message in output


def test_two_instances_materialize_side_by_side_each_with_its_own_thresholds(two_datasets_project,
                                                                              load_two_datasets):
    defs = load_two_datasets()
    datasets = two_datasets_project / "datasets"
    kept = {}
    with dg.instance_for_test() as instance:
        for name, attributes in INSTANCES.items():
            # The YAML's thresholds are the defaults of the instance's filter config (what the launchpad shows).
            filter_op = defs.resolve_assets_def(dg.AssetKey([name, "filtered_samples"])).op
            assert filter_op.name == f"{name}__filtered_samples"
            fields = filter_op.config_schema.config_type.fields
            assert {key: fields[key].default_value for key in ("min_score", "max_score", "any_or_all")} == {
                key: attributes[key] for key in ("min_score", "max_score", "any_or_all")}

            job = defs.resolve_job_def(f"{name}__pairfilter_job")
            assert job.partitions_def.name == f"{name}__manifest_shards"
            instance.add_dynamic_partitions(job.partitions_def.name, SHARDS)
            result = job.execute_in_process(instance=instance, tags=all_shards_tags(SHARDS))
            assert result.success
            checks = result.get_asset_check_evaluations()
            assert {f"{e.asset_key.to_user_string()}:{e.check_name}" for e in checks} == {
                f"{name}/{check}" for check in CHECKS}
            assert all(e.passed for e in checks), [e for e in checks if not e.passed]

            (materialization,) = result.asset_materializations_for_node(f"{name}__filtered_samples")
            metadata = {key: value.value for key, value in materialization.metadata.items()}
            assert {key: metadata[key] for key in ("min_score", "max_score", "any_or_all")} == {
                key: attributes[key] for key in ("min_score", "max_score", "any_or_all")}
            data = datasets / name
            assert metadata["output_path"] == str(data / "output" / "filtered_samples.jsonl")
            lines = [json.loads(line) for line in (data / "output" / "filtered_samples.jsonl").read_text()
                     .splitlines()]
            assert len(lines) == metadata["kept"] == metadata["dagster/row_count"]
            test = all if attributes["any_or_all"] == "all" else any
            for line in lines:
                scores = line["__dj__stats__"]["image_pair_similarity"]
                assert scores and test(attributes["min_score"] <= s <= attributes["max_score"] for s in scores)
            assert query(data, "SELECT count(*) FROM filtered_samples") == [(metadata["kept"],)]  # its own files
            assert query(data, "SELECT count(*) FROM image_pair_stats") == [(metadata["total"],)]
            kept[name] = (metadata, lines)

        # Each instance's partitions and materializations are its own, in the one instance both ran in.
        for name in INSTANCES:
            assert list(instance.get_dynamic_partitions(f"{name}__manifest_shards")) == SHARDS
            assert instance.get_materialized_partitions(dg.AssetKey([name, "image_pair_stats"])) == set(SHARDS)
            assert instance.get_latest_materialization_event(dg.AssetKey([name, "similarity_report"])) is not None

    (a, a_lines), (b, b_lines) = kept["a"], kept["b"]
    assert a["total"] == b["total"] and a["scored"] == b["scored"]  # the same dataset, twice
    assert 0 < b["kept"] < a["kept"]
    # Same photos and model, so the same scores: b keeps exactly those of a's samples inside b's narrower range.
    b_range = INSTANCES["b"]
    assert [line["id"] for line in b_lines] == [
        line["id"] for line in a_lines
        if all(b_range["min_score"] <= s <= b_range["max_score"] for s in line["__dj__stats__"]["image_pair_similarity"])
    ]


def test_yaml_thresholds_by_share_are_the_instances_default_and_bad_ones_are_refused(tmp_path, tiny_clip_dir):
    module = "pairfilter_shares"
    good = write_dg_project(tmp_path / "good", module, {"top": {"hf_clip": str(tiny_clip_dir), "keep_top_fraction": 0.3,
                                                                 "asset_key_prefix": ["top"]}})
    bad = write_dg_project(tmp_path / "bad", module, {"both": {"keep_top_fraction": 0.3, "min_score": 0.5}})
    checked, refused = run_dg_together(["check", "defs"], cwd=good, pythonpath=good), run_dg("check", "defs", cwd=bad,
                                                                                             pythonpath=bad)
    (checked,) = checked
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert refused.returncode != 0
    assert "keep_top_fraction, min_score, max_score: keep a share of the data or give bounds" in refused.stdout + refused.stderr
    try:
        defs = import_definitions(good, module)()
    finally:
        forget_project(good, module)
    fields = defs.resolve_assets_def(dg.AssetKey(["top", "filtered_samples"])).op.config_schema.config_type.fields
    assert fields["keep_top_fraction"].default_value == 0.3 and fields["min_score"].default_value == 0.1


def test_relative_data_dir_resolves_against_the_yaml_folder_not_the_cwd(two_datasets_project, load_two_datasets,
                                                                        tmp_path, monkeypatch, tiny_clip_dir):
    monkeypatch.chdir(tmp_path)
    defs = load_two_datasets()
    for name in INSTANCES:
        storage = defs.resources[f"{name}_storage"]
        assert Path(storage.data_dir).resolve() == (two_datasets_project / "datasets" / name).resolve()
        assert defs.resources[f"{name}_clip"].hf_clip == str(tiny_clip_dir)

    # An instance made in Python (`@dg.component_instance` in a .py file under defs/): relative to that file's folder.
    module = "pairfilter_python_instance"
    root = tmp_path / "python-instance"
    write_dg_project(root, module, {})
    (root / module / "defs" / "c").mkdir(parents=True)
    (root / module / "defs" / "c" / "instance.py").write_text(textwrap.dedent(f"""\
        import dagster as dg

        from pairfilter_dagster import ImagePairSimilarityFilter


        @dg.component_instance
        def load(context: dg.ComponentLoadContext) -> ImagePairSimilarityFilter:
            return ImagePairSimilarityFilter(data_dir="dataset", hf_clip={str(tiny_clip_dir)!r}, asset_key_prefix=["c"])
        """))
    try:
        python_defs = import_definitions(root, module)()
    finally:
        forget_project(root, module)
    data_dir = Path(python_defs.resources["c_storage"].data_dir)
    assert data_dir.resolve() == (root / module / "defs" / "c" / "dataset").resolve()
    assert {key.to_user_string() for key in python_defs.resolve_asset_graph().get_all_asset_keys()} == {
        f"c/{asset}" for asset in ASSET_NAMES}
