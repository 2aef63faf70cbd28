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
):
    """Train a reward model on curate's preference.jsonl; publish its folder's URI.

    Args:
        config: The whole pipeline config; this stage reads its ``reward`` section (``model`` names the
            starting model).
        output_uri: The run's root URI; the stage writes under ``<output_uri>/reward``.
        data: curate's output (its metadata carries the folder's URI).
        model: The reward model (metadata ``uri`` = ``<output_uri>/reward/model``).
        metrics: Losses, pairwise accuracy (train before/after, held-out), steps and row counts.
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
    keys = (
        "first_loss",
        "final_loss",
        "train_accuracy_before",
        "train_accuracy",
        "heldout_accuracy",
        "steps",
    )
    for key in (*keys, "rows_used", "rows_heldout", "rows_dropped"):
        value = getattr(result, key)
        if value is not None:
            metrics.log_metric(key, value)
