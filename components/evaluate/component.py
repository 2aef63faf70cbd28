"""KFP component of the ``evaluate`` stage."""

from kfp import dsl

from distilflow.images import stage_image


@dsl.component(base_image=stage_image("evaluate"), install_kfp_package=False)
def evaluate(
    config: dict,
    output_uri: str,
    model: dsl.Input[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.Markdown],
    report_html: dsl.Output[dsl.HTML],
    student: dsl.Output[dsl.Model],
):
    """Accuracy (avg@k, pass@k) and output tokens of one or more models on benchmarks, under a pinned protocol.

    ``student`` is the evaluated model again, its metadata carrying the headline scores, the protocol
    hash, its training run and data and, with ``registry.model_name``, the MLflow registry version: the
    console's lineage from data to a scored (and registered) model."""
    from distilflow import artifacts
    from distilflow import uri as uris
    from distilflow.components.evaluate import registry
    from distilflow.components.evaluate.config import EvaluateConfig
    from distilflow.components.evaluate.run import run

    cfg = EvaluateConfig.from_dict(
        {
            **artifacts.section(config, "evaluate"),
            "output_uri": uris.join(output_uri, "evaluate"),
            "model": artifacts.consume(model, "evaluate: model"),
        },
        where="config section 'evaluate'",
    )
    result = run(cfg)
    # The manifest's counts and metrics: the headline (the wired model on the first benchmark) and,
    # with several models or benchmarks, <model>/<benchmark>/<metric> for each.
    artifacts.log_metrics(metrics, cfg.output_uri)
    with open(report.path, "w", encoding="utf-8") as f:
        f.write(uris.read_text(result.report_md))
    artifacts.publish(report, uri=result.report_md, stage_uri=cfg.output_uri)
    with open(report_html.path, "w", encoding="utf-8") as f:
        f.write(uris.read_text(result.report_html))
    artifacts.publish(report_html, uri=result.report_html, stage_uri=cfg.output_uri)
    # The scored model: scores, protocol hash, lineage and registry version in its metadata.
    meta = registry.artifact_metadata(cfg, result)
    artifacts.publish(student, uri=cfg.model or "", stage_uri=cfg.output_uri, **meta)
