"""The threshold report asset: a score histogram and contact sheets around each threshold, written under
<data>/output/report/ and shown in the UI.

The UI renders Markdown metadata with images given as data: URIs (files on disk cannot be shown: the browser never
sees them). Markdown over 1,000 characters sits behind a "[Show Markdown]" link that opens it in a dialog, so each
picture is its own metadata entry, one click away; the files are linked by path too."""

from pathlib import Path

import dagster as dg

from ..core.catalog import read_view_rows
from ..core.filtering import FilterSettings
from ..core.report.summary import share_text
from ..core.report.threshold_report import (
    HISTOGRAM_FILE,
    REPORT_JSON,
    ThresholdReport,
    image_data_uri,
    min_score_sweep_markdown,
    write_threshold_report,
)
from ..core.schema import StatsRow
from .assets import asset_arguments
from .config import filter_settings_metadata, recorded_filter_settings
from .spec import PipelineSpec


def picture(path: Path, caption: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{caption}]({image_data_uri(path)})\n\n{caption}: `{path}`")


def report_metadata(report: ThresholdReport, settings: FilterSettings) -> dict:
    return {
        "histogram": picture(report.histogram, "histogram of image_pair_similarity with the thresholds"),
        **{
            f"{name}_boundary": picture(path, f"pairs just inside and outside {name} = {getattr(settings, name):g}")
            for name, path in report.sheets.items()
        },
        "min_score_sweep": dg.MetadataValue.md(min_score_sweep_markdown(report.scores, settings)),
        "scored_pairs": report.scored_pairs,
        "passing_pairs": report.passing_pairs,
        "kept_samples": report.kept_samples,
        **filter_settings_metadata(settings),
        **({"share": share} if (share := share_text(settings)) else {}),
        "report_dir": dg.MetadataValue.path(str(report.directory)),
        "report_json": dg.MetadataValue.path(str(report.directory / REPORT_JSON)),
    }


def build_report_asset(spec: PipelineSpec, image_pair_stats: dg.AssetsDefinition,
                       filtered_samples: dg.AssetsDefinition) -> dg.AssetsDefinition:
    filtered_key = spec.key("filtered_samples")

    @dg.asset(
        **asset_arguments(spec, "similarity_report"),
        deps=[image_pair_stats, filtered_samples],
        required_resource_keys={spec.storage_key},
        kinds={"pillow", "png"},
        code_version="1",
        description="Pictures for picking thresholds: a histogram of image_pair_similarity with min_score and "
        "max_score marked, and for each threshold a contact sheet of the pairs just inside and just outside it "
        "(thumbnails, score, sample id). Uses the thresholds of the latest filtered_samples materialization (as "
        "resolved there from keep_top_fraction / keep_bottom_fraction, if one was given). "
        f"Written to `<data>/output/report/` ({HISTOGRAM_FILE}, min_score_boundary.png, max_score_boundary.png, "
        f"{REPORT_JSON}) and shown in the metadata (click [Show Markdown]).",
    )
    def similarity_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        settings = recorded_filter_settings(context.instance, filtered_key)
        if settings is None:
            raise dg.Failure("filtered_samples has not been materialized yet: materialize it first")
        storage = spec.storage_of(context)
        with storage.query() as conn:
            rows = [row for chunk in read_view_rows(conn, StatsRow) for row in chunk]
        report = write_threshold_report(rows, settings, storage.report_dir,
                                        access=storage.image_access())
        context.log.info(f"Wrote the threshold report for {settings} to {report.directory}")
        return dg.MaterializeResult(metadata=report_metadata(report, settings))

    return similarity_report
