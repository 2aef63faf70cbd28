"""``thoughty``: adaptive thinking for Qwen3 students, thinking on and off (DistilQwen-ThoughtY).

validate -> distill (several teachers) -> curate (RV/CD, curriculum) -> both modes -> sft -> evaluate
with thinking on and with thinking off:

- as ``thoughtx`` up to curate;
- **both modes**: every curated example twice, with ``enable_thinking`` true (the chain of thought kept)
  and false (the sft stage drops the chain: the student learns to answer directly when asked to);
- **sft** on both, in curriculum order, with the Qwen3 chat template;
- **evaluate** twice: thinking on (``<output_uri>/evaluate``) and off (``<output_uri>/no-thinking/evaluate``),
  so accuracy and tokens spent can be compared per mode.

Needs: as ``thoughtx``, with a Qwen3 student (its chat template honours ``enable_thinking``).
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
from distilflow.pipelines.steps import both_modes, variant

NAME = "thoughty"
STAGES = ["validate", "distill", "curate", "sft", "evaluate"]
DEFAULT_CONFIG = "thoughty.yaml"


def thoughty(
    output_uri: str = "s3://distilflow/runs/thoughty",
    teacher_base_url: str = common.TEACHER_BASE_URL,
    teacher_model: str = "deepseek-r1,qwq-32b",
    teacher_key_secret: str = common.TEACHER_KEY_SECRET,
    student_model: str = "Qwen/Qwen3-8B",
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
    # Every example with thinking on and off.
    modes_task = both_modes(output_uri=output_uri, curated=curated)
    common.cpu_step(modes_task, "thinking on + off")
    # Curriculum SFT on both modes.
    sft_task = sft(config=cfg, output_uri=output_uri, data=modes_task.outputs["examples"])
    common.gpu_step(sft_task, "sft (both modes)", gpu_type, pod_gpus["sft"], gpu_node_selector)
    # Evaluate with thinking on ...
    evaluate_task = evaluate(config=cfg, output_uri=output_uri, model=sft_task.outputs["model"])
    common.gpu_step(evaluate_task, "evaluate (thinking)", gpu_type, 1, gpu_node_selector)
    # ... and off, in its own folder.
    off_task = variant(
        config=cfg, output_uri=output_uri, name="no-thinking", patch={"evaluate": {"enable_thinking": False}}
    )
    common.cpu_step(off_task, "thinking off", cache=True)
    evaluate_off_task = evaluate(
        config=off_task.outputs["config"],
        output_uri=off_task.outputs["output_uri"],
        model=sft_task.outputs["model"],
    )
    common.gpu_step(evaluate_off_task, "evaluate (no thinking)", gpu_type, 1, gpu_node_selector)


thoughty.__doc__ = common.docstring(
    "ThoughtY: thoughtx for Qwen3 students, trained and evaluated with thinking on and off.",
    common.CORPUS_ARG,
)
pipeline = dsl.pipeline(
    name="thoughty",
    description="ThoughtY: multi-teacher distill -> RV/CD curate -> examples with thinking on/off -> sft -> "
    "evaluate in both modes.",
)(thoughty)
