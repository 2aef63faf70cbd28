"""The one instruction the student is asked with, wherever a stage prompts it.

SFT examples (curate's ``sft`` rows and its preference pairs), RL prompts and evaluation put the same
words in the same place: the user turn is the problem followed by ``STUDENT_INSTRUCTION``, the math
prompt of the DeepSeek-R1 and DistilQwen evaluation tables (DeepSeek-R1's usage notes: no system
prompt, every instruction in the user turn). A student trained on rows asked one way and evaluated
another way is measured on a prompt it never saw; one constant keeps the three in step, and every
stage that prompts the student records the template it used in its manifest (``student_prompt``).

Benchmarks with an official prompt of their own (GPQA's simple-evals format, LiveCodeBench's) keep it:
this is the math and default prompt.
"""

from __future__ import annotations

STUDENT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
PLACEHOLDER = "{{problem}}"
STUDENT_PROMPT = PLACEHOLDER + "\n" + STUDENT_INSTRUCTION
"""The user message the student is asked with; ``{{problem}}`` is replaced by the problem text."""


def check_template(template: str) -> str:
    """``template`` if it holds ``{{problem}}``; a ValueError naming it otherwise."""
    if PLACEHOLDER not in template:
        raise ValueError(f"prompt template must contain {PLACEHOLDER}, got {template!r}")
    return template


def render(problem: str, template: str = STUDENT_PROMPT) -> str:
    """The user message of ``problem`` under ``template``."""
    return check_template(template).replace(PLACEHOLDER, problem)


def student_messages(
    problem: str, template: str = STUDENT_PROMPT, system_prompt: str | None = None
) -> list[dict[str, str]]:
    """The chat the student is asked ``problem`` with: an optional system message, then the user turn."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + [{"role": "user", "content": render(problem, template)}]


def recorded_prompt(output_uri: str) -> str | None:
    """The student prompt a finished stage output recorded in its manifest (``student_prompt``); None
    for a ``.jsonl`` file, a folder without a manifest, or an output that recorded none."""
    import json

    from distilflow import uri as uris
    from distilflow.outputs import MANIFEST

    if output_uri.rstrip("/").endswith(".jsonl"):
        return None
    path = uris.join(output_uri, MANIFEST)
    if not uris.exists(path):
        return None
    return json.loads(uris.read_text(path)).get("student_prompt")
