"""``thoughtx``: adaptive thinking for Qwen2.5 students (DistilQwen-ThoughtX, OmniThought).

validate -> distill (several teachers) -> curate (RV/CD judging, curriculum mix with reasoning
verbosity matched to cognitive difficulty) -> sft (curriculum order) -> evaluate:

- **distill**: every teacher (``teacher_model`` lists them, comma-separated, e.g. DeepSeek-R1 and
  QwQ-32B) answers its share of the problems ``n`` times; each trace records its teacher;
- **curate**: the judge scores Reasoning Verbosity (RV 0-9), Cognitive Difficulty (CD 0-9) and logical
  soundness; answers are checked; rows are selected per CD bin closest to the RV target the student's
  size calls for (the preset: ``1.5b`` short chains, ``32b`` verbosity matched to difficulty) and
  written easiest bin first;
- **sft** trains in that order without shuffling (curriculum); **evaluate** reports accuracy and tokens.

Needs: one or more teacher models behind an OpenAI-compatible endpoint (key in a Kubernetes Secret), a
Qwen2.5 student, a problems JSONL with reference answers and an evaluation JSONL in object storage, GPU
nodes for sft and evaluate.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's types at decoration time.
from kfp import dsl

from distilflow.components.evaluate.component import evaluate
from distilflow.components.sft.component import sft
from distilflow.pipelines import (
    branches,  # noqa: F401 - its sub-pipeline is defined before the recipe is built
    common,
)
from distilflow.pipelines.common import data_file  # noqa: F401 - the SDK reads DEFAULT_CONFIG with it

NAME = "thoughtx"
STAGES = ["validate", "distill", "curate", "sft", "evaluate"]
DEFAULT_CONFIG = "thoughtx.yaml"


def thoughtx(
    output_uri: str = "s3://distilflow/runs/thoughtx",
    teacher_base_url: str = common.TEACHER_BASE_URL,
    teacher_model: str = "deepseek-r1,qwq-32b",
    teacher_key_secret: str = common.TEACHER_KEY_SECRET,
    student_model: str = "Qwen/Qwen2.5-7B-Instruct",
    problems_uri: str = common.PROBLEMS_URI,
    gpu_type: str = common.GPU_TYPE,
    gpu_count: int = 8,
    gpu_node_selector: dict = {},  # noqa: B006 - KFP reads the literal default
    preset: str = "7b-1node",
    overrides: str = "{}",
    config: dict = {},  # noqa: B006
    corpus_uri: str = "",
):
    # locals(): the console parameters above, as configure and validate read them.
    cfg, curated, pod_gpus = common.prepare_data(
        NAME, STAGES, locals(), distill_name="distill (teachers)", curate_name="curate (RV/CD)"
    )
    # Curriculum SFT: curate's order, easiest CD bin first, no shuffling.
    sft_task = sft(config=cfg, output_uri=output_uri, data=curated)
    common.gpu_step(sft_task, "sft (curriculum)", gpu_type, pod_gpus["sft"], gpu_node_selector)
    # Accuracy, pass@k and tokens spent.
    evaluate_task = evaluate(config=cfg, output_uri=output_uri, model=sft_task.outputs["model"])
    common.gpu_step(evaluate_task, "evaluate", gpu_type, 1, gpu_node_selector)


thoughtx.__doc__ = common.docstring(
    "ThoughtX: multi-teacher chains of thought, RV/CD-judged, mixed as a curriculum for a Qwen2.5 student.",
    common.CORPUS_ARG,
)
pipeline = dsl.pipeline(
    name="thoughtx",
    description="ThoughtX: multi-teacher distill -> RV/CD curate (curriculum, RV matched to CD) -> sft -> evaluate.",
)(thoughtx)
