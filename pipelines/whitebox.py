"""``whitebox``: white-box distillation, the student learning the teacher's token distributions.

validate -> distill (with logits) -> sft (KD) -> evaluate:

- **distill**: the teacher answers every problem and, with every answer, gives its top-k token
  log-probabilities at every position (``distill.logits``; k = 20), stored as Parquet shards beside
  the traces with the teacher tokenizer's vocabulary fingerprint and the sampling settings;
- **sft** with ``kd``: the student trains on the teacher's tokens with cross-entropy mixed with a KL
  divergence to the teacher's stored top-k (the mass outside the top-k as one explicit outcome); it
  refuses a student whose vocabulary is not the teacher's;
- **evaluate** reports accuracy and tokens.

No judge, no curation: every answer trains (``curate``'s CRV rewrites would change the tokens the
logits score). Knobs and costs: ``docs/whitebox.md``.

Needs: a teacher whose tokens come back as ids with their logprobs: a vLLM server
(``teacher_base_url``; its tokenizer folder as ``{"distill": {"teacher": {"tokenizer": ...}}}`` in
``overrides``), or vLLM/transformers in-process (``distill.teacher`` in ``overrides``); a student of
the teacher's tokenizer family; problems and an evaluation JSONL in object storage; GPU nodes for sft
and evaluate.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's types at decoration time.
from kfp import dsl

from distilflow.components.evaluate.component import evaluate
from distilflow.components.sft.component import sft
from distilflow.pipelines import common
from distilflow.pipelines.common import data_file  # noqa: F401 - the SDK reads DEFAULT_CONFIG with it

NAME = "whitebox"
STAGES = ["validate", "distill", "sft", "evaluate"]
DEFAULT_CONFIG = "whitebox.yaml"


def whitebox(
    output_uri: str = "s3://distilflow/runs/whitebox",
    teacher_base_url: str = "http://vllm-teacher:8000/v1",
    teacher_model: str = "Qwen/Qwen2.5-72B-Instruct",
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
    cfg, distill_task, pod_gpus = common.prepare_teacher(
        NAME, STAGES, locals(), distill_name="distill (logits)"
    )
    # KD: cross-entropy mixed with a KL to the teacher's stored top-k, on the teacher's own tokens.
    sft_task = sft(config=cfg, output_uri=output_uri, data=distill_task.outputs["traces"])
    common.gpu_step(sft_task, "sft (KD)", gpu_type, pod_gpus["sft"], gpu_node_selector)
    # Accuracy, pass@k and tokens spent.
    evaluate_task = evaluate(config=cfg, output_uri=output_uri, model=sft_task.outputs["model"])
    common.gpu_step(evaluate_task, "evaluate", gpu_type, 1, gpu_node_selector)


whitebox.__doc__ = common.docstring(
    "White-box distillation: the teacher's top-k logprobs of every answer token, then KD (CE + KL) for the student."
)
pipeline = dsl.pipeline(
    name="whitebox",
    description="White-box distillation: distill (teacher top-k logprobs) -> sft (CE + KL to the teacher) -> evaluate.",
)(whitebox)
