"""The ``curate`` KFP component: a shell around ``distilflow.components.curate.run.run``."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.
from typing import Optional

from kfp import dsl

from distilflow.images import stage_image


@dsl.component(base_image=stage_image("curate"), install_kfp_package=False)
def curate(
    config: dict,
    output_uri: str,
    curated: dsl.Output[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.HTML],
    traces: Optional[dsl.Input[dsl.Dataset]] = None,  # noqa: UP045 - KFP reads typing.Optional
):
    """Judge, verify and select the teacher's traces; write SFT examples and preference pairs.

    Args:
        config: The whole pipeline config; this stage reads its ``curate`` section (judge, selection, ...).
        output_uri: Root folder or URI of the run; this stage writes under ``<output_uri>/curate``.
        traces: The distill output (its metadata carries the distill folder's URI); none when the
            ``curate`` section names a scored ``corpus`` instead.
        curated: Output dataset; its metadata carries the URI of the curate output folder.
        metrics: Rows in and out overall and per filter, judge failures (per quantity), judge requests,
            cache hits and tokens, correctness rate.
        report: HTML report: RV/CD histograms and heat maps before and after selection, sample rows.
    """
    from distilflow import artifacts, uri
    from distilflow.components.curate.config import CurateConfig
    from distilflow.components.curate.run import run

    section = artifacts.section(config, "curate")
    section["output_uri"] = uri.join(output_uri, "curate")
    if traces is not None:
        section["data_uri"] = artifacts.consume(traces, "curate input 'traces'")
    result = run(CurateConfig.from_dict(section, where="config section 'curate'"))
    artifacts.publish(
        curated,
        uri=section["output_uri"],
        stage_uri=section["output_uri"],
        kept=result.kept,
        pairs=result.pairs,
    )
    artifacts.log_metrics(metrics, section["output_uri"])
    with open(report.path, "w", encoding="utf-8") as f:
        f.write(uri.read_text(result.report_uri))
    artifacts.publish(report, uri=result.report_uri, stage_uri=section["output_uri"])
