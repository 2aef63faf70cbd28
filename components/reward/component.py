"""The `reward` KFP component: a thin shell over ``distilflow.components.reward.run.run``."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.
from kfp import dsl

from distilflow.images import stage_image


@dsl.component(base_image=stage_image("reward"), install_kfp_package=False)
def reward(
    config: dict,
    output_uri: str,
    data: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.HTML],
    tensorboard: dsl.Output[dsl.Artifact],
):
    """Train a reward model on curate's pairs; publish its folder's URI only if the calibration gate passes.

    The task fails (and publishes nothing) when the held-out pairwise accuracy or the agreement with the
    held-out labels is below the configured threshold, so a downstream rl task never starts.

    Args:
        config: The whole pipeline config; this stage reads its ``reward`` section (``model`` names the
            starting model).
        output_uri: The run's root URI; the stage writes under ``<output_uri>/reward``.
        data: curate's output (its metadata carries the folder's URI).
        model: The reward model (metadata ``uri`` = ``<output_uri>/reward/model``, ``stage_uri`` its stage).
        metrics: Losses, pairwise accuracy (train before/after, held-out, per CD bin), label agreement, the
            gate verdict, score mean/std, judge and row counts.
        report: HTML report: loss/accuracy/margin curves, the gate's figures, held-out accuracy by CD bin.
        tensorboard: TensorBoard event files of the run (tracking.backend: tensorboard), also at
            ``<output_uri>/reward/tensorboard``.
    """
    from distilflow import artifacts
    from distilflow import uri as uris
    from distilflow.components.reward.config import RewardConfig
    from distilflow.components.reward.run import run

    section = artifacts.section(config, "reward")
    section["output_uri"] = uris.join(output_uri, "reward")
    section["data_uri"] = artifacts.consume(data, "reward data")
    result = run(RewardConfig.from_dict(section, where="pipeline config"))

    artifacts.publish(model, result.model_uri, stage_uri=section["output_uri"])
    artifacts.log_metrics(metrics, section["output_uri"])
    page = uris.join(section["output_uri"], "report.html")
    if uris.exists(page):  # outputs finished by an older version have none
        with open(report.path, "w", encoding="utf-8") as f:
            f.write(uris.read_text(page))
        artifacts.publish(report, page, stage_uri=section["output_uri"])
    # TensorBoard event files (tracking.backend: tensorboard), or a note that there are none
    artifacts.publish_tensorboard(tensorboard, section["output_uri"])
