"""KFP component of the ``validate`` stage."""

from kfp import dsl

from distilflow.images import stage_image


@dsl.component(base_image=stage_image("validate"), install_kfp_package=False)
def validate(config: dict, output_uri: str, stages: list, report: dsl.Output[dsl.Artifact]):
    """Check the pipeline config, input data, model folders and endpoints before any other step."""
    from distilflow import artifacts
    from distilflow import uri as uris
    from distilflow.components.validate.config import ValidateConfig
    from distilflow.components.validate.run import run

    cfg = ValidateConfig.from_dict(
        {
            **artifacts.section(config, "validate"),
            "output_uri": uris.join(output_uri, "validate"),
            "run_uri": output_uri,
            "stages": stages,
            "pipeline_config": config,
        }
    )
    result = run(cfg)
    artifacts.publish(report, uri=result.report_uri, stage_uri=cfg.output_uri)
