"""``lifecycle``: every stage in one pipeline, with switches to skip the optional ones.

validate -> distill -> curate -> sft -> [dpo (CogPO)] -> [reward (calibration gate) -> rl (GRPO)] ->
evaluate -> [deploy]. ``with_dpo``, ``with_rl`` and ``with_deploy`` switch the bracketed parts on or
off (``dsl.If`` / ``dsl.Else``): the next stage takes the newest model that was made (``dsl.OneOf``).
RL starts from the DPO model when DPO ran, else from the SFT model.

A switch that is off also leaves its stages out of the config and out of validate's checks. Runs on
a KFP cluster and under ``kfp.local`` (``distilflow run``: kfp 2.17's local runner resolves
``dsl.OneOf`` over artifacts with distilflow's fix in ``client.py``).

Needs: everything the other recipes need (teacher endpoint and key Secret, student, problems and
evaluation JSONL in object storage, GPU nodes).
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's types at decoration time.
from kfp import dsl

from distilflow.components.deploy.component import deploy
from distilflow.components.dpo.component import dpo
from distilflow.components.evaluate.component import evaluate
from distilflow.components.reward.component import reward
from distilflow.components.rl.component import rl
from distilflow.components.sft.component import sft
from distilflow.pipelines import common
from distilflow.pipelines.common import data_file  # noqa: F401 - the SDK reads DEFAULT_CONFIG with it
from distilflow.pipelines.steps import same_model

NAME = "lifecycle"
STAGES = ["validate", "distill", "curate", "sft", "dpo", "reward", "rl", "evaluate", "deploy"]
DEFAULT_CONFIG = "lifecycle.yaml"

SWITCH_ARGS = """
        with_dpo: Run CogPO (DPO with per-pair beta) after SFT.
        with_rl: Train a reward model (calibration-gated) and run GRPO on the newest model.
        with_deploy: Serve the final model and smoke-test it."""


# The optional GPU stages run inside sub-pipelines: kfp 2.17's compiler does not hand a pipeline
# parameter used in set_accelerator_type/_limit into a dsl.If branch (the branch's task then fails with
# "pipelinechannel--gpu_count not found"), but it does hand on a sub-pipeline's ordinary inputs.


@dsl.pipeline(name="dpo-on-gpus", description="dpo (CogPO) on GPU nodes.")
def dpo_on_gpus(
    config: dict,
    output_uri: str,
    data: dsl.Input[dsl.Dataset],
    student: dsl.Input[dsl.Model],
    gpu_type: str,
    dpo_gpus: int,
    gpu_node_selector: dict,
) -> dsl.Model:
    dpo_task = dpo(config=config, output_uri=output_uri, data=data, student=student)
    common.gpu_step(dpo_task, "dpo (CogPO)", gpu_type, dpo_gpus, gpu_node_selector)
    return dpo_task.outputs["model"]


@dsl.pipeline(name="reward-rl-on-gpus", description="reward (calibration gate) -> rl (GRPO) on GPU nodes.")
def reward_rl_on_gpus(
    config: dict,
    output_uri: str,
    data: dsl.Input[dsl.Dataset],
    student: dsl.Input[dsl.Model],
    gpu_type: str,
    reward_gpus: int,
    rl_gpus: int,
    gpu_node_selector: dict,
) -> dsl.Model:
    # Distilled reward model; fails unless calibrated on held-out pairs (reward.min_heldout_accuracy).
    reward_task = reward(config=config, output_uri=output_uri, data=data)
    common.gpu_step(reward_task, "reward (calibration gate)", gpu_type, reward_gpus, gpu_node_selector)
    # GRPO on the newest model: correctness + reward model + CD-aware length.
    rl_task = rl(
        config=config,
        output_uri=output_uri,
        student=student,
        reward_model=reward_task.outputs["model"],
        difficulty=data,
    )
    common.gpu_step(rl_task, "rl (GRPO)", gpu_type, rl_gpus, gpu_node_selector)
    return rl_task.outputs["model"]


@dsl.pipeline(name="deploy-on-gpu", description="deploy on one GPU.")
def deploy_on_gpu(
    config: dict, output_uri: str, model: dsl.Input[dsl.Model], gpu_type: str, gpu_node_selector: dict
):
    deploy_task = deploy(config=config, output_uri=output_uri, model=model)
    common.gpu_step(deploy_task, "deploy", gpu_type, 1, gpu_node_selector)


def lifecycle(
    output_uri: str = "s3://distilflow/runs/lifecycle",
    teacher_base_url: str = common.TEACHER_BASE_URL,
    teacher_model: str = "deepseek-r1",
    teacher_key_secret: str = common.TEACHER_KEY_SECRET,
    student_model: str = "Qwen/Qwen2.5-7B-Instruct",
    problems_uri: str = common.PROBLEMS_URI,
    gpu_type: str = common.GPU_TYPE,
    gpu_count: int = 8,
    gpu_node_selector: dict = {},  # noqa: B006 - KFP reads the literal default
    preset: str = "7b-1node",
    overrides: str = "{}",
    config: dict = {},  # noqa: B006
    with_dpo: bool = True,
    with_rl: bool = True,
    with_deploy: bool = True,
):
    # locals(): the console parameters above, as configure and validate read them.
    cfg, curated, pod_gpus = common.prepare_data(NAME, STAGES, locals())
    # Curriculum SFT.
    sft_task = sft(config=cfg, output_uri=output_uri, data=curated)
    common.gpu_step(sft_task, "sft", gpu_type, pod_gpus["sft"], gpu_node_selector)
    # CogPO, or the SFT model handed on.
    with dsl.If(with_dpo == True, name="with dpo"):  # noqa: E712 - a KFP condition, not a Python comparison
        dpo_task = dpo_on_gpus(
            config=cfg,
            output_uri=output_uri,
            data=curated,
            student=sft_task.outputs["model"],
            gpu_type=gpu_type,
            dpo_gpus=pod_gpus["dpo"],
            gpu_node_selector=gpu_node_selector,
        )
        dpo_task.set_display_name("dpo (CogPO)")
    with dsl.Else(name="without dpo"):
        skip_dpo_task = same_model(model=sft_task.outputs["model"])
        common.cpu_step(skip_dpo_task, "no dpo")
    policy = dsl.OneOf(dpo_task.output, skip_dpo_task.outputs["passed"])
    # Reward model (calibration-gated) and GRPO, or the policy handed on.
    with dsl.If(with_rl == True, name="with rl"):  # noqa: E712
        rl_task = reward_rl_on_gpus(
            config=cfg,
            output_uri=output_uri,
            data=curated,
            student=policy,
            gpu_type=gpu_type,
            reward_gpus=pod_gpus["reward"],
            rl_gpus=pod_gpus["rl"],
            gpu_node_selector=gpu_node_selector,
        )
        rl_task.set_display_name("reward, rl")
    with dsl.Else(name="without rl"):
        skip_rl_task = same_model(model=policy)
        common.cpu_step(skip_rl_task, "no rl")
    final = dsl.OneOf(rl_task.output, skip_rl_task.outputs["passed"])
    # Accuracy, pass@k and tokens of the final model.
    evaluate_task = evaluate(config=cfg, output_uri=output_uri, model=final)
    common.gpu_step(evaluate_task, "evaluate", gpu_type, 1, gpu_node_selector)
    # Serve the final model and smoke-test it.
    with dsl.If(with_deploy == True, name="with deploy"):  # noqa: E712
        deploy_task = deploy_on_gpu(
            config=cfg,
            output_uri=output_uri,
            model=final,
            gpu_type=gpu_type,
            gpu_node_selector=gpu_node_selector,
        ).after(evaluate_task)
        deploy_task.set_display_name("deploy")


lifecycle.__doc__ = common.docstring(
    "The whole DistilQwen lifecycle, each optional stage behind a switch.", SWITCH_ARGS
)
pipeline = dsl.pipeline(
    name="lifecycle",
    description="Every stage: distill -> curate -> sft -> [dpo] -> [reward -> rl] -> evaluate -> [deploy].",
)(lifecycle)
