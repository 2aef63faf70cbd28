"""``reward_rl``: RL with a distilled reward model, behind a calibration gate.

validate -> distill -> curate -> sft -> reward (calibration gate) -> rl -> evaluate:

- **distill** and **curate** as in the other recipes; curate keeps incorrect chains too and builds
  preference pairs (better vs worse chain of the same problem) from the judge's scores;
- **sft** gives the policy a cold start on the curated chains;
- **reward** trains a Bradley-Terry reward model on the pairs (from ``student_model`` unless
  ``reward.model`` is overridden), then its calibration gate: the stage fails, publishing nothing,
  unless the model ranks at least ``reward.min_heldout_accuracy`` (0.6) of the held-out pairs right,
  so RL never optimises an uncalibrated reward;
- **rl**: GRPO on the problems (``problems_uri``) from the SFT student, rewarded by verifiable
  correctness + the reward model's score + a length term whose budget grows with the problem's CD
  (``rl.rewards``); **evaluate** the policy.

Needs: a teacher endpoint (key in a Kubernetes Secret), a student model, a problems JSONL with reference
answers and an evaluation JSONL in object storage, GPU nodes for the training and evaluation steps.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's types at decoration time.
from kfp import dsl

from distilflow.components.evaluate.component import evaluate
from distilflow.components.reward.component import reward
from distilflow.components.rl.component import rl
from distilflow.components.sft.component import sft
from distilflow.pipelines import common
from distilflow.pipelines.common import data_file  # noqa: F401 - the SDK reads DEFAULT_CONFIG with it

NAME = "reward_rl"
STAGES = ["validate", "distill", "curate", "sft", "reward", "rl", "evaluate"]
DEFAULT_CONFIG = "reward_rl.yaml"


def reward_rl(
    output_uri: str = "s3://distilflow/runs/reward-rl",
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
):
    # locals(): the console parameters above, as configure and validate read them.
    cfg, curated, pod_gpus = common.prepare_data(NAME, STAGES, locals(), curate_name="curate (pairs)")
    # Cold start of the policy.
    sft_task = sft(config=cfg, output_uri=output_uri, data=curated)
    common.gpu_step(sft_task, "sft", gpu_type, pod_gpus["sft"], gpu_node_selector)
    # Distilled reward model (Bradley-Terry on the judged pairs); fails unless calibrated on held-out pairs.
    reward_task = reward(config=cfg, output_uri=output_uri, data=curated)
    common.gpu_step(reward_task, "reward (calibration gate)", gpu_type, pod_gpus["reward"], gpu_node_selector)
    # GRPO from the SFT student: correctness + reward model + CD-aware length.
    rl_task = rl(
        config=cfg,
        output_uri=output_uri,
        student=sft_task.outputs["model"],
        reward_model=reward_task.outputs["model"],
        difficulty=curated,
    )
    common.gpu_step(rl_task, "rl (GRPO)", gpu_type, pod_gpus["rl"], gpu_node_selector)
    # Accuracy, pass@k and tokens of the policy.
    evaluate_task = evaluate(config=cfg, output_uri=output_uri, model=rl_task.outputs["model"])
    common.gpu_step(evaluate_task, "evaluate", gpu_type, 1, gpu_node_selector)


reward_rl.__doc__ = common.docstring(
    "Reward model distilled from judged pairs, a calibration gate, then GRPO and evaluation."
)
pipeline = dsl.pipeline(
    name="reward-rl",
    description="Distilled reward model -> calibration gate -> GRPO: distill -> curate -> sft -> reward (gate) "
    "-> rl -> evaluate.",
)(reward_rl)
