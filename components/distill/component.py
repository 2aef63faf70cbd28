"""The ``distill`` KFP components: shells around ``distilflow.components.distill.run``.

``distill`` answers all problems, or shard ``shard_index`` of ``num_shards`` when fanned out with
``dsl.ParallelFor`` (see ``fanout.py``); ``distill_merge`` joins the shards once all are complete.
"""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.
from kfp import dsl

from distilflow.images import stage_image


@dsl.component(base_image=stage_image("distill"), install_kfp_package=False)
def distill(
    config: dict,
    output_uri: str,
    traces: dsl.Output[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.HTML],
    shard_index: int = 0,
    num_shards: int = 1,
):
    """Have the teacher answer every problem (or one shard of them) with chains of thought.

    Args:
        config: The whole pipeline config; this stage reads its ``distill`` section
            (problems_uri, teacher or teachers, n, prompt, cache_uri, min_success_ratio, ...).
        output_uri: Root folder or URI of the run; this stage writes under ``<output_uri>/distill``
            (a shard under ``<output_uri>/distill/shards/NNNNN``, with one cache shared by all shards).
        traces: Output dataset; its metadata carries the URI of the distill output folder.
        metrics: Requests, cache hits, failures by kind, tokens, tokens/s, mean latency.
        report: HTML report with the output-length histogram (Markdown beside it in the output folder).
        shard_index: The shard to answer when fanned out.
        num_shards: How many shards the fan-out has (1: no fan-out).
    """
    from distilflow import artifacts, uri
    from distilflow.components.distill.config import DistillConfig
    from distilflow.components.distill.run import run, shard_uri

    section = artifacts.section(config, "distill")
    root = uri.join(output_uri, "distill")
    section["output_uri"] = root
    if num_shards > 1:
        section |= {"shard_index": shard_index, "num_shards": num_shards}
        section["output_uri"] = shard_uri(root, shard_index)
        section.setdefault("cache_uri", uri.join(root, "cache"))
    result = run(DistillConfig.from_dict(section, where="config section 'distill'"))
    artifacts.log_metrics(metrics, section["output_uri"])
    if result.report_html:
        with open(report.path, "w", encoding="utf-8") as f:
            f.write(uri.read_text(result.report_html))
        artifacts.publish(report, uri=result.report_html, stage_uri=section["output_uri"])
    artifacts.publish(
        traces, uri=section["output_uri"], stage_uri=section["output_uri"], traces=result.traces
    )


@dsl.component(base_image=stage_image("distill"), install_kfp_package=False)
def distill_merge(
    output_uri: str,
    num_shards: int,
    traces: dsl.Output[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.HTML],
):
    """Join the shards of a fanned-out ``distill`` into ``<output_uri>/distill``; refuse an incomplete shard."""
    from distilflow import artifacts, uri
    from distilflow.components.distill.run import merge, shard_uri

    root = uri.join(output_uri, "distill")
    result = merge(root, [shard_uri(root, i) for i in range(num_shards)])
    artifacts.log_metrics(metrics, root)
    with open(report.path, "w", encoding="utf-8") as f:
        f.write(uri.read_text(result.report_html))
    artifacts.publish(report, uri=result.report_html, stage_uri=root)
    artifacts.publish(traces, uri=root, stage_uri=root, traces=result.traces)
