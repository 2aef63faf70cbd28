"""KFP component of the ``deploy`` stage."""

from kfp import dsl

from distilflow.images import stage_image


@dsl.component(base_image=stage_image("deploy"), install_kfp_package=False)
def deploy(
    config: dict,
    output_uri: str,
    model: dsl.Input[dsl.Model],
    endpoint: dsl.Output[dsl.Artifact],
) -> str:
    """Serve the model (locally, on KServe or on PAI-EAS, per ``config.deploy.target``), smoke-test it;
    return the endpoint URL (empty on a dry run). Cluster settings come from the deploy section."""
    from distilflow import artifacts
    from distilflow import uri as uris
    from distilflow.components.deploy.config import DeployConfig
    from distilflow.components.deploy.run import run

    cfg = DeployConfig.from_dict(
        {
            **artifacts.section(config, "deploy"),
            "output_uri": uris.join(output_uri, "deploy"),
            "model": artifacts.consume(model, "deploy: model"),
        },
        where="config section 'deploy'",
    )
    result = run(cfg)
    artifacts.publish(
        endpoint,
        uri=cfg.output_uri,
        url=result.endpoint_url,
        served_model=result.served_model,
        backend=result.backend,
        target=result.target,
        stopped=result.stopped,
        dry_run=result.dry_run,
        rollout=result.rollout,
        manifest_uri=result.manifest_uri or "",
    )
    return result.endpoint_url
