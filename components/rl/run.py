"""The `rl` stage: GRPO on the student with a verifiable-correctness reward (TRL's ``GRPOTrainer``)."""

from __future__ import annotations

import tempfile
from typing import Any

from distilflow import records
from distilflow import uri as uris
from distilflow.answers import is_correct
from distilflow.components.rl.config import RlConfig, RlResult
from distilflow.errors import ConfigError
from distilflow.outputs import StageOutput

STAGE = "rl"


def completion_text(completion: Any) -> str:
    """The text of one completion: a plain string, or the content of a conversational completion."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content") or "") for message in completion)


def correctness(completions: list[Any], answer: list[str], domain: list[str | None], **_: Any) -> list[float]:
    """GRPO reward function: 1.0 when a completion states the reference answer, else 0.0.

    TRL passes the dataset's extra columns (``answer``, ``domain``) as lists aligned with
    ``completions``; answers are compared with ``distilflow.answers.is_correct`` (math-verify).
    """
    return [
        float(is_correct(completion_text(c), ref, dom))
        for c, ref, dom in zip(completions, answer, domain, strict=True)
    ]


def build_rows(
    problems: list[records.Problem], system_prompt: str | None
) -> tuple[list[dict[str, Any]], int]:
    """Conversational prompts with their reference answers, and how many problems had no answer."""
    rows = []
    skipped = 0
    for p in problems:
        if not p.answer:
            skipped += 1
            continue
        prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
        prompt.append({"role": "user", "content": p.problem})
        rows.append({"prompt": prompt, "answer": p.answer, "domain": p.domain})
    return rows, skipped


def run(config: RlConfig) -> RlResult:
    """Train the policy with GRPO on problems with reference answers; save it to ``<output_uri>/model``.

    Each step samples ``num_generations`` completions per problem with ``model.generate`` and rewards
    each with 1/0 for a correct final answer; a group's advantages are its rewards minus their mean.
    With ``beta > 0`` a frozen copy of the start model anchors the policy with a KL term.

    It does not use vLLM for generation, a reward model or a length term (later issues), or resume
    from a mid-training checkpoint (a rerun of a finished output returns the stored result).
    """
    out = StageOutput(config.output_uri, STAGE)
    stored = out.reusable(config)
    if stored is not None:
        print(f"[{STAGE}] reusing finished output {out.uri}", flush=True)
        return RlResult.model_validate(stored["result"])

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from distilflow import training
    from distilflow.models import load_tokenizer, resolve_model

    problems_file, _ = training.resolve_data(config.problems_uri, "problems.jsonl", "rl problems")
    problems = records.read_jsonl(problems_file, records.Problem)
    rows, skipped = build_rows(problems, config.system_prompt)
    if not rows:
        raise ConfigError(
            f"rl: none of the {len(problems)} problems in {problems_file} has a reference answer; "
            "the correctness reward needs an 'answer' on each problem"
        )
    out.begin(config)
    print(f"[{STAGE}] {len(rows)} problems, {skipped} skipped (no reference answer)", flush=True)

    model_path = resolve_model(config.model)
    tokenizer = load_tokenizer(model_path)
    args = training.training_arguments(
        GRPOConfig,
        config,
        tempfile.mkdtemp(prefix="distilflow-rl-"),
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.beta,
        use_vllm=False,
    )
    trainer = GRPOTrainer(
        model=model_path,
        reward_funcs=[correctness],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    training.quiet_trainer(trainer, STAGE)
    trainer.train()

    history = trainer.state.log_history
    first_reward, final_reward = training.first_last(training.logged(history, "reward"))
    first_loss, final_loss = training.first_last(training.logged(history, "loss"))
    result = RlResult(
        model_uri=uris.join(out.uri, "model"),
        first_reward=first_reward,
        final_reward=final_reward,
        first_loss=first_loss,
        final_loss=final_loss,
        steps=trainer.state.global_step,
        problems_used=len(rows),
        problems_skipped=skipped,
    )
    card = training.model_card(STAGE, config.model, problems_file, result.model_dump(), config.to_dict())
    training.save_trained(trainer, result.model_uri, card)
    out.finish(
        result=result.model_dump(),
        inputs={"problems": problems_file, "model": config.model},
        outputs={"model": result.model_uri},
        counts={"problems_read": len(problems), "problems_used": len(rows), "problems_skipped": skipped},
        metrics={
            "first_reward": first_reward,
            "final_reward": final_reward,
            "first_loss": first_loss,
            "final_loss": final_loss,
            "steps": result.steps,
        },
    )
    return result
