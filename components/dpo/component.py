"""The `dpo` KFP component: a thin shell over ``distilflow.components.dpo.run.run``."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.
from kfp import dsl

from distilflow.images import stage_image


@dsl.component(base_image=stage_image("dpo"), install_kfp_package=False)
def dpo(
    config: dict,
    output_uri: str,
    data: dsl.Input[dsl.Dataset],
    student: dsl.Input[dsl.Model],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.HTML],
    tensorboard: dsl.Output[dsl.Artifact],
):
    """Preference-optimise the student on curate's preference.jsonl; publish the model folder's URI.

    Args:
        config: The whole pipeline config; this stage reads its ``dpo`` section.
        output_uri: The run's root URI; the stage writes under ``<output_uri>/dpo``.
        data: curate's output (its metadata carries the folder's URI).
        student: The model to start from, usually sft's ``model`` output.
        model: The optimised model (metadata ``uri`` = ``<output_uri>/dpo/model``).
        metrics: The manifest's counts and metrics: rows read, used, dropped and rejected; losses, reward
            accuracy and margin, steps, the betas trained with.
        report: HTML report: loss, reward margin/accuracy and learning-rate curves.
        tensorboard: TensorBoard event files of the run (tracking.backend: tensorboard), also at
            ``<output_uri>/dpo/tensorboard``.
    """
    from distilflow import artifacts
    from distilflow import uri as uris
    from distilflow.components.dpo.config import DpoConfig
    from distilflow.components.dpo.run import run

    section = artifacts.section(config, "dpo")
    section["output_uri"] = uris.join(output_uri, "dpo")
    section["data_uri"] = artifacts.consume(data, "dpo data")
    section["model"] = artifacts.consume(student, "dpo student")
    result = run(DpoConfig.from_dict(section, where="pipeline config"))

    artifacts.publish(model, result.model_uri, stage_uri=section["output_uri"])
    artifacts.log_metrics(metrics, section["output_uri"])
    page = uris.join(section["output_uri"], "report.html")
    if uris.exists(page):  # outputs finished by an older version have none
        with open(report.path, "w", encoding="utf-8") as f:
            f.write(uris.read_text(page))
        artifacts.publish(report, page, stage_uri=section["output_uri"])
    # TensorBoard event files (tracking.backend: tensorboard), or a note that there are none
    artifacts.publish_tensorboard(tensorboard, section["output_uri"])
