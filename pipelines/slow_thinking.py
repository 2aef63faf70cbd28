"""``slow_thinking``: DistilQwen2.5-R1, a small model that thinks slowly, distilled from a reasoning teacher.

validate -> distill -> curate -> sft -> dpo -> evaluate -> deploy:

- **distill**: the teacher (DeepSeek-R1 or QwQ-32B behind an OpenAI-compatible endpoint) writes
  ``n`` chains of thought per problem, every call in distilflow's own request cache;
- **curate**: the judge scores reasoning verbosity, cognitive difficulty and logic, answers are checked,
  and CRV (critic -> expand/simplify -> verify) rewrites the chains too hard or too easy for the
  student's size (``crv_student``, from the preset); preference pairs get CogPO's per-pair beta;
- **sft** on the curated chains, then **dpo** with per-sample beta (CogPO);
- **evaluate** (accuracy, pass@k, tokens) and **deploy** (serve and smoke-test).

Needs: a teacher endpoint and its key as a Kubernetes Secret, a student model, a problems JSONL with
reference answers and an evaluation JSONL (``evaluate.problems_uri`` in ``overrides``) in object
storage, and GPU nodes for the training, evaluation and serving steps.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's types at decoration time.
from kfp import dsl

from distilflow.components.deploy.component import deploy
from distilflow.components.dpo.component import dpo
from distilflow.components.evaluate.component import evaluate
from distilflow.components.sft.component import sft
from distilflow.pipelines import common
from distilflow.pipelines.common import data_file  # noqa: F401 - the SDK reads DEFAULT_CONFIG with it

NAME = "slow_thinking"
STAGES = ["validate", "distill", "curate", "sft", "dpo", "evaluate", "deploy"]
DEFAULT_CONFIG = "slow_thinking.yaml"


def slow_thinking(
    output_uri: str = "s3://distilflow/runs/slow-thinking",
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
    cfg, curated, pod_gpus = common.prepare_data(NAME, STAGES, locals())
    # Fine-tune the student on the curated chains.
    sft_task = sft(config=cfg, output_uri=output_uri, data=curated)
    common.gpu_step(sft_task, "sft", gpu_type, pod_gpus["sft"], gpu_node_selector)
    # CogPO: DPO with per-pair beta on the curated preference pairs.
    dpo_task = dpo(
        config=cfg,
        output_uri=output_uri,
        data=curated,
        student=sft_task.outputs["model"],
    )
    common.gpu_step(dpo_task, "dpo (CogPO)", gpu_type, pod_gpus["dpo"], gpu_node_selector)
    # Accuracy, pass@k and tokens on the evaluation problems.
    evaluate_task = evaluate(config=cfg, output_uri=output_uri, model=dpo_task.outputs["model"])
    common.gpu_step(evaluate_task, "evaluate", gpu_type, 1, gpu_node_selector)
    # Serve the student and smoke-test the endpoint.
    deploy_task = deploy(config=cfg, output_uri=output_uri, model=dpo_task.outputs["model"]).after(
        evaluate_task
    )
    common.gpu_step(deploy_task, "deploy", gpu_type, 1, gpu_node_selector)


slow_thinking.__doc__ = common.docstring(
    "DistilQwen2.5-R1: teacher chains of thought, judged and CRV-refined for the student size, SFT, CogPO."
)
pipeline = dsl.pipeline(
    name="slow-thinking",
    description="DistilQwen2.5-R1: distill -> curate (judge + CRV) -> sft -> dpo (CogPO) -> evaluate -> deploy.",
)(slow_thinking)
