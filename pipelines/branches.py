"""Sub-pipelines a recipe branches into: ``dsl.If`` runs one of them when a pipeline parameter says so.

A branch is a sub-pipeline (not a few tasks inside ``dsl.If``) because kfp 2.17's compiler does not
hand a pipeline parameter used in a task's kfp-kubernetes settings (the teacher's Secret) or its
accelerator settings into a branch, but does hand on a sub-pipeline's ordinary inputs (see
``lifecycle``'s GPU sub-pipelines).
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's types at decoration time.
from kfp import dsl

from distilflow.components.curate.component import curate
from distilflow.components.distill.component import distill
from distilflow.pipelines.common import cpu_step


@dsl.pipeline(name="distill-and-judge", description="distill (teachers) -> curate (RV/CD judge).")
def distill_and_judge(config: dict, output_uri: str, teacher_key_secret: str) -> dsl.Dataset:
    # Teacher chains of thought (every teacher in teacher_model); distill's request cache makes reruns free.
    distill_task = cpu_step(
        distill(config=config, output_uri=output_uri), "distill (teachers)", teacher_key_secret
    )
    # Judge RV/CD/logic, verify answers, select (curriculum mix), build preference pairs.
    curate_task = curate(config=config, output_uri=output_uri, traces=distill_task.outputs["traces"])
    cpu_step(curate_task, "curate (RV/CD)", teacher_key_secret)
    return curate_task.outputs["curated"]
