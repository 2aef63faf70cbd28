"""The `sft` KFP component: a thin shell over ``distilflow.components.sft.run.run``."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.
from kfp import dsl

from distilflow.images import stage_image


@dsl.component(base_image=stage_image("sft"), install_kfp_package=False)
def sft(
    config: dict,
    output_uri: str,
    data: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.HTML],
    tensorboard: dsl.Output[dsl.Artifact],
):
    """Fine-tune the student on curate's sft.jsonl; publish the model folder's URI.

    Args:
        config: The whole pipeline config; this stage reads its ``sft`` section.
        output_uri: The run's root URI; the stage writes under ``<output_uri>/sft``.
        data: curate's output (its metadata carries the folder's URI).
        model: The fine-tuned model (metadata ``uri`` = ``<output_uri>/sft/model``).
        metrics: The manifest's counts and metrics: rows read, used, dropped and rejected; losses, steps.
        report: HTML report: loss and learning-rate curves (also at ``<output_uri>/sft/report.html``).
        tensorboard: TensorBoard event files of the run (tracking.backend: tensorboard), also at
            ``<output_uri>/sft/tensorboard``.
    """
    from distilflow import artifacts
    from distilflow import uri as uris
    from distilflow.components.sft.config import SftConfig
    from distilflow.components.sft.run import run

    section = artifacts.section(config, "sft")
    section["output_uri"] = uris.join(output_uri, "sft")
    section["data_uri"] = artifacts.consume(data, "sft data")
    result = run(SftConfig.from_dict(section, where="pipeline config"))

    artifacts.publish(model, result.model_uri, stage_uri=section["output_uri"])
    artifacts.log_metrics(metrics, section["output_uri"])
    page = uris.join(section["output_uri"], "report.html")
    if uris.exists(page):  # outputs finished by an older version have none
        with open(report.path, "w", encoding="utf-8") as f:
            f.write(uris.read_text(page))
        artifacts.publish(report, page, stage_uri=section["output_uri"])
    # TensorBoard event files (tracking.backend: tensorboard), or a note that there are none
    artifacts.publish_tensorboard(tensorboard, section["output_uri"])
