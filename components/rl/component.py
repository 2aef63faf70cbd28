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
    report: dsl.Output[dsl.HTML],
    tensorboard: dsl.Output[dsl.Artifact],
    reward_model: dsl.Input[dsl.Model] = None,
    difficulty: dsl.Input[dsl.Dataset] = None,
):
    """Train the student with GRPO on the configured problems; publish the model folder's URI.

    Args:
        config: The whole pipeline config; this stage reads its ``rl`` section (``problems_uri`` names
            the problems with reference answers, ``rewards`` the weighted reward terms).
        output_uri: The run's root URI; the stage writes under ``<output_uri>/rl``.
        student: The policy to start from, usually sft's or dpo's ``model`` output.
        model: The trained policy (metadata ``uri`` = ``<output_uri>/rl/model``).
        metrics: Total reward, accuracy, each reward term, KL, completion length, loss, steps, problem counts.
        report: HTML report: reward (total and per term), accuracy, KL, completion length and loss curves.
        tensorboard: TensorBoard event files of the run (tracking.backend: tensorboard), also at
            ``<output_uri>/rl/tensorboard``.
        reward_model: Optional: the reward stage's ``model`` output (its stage must have passed the
            calibration gate), for the ``reward_model`` term.
        difficulty: Optional: curate's output, whose scored.jsonl gives each problem's CD (length term).
    """
    from distilflow import artifacts
    from distilflow import uri as uris
    from distilflow.components.rl.config import RlConfig
    from distilflow.components.rl.run import run

    section = artifacts.section(config, "rl")
    section["output_uri"] = uris.join(output_uri, "rl")
    section["model"] = artifacts.consume(student, "rl student")
    if reward_model is not None:
        artifacts.consume(reward_model, "rl reward model")
        # the stage folder, not the model inside it: run() reads the gate's figures from its manifest
        section["reward_model_uri"] = reward_model.metadata.get("stage_uri", reward_model.metadata["uri"])
    if difficulty is not None:
        section["difficulty_uri"] = artifacts.consume(difficulty, "rl difficulty")
    result = run(RlConfig.from_dict(section, where="pipeline config"))

    artifacts.publish(model, result.model_uri, stage_uri=section["output_uri"])
    artifacts.log_metrics(metrics, section["output_uri"])
    page = uris.join(section["output_uri"], "report.html")
    if uris.exists(page):  # outputs finished by an older version have none
        with open(report.path, "w", encoding="utf-8") as f:
            f.write(uris.read_text(page))
        artifacts.publish(report, page, stage_uri=section["output_uri"])
    # TensorBoard event files (tracking.backend: tensorboard), or a note that there are none
    artifacts.publish_tensorboard(tensorboard, section["output_uri"])
