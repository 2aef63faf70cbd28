"""The `rl` KFP component: a thin shell over ``distilflow.components.rl.run.run``."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.
from kfp import dsl

from distilflow.images import stage_image


@dsl.component(base_image=stage_image("rl"), install_kfp_package=False)
def rl(
    config: dict,
    output_uri: str,
    student: dsl.Input[dsl.Model],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Train the student with GRPO on the configured problems; publish the model folder's URI.

    Args:
        config: The whole pipeline config; this stage reads its ``rl`` section (``problems_uri`` names
            the problems with reference answers).
        output_uri: The run's root URI; the stage writes under ``<output_uri>/rl``.
        student: The policy to start from, usually sft's or dpo's ``model`` output.
        model: The trained policy (metadata ``uri`` = ``<output_uri>/rl/model``).
        metrics: Rewards and losses (first/final), steps and problem counts.
    """
    from distilflow import artifacts
    from distilflow import uri as uris
    from distilflow.components.rl.config import RlConfig
    from distilflow.components.rl.run import run

    section = artifacts.section(config, "rl")
    section["output_uri"] = uris.join(output_uri, "rl")
    section["model"] = artifacts.consume(student, "rl student")
    result = run(RlConfig.from_dict(section, where="pipeline config"))

    artifacts.publish(model, result.model_uri, stage_uri=section["output_uri"])
    keys = ("first_reward", "final_reward", "first_loss", "final_loss", "steps")
    for key in (*keys, "problems_used", "problems_skipped"):
        value = getattr(result, key)
        if value is not None:
            metrics.log_metric(key, value)
