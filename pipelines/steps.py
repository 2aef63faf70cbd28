"""Small pipeline-level components the recipes share (none is a stage; all run in the ``base`` image).

- ``configure``: the run's whole config from the recipe defaults, the preset, the top-level
  parameters, ``config`` and the ``overrides`` JSON (see ``params.py``); every stage reads its output.
  It also says how many GPUs each training stage's own pod requests (``pod_gpus``).
- ``variant``: the same config with a patch, and a sub-folder of the run for the stages that run
  again with it (e.g. evaluation with thinking off), so the two runs of a stage do not share a folder.
- ``both_modes``: curate's SFT examples with thinking on and off (Qwen3 students).
- ``same_model``: a model handed on unchanged, the branch of a stage switched off.
"""

# No `from __future__ import annotations`: KFP reads the real annotation objects.
from typing import NamedTuple

from kfp import dsl

from distilflow.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def configure(
    recipe: str,
    stages: list,
    preset: str,
    config: dict,
    overrides: str,
    teacher_base_url: str,
    teacher_model: str,
    student_model: str,
    problems_uri: str,
    gpu_count: int = 0,
    with_dpo: bool = True,
    with_rl: bool = True,
    with_deploy: bool = True,
    corpus_uri: str = "",
    pipeline_run: str = "",
) -> NamedTuple(
    "Configured", config=dict, stages=list, sft_gpus=int, dpo_gpus=int, reward_gpus=int, rl_gpus=int
):
    """The run's config: recipe defaults < preset < top-level parameters < config < overrides, for the
    stages that run (``lifecycle``'s switches turn some off, a ``corpus_uri`` distill); those stages; and the GPUs of each
    training stage's pod (``pod_gpus``: none when it only follows a multi-node job). ``pipeline_run`` (the
    KFP run's name) names the tracked runs (``tracking.pipeline_run``)."""
    import json

    from distilflow.pipelines.params import pod_gpus, resolve_config, running_stages, with_pipeline_run

    running = running_stages(
        stages, corpus_uri=corpus_uri, with_dpo=with_dpo, with_rl=with_rl, with_deploy=with_deploy
    )
    resolved = resolve_config(
        recipe,
        running,
        preset=preset,
        config=config,
        overrides=overrides,
        teacher_base_url=teacher_base_url,
        teacher_model=teacher_model,
        student_model=student_model,
        problems_uri=problems_uri,
        corpus_uri=corpus_uri,
    )
    resolved = with_pipeline_run(resolved, pipeline_run)  # tracked runs are named <pipeline run>/<stage>
    print(f"[configure] {recipe} (preset {preset or 'none'}):\n{json.dumps(resolved, indent=2)}", flush=True)
    gpus = [pod_gpus(resolved, stage, gpu_count) for stage in ("sft", "dpo", "reward", "rl")]
    return (resolved, running, *gpus)  # in the order of the outputs


@dsl.component(base_image=image("base"), install_kfp_package=False)
def variant(config: dict, output_uri: str, name: str, patch: dict) -> NamedTuple(
    "Variant", config=dict, output_uri=str
):
    """``config`` with ``patch`` merged in, and ``<output_uri>/<name>`` for the stages that run with it."""
    from distilflow import uri
    from distilflow.config import deep_merge

    return deep_merge(config, patch), uri.join(output_uri, name)  # in the order of the outputs


@dsl.component(base_image=image("base"), install_kfp_package=False)
def both_modes(
    output_uri: str,
    curated: dsl.Input[dsl.Dataset],
    examples: dsl.Output[dsl.Dataset],
):
    """Write ``<output_uri>/modes/sft.jsonl``: every curated SFT example twice, with thinking on
    (reasoning kept) and off (id suffixed ``#no_think``; sft drops its reasoning), in curate's order
    (a curriculum stays a curriculum: both copies sit in the example's curriculum stage)."""
    from distilflow import artifacts, records
    from distilflow import uri as uris
    from distilflow.outputs import StageOutput

    folder = artifacts.consume(curated, "both_modes curated")
    rows = list(records.iter_output_rows(folder, "sft", records.SftExample))  # shards or sft.jsonl
    if not rows:
        raise records.RecordError(f"both_modes: {folder} holds no sft rows; curate kept no trace")
    out = StageOutput(uris.join(output_uri, "modes"), "modes")
    both = []
    for row in rows:
        both.append(row.model_copy(update={"enable_thinking": True}))
        both.append(row.model_copy(update={"id": row.id + "#no_think", "enable_thinking": False}))
    records.write_jsonl(out.path("sft.jsonl"), both)
    out.finish(result={}, inputs={"curated": folder}, counts={"sft": len(both), "thinking": len(rows)})
    artifacts.publish(examples, uri=out.uri, stage_uri=out.uri, kept=len(both))
    print(f"[both_modes] {len(rows)} examples -> {len(both)} (thinking on and off) in {out.uri}", flush=True)


@dsl.component(base_image=image("base"), install_kfp_package=False)
def same_model(model: dsl.Input[dsl.Model], passed: dsl.Output[dsl.Model]):
    """Hand ``model`` on unchanged: the branch of a skipped stage, so ``dsl.OneOf`` has an output."""
    from distilflow import artifacts

    artifacts.publish(
        passed, uri=artifacts.consume(model, "same_model"), stage_uri=model.metadata["stage_uri"]
    )
