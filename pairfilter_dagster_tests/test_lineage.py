"""Column lineage and data versions: what lets the UI say where a column comes from and what is stale."""

import json

import dagster as dg

from pairfilter_dagster.core.catalog import query_engine
from pairfilter_dagster.core.results import ResultFiles
from pairfilter_dagster.core.schema import Sample
from pairfilter_dagster.core.tables import table_file
from pairfilter_dagster.defs.lineage import filtered_samples_lineage, image_pair_stats_lineage, table_data_version
from pairfilter_dagster.defs.resources import PairfilterStorage

from .conftest import write_manifest
from .pipeline import MANIFEST_SHARDS
from .pipeline import PIPELINE as assets


def deps(lineage: dg.TableColumnLineage) -> dict[str, set[str]]:
    return {column: {f"{d.asset_key.to_user_string()}.{d.column_name}" for d in found}
            for column, found in lineage.deps_by_column.items()}


def test_the_score_column_flows_from_the_stats_table_into_the_filtered_dataset():
    filtered = deps(filtered_samples_lineage(dg.AssetKey("image_pair_stats")))
    assert filtered["image_pair_similarity"] == {"image_pair_stats.image_pair_similarity"}
    assert filtered["sample_json"] == {"image_pair_stats.sample_json", "image_pair_stats.image_pair_similarity"}
    assert set(filtered) == {"sample_id", "manifest", "line_number", "image_pair_similarity", "sample_json"}
    assert deps(image_pair_stats_lineage(dg.AssetKey("raw_samples")))["image_pair_similarity"] == {"raw_samples.images"}


def raw_samples_version(data_dir, shard: str) -> str:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(MANIFEST_SHARDS.name, [shard])
    result = dg.materialize([assets.raw_samples], instance=instance, partition_key=shard,
                            resources={"storage": PairfilterStorage(data_dir=str(data_dir))})
    (event,) = result.asset_materializations_for_node("raw_samples")
    assert event.partition == shard
    return event.tags["dagster/data_version"]


def test_a_shards_data_version_follows_its_manifest_not_the_run(bundled_data_dir):
    first = raw_samples_version(bundled_data_dir, "pairs.jsonl")
    assert raw_samples_version(bundled_data_dir, "pairs.jsonl") == first  # nothing new: downstream stays fresh
    write_manifest(bundled_data_dir / "raw" / "new.jsonl", [{"images": ["../images/cat.jpg", "../images/img3.jpg"]}])
    assert raw_samples_version(bundled_data_dir, "pairs.jsonl") == first  # another shard changed, not this one
    with open(bundled_data_dir / "raw" / "pairs.jsonl", "a") as manifest:
        manifest.write(json.dumps({"images": ["../images/cat.jpg", "../images/img3.jpg"]}) + "\n")
    assert raw_samples_version(bundled_data_dir, "pairs.jsonl") != first  # "upstream data changed" downstream


def test_table_data_version_changes_with_any_row_or_the_extra_text(tmp_path):
    results = ResultFiles.under(tmp_path / "output")

    def version(lines, extra=""):
        rows = [Sample(sample_id=f"m:{i}", manifest="m", line_number=i, sample_json=line)
                for i, line in enumerate(lines, start=1)]
        with table_file(results.shard_file(Sample, "m"), Sample, "m") as table:  # the shard's file, replaced
            table.write(rows)
        with query_engine(results) as conn:
            return table_data_version(conn, "raw_samples", ["sample_id", "sample_json"], extra).value

    assert version(["a", "b"]) == version(["a", "b"])
    variants = (["a", "b"], ["b", "a"], ["ab"], ["a", "b", ""], [])
    assert len({version(lines) for lines in variants} | {version(["a", "b"], "min_score=0.2")}) == 6
