"""The `rl` stage: GRPO on the student with named, weighted reward terms (TRL's ``GRPOTrainer``)."""

from __future__ import annotations

import json
import os
from typing import Any

from distilflow import records, tracking
from distilflow import uri as uris
from distilflow.components.rl.config import RlConfig, RlResult
from distilflow.components.rl.rewards import correctness
from distilflow.errors import ConfigError, IncompleteOutputError
from distilflow.outputs import MARKER, StageOutput, require_complete

STAGE = "rl"

REPORT_KEYS = ("reward", "accuracy", "kl", "completions/mean_length", "loss", "learning_rate")


def normalise_problem(text: str) -> str:
    return " ".join(text.split()).lower()


def problem_cds(difficulty_uri: str) -> tuple[dict[str, float], dict[str, float]]:
    """Each problem's CD (mean over its judged traces) by problem id and by normalised problem text."""
    sums: dict[str, list[float]] = {}
    texts: dict[str, list[float]] = {}
    for row in records.iter_output_rows(difficulty_uri, "scored", records.Scored, unique_ids=False):
        sums.setdefault(row.problem_id, []).append(row.cd)
        texts.setdefault(normalise_problem(row.problem), []).append(row.cd)

    def mean(found: dict[str, list[float]]) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in found.items()}

    return mean(sums), mean(texts)


def build_rows(
    problems: list[records.Problem],
    system_prompt: str | None,
    cds: tuple[dict[str, float], dict[str, float]] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Conversational prompts with their reference answers and CD (None when unknown), and how many
    problems had no answer."""
    by_id, by_text = cds or ({}, {})
    rows = []
    skipped = 0
    for p in problems:
        if not p.answer:
            skipped += 1
            continue
        prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
        prompt.append({"role": "user", "content": p.problem})
        cd = by_id.get(p.id, by_text.get(normalise_problem(p.problem)))
        rows.append({"prompt": prompt, "answer": p.answer, "domain": p.domain, "cd": cd})
    return rows, skipped


def resolve_reward_model(uri: str) -> tuple[str, dict[str, float]]:
    """The reward model folder and its score statistics, from the reward stage's output or a model folder.

    A reward stage output must be complete: the stage writes its marker only after its calibration gate
    passed, so RL never starts on a reward model that failed it.
    """
    if uris.exists(uris.join(uri, "config.json")) and not uris.exists(uris.join(uri, MARKER)):
        print(
            f"[{STAGE}] reward model {uri} is a plain model folder: no calibration gate vouches for it",
            flush=True,
        )
        return uri, {}
    if not uris.exists(uris.join(uri, MARKER)) and uris.exists(uris.join(uri, "model")):
        raise IncompleteOutputError(
            f"rl reward model: {uri} has no completion marker ({MARKER}): the reward stage did not finish or its "
            "calibration gate failed (see its report.html and log). Retrain the reward model before RL"
        )
    manifest = require_complete(uri, "rl reward model")
    result = manifest.get("result") or {}
    stats = {k: result[k] for k in ("score_mean", "score_std") if result.get(k) is not None}
    return result.get("model_uri") or uris.join(uri, "model"), stats


def rollout_engine(config: RlConfig) -> str:
    """``vllm`` or ``transformers``, as ``config.rollouts`` asks and this machine allows."""
    import importlib.util

    from distilflow.training.arguments import on_gpu

    if config.rollouts == "transformers":
        return "transformers"
    gpu = on_gpu()
    has_vllm = importlib.util.find_spec("vllm") is not None
    if config.rollouts == "vllm":
        if not gpu:
            raise ConfigError(
                "rl.rollouts=vllm needs a CUDA GPU (TRL's vLLM rollouts do not run on a CPU); set "
                "rl.rollouts=transformers or auto"
            )
        if not has_vllm:
            raise ConfigError(
                "rl.rollouts=vllm needs the vllm package in the stage image (pip install 'distilflow[vllm]'); "
                "or set rl.rollouts=transformers"
            )
        return "vllm"
    return "vllm" if gpu and has_vllm else "transformers"


def reward_functions(config: RlConfig, reward_model: tuple[str, dict[str, float]] | None) -> list[Any]:
    """The reward functions in the order of ``config.weights()``."""
    from distilflow.components.rl import rewards

    funcs: list[Any] = []
    for name in config.weights():
        if name == "correctness":
            funcs.append(correctness)
        elif name == "format":
            funcs.append(rewards.format_reward)
        elif name == "length":
            top = config.length_budget_max or config.max_completion_length
            funcs.append(
                rewards.LengthReward(config.length_budget_min, top, config.length_slack, config.default_cd)
            )
        elif name == "reward_model":
            assert reward_model is not None
            funcs.append(load_reward_model(*reward_model, normalize=config.reward_model_normalize))
    return funcs


def load_reward_model(path: str, stats: dict[str, float], normalize: bool) -> Any:
    """The ``reward_model`` term: the reward model on this process's device (bf16 on a GPU)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from distilflow.components.rl.rewards import RewardModelScore
    from distilflow.models import load_tokenizer, resolve_model

    local = resolve_model(path)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if gpu else torch.device("cpu")
    model = AutoModelForSequenceClassification.from_pretrained(
        local, num_labels=1, dtype=torch.bfloat16 if gpu else torch.float32
    ).to(device)
    tokenizer = load_tokenizer(local)
    model.config.pad_token_id = tokenizer.pad_token_id
    if normalize and not stats:
        print(f"[{STAGE}] reward model {path} carries no score statistics; standardising with mean 0, std 1")
    return RewardModelScore(
        model, tokenizer, stats.get("score_mean", 0.0), stats.get("score_std", 1.0), normalize=normalize
    )


def make_trainer(
    config: RlConfig,
    rows: list[dict[str, Any]],
    model_path: str,
    tokenizer: Any,
    funcs: list[Any],
    engine: str,
    scratch: str,
) -> Any:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from distilflow.training.arguments import lora_config, on_gpu, training_arguments
    from distilflow.training.callbacks import quiet_trainer
    from distilflow.training.kernels import liger_arguments

    vllm: dict[str, Any] = {"use_vllm": engine == "vllm"}
    if engine == "vllm":
        vllm.update(vllm_mode=config.vllm_mode)
        if config.vllm_mode == "server":
            vllm.update(vllm_server_base_url=config.vllm_server_base_url)
        else:
            vllm.update(
                vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
                vllm_tensor_parallel_size=config.vllm_tensor_parallel_size,
            )
    args = training_arguments(
        GRPOConfig,
        config,
        scratch,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.beta,
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        reward_weights=list(config.weights().values()),
        # prompts need no collation worth a worker process, and none is forked beside vLLM's engine
        dataloader_num_workers=0,
        dataloader_persistent_workers=False,
        dataloader_prefetch_factor=None,
        **liger_arguments(config.use_liger_kernel, model_path, STAGE, on_gpu()),
        **vllm,
    )
    peft_config = lora_config(config)
    trainer = GRPOTrainer(
        model=model_path,
        reward_funcs=funcs,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    return quiet_trainer(trainer, STAGE)


def run(config: RlConfig) -> RlResult:
    """Train the policy with GRPO on problems with reference answers; save it to ``<output_uri>/model``.

    Each step samples ``num_generations`` completions per problem (vLLM on a GPU, colocated or a
    ``trl vllm-serve`` server; ``model.generate`` otherwise), scores each with the weighted terms of
    ``rewards`` (see ``distilflow.components.rl.rewards``: correctness, reward_model, format, length),
    and forms group-relative advantages; the clipped policy-ratio loss (``epsilon``) is anchored to the
    start model by a KL term when ``beta > 0``. Every term is logged on its own
    (``rewards/<term>/mean``) besides the total, the accuracy, the KL and the completion length; their
    curves go to ``<output_uri>/report.html``.

    The reward model must come from a finished reward stage (its calibration gate passed). Checkpoints,
    resume and multi-GPU self-launch (torchrun, DeepSpeed ZeRO) work as in the sft stage. It does not
    train on problems without a reference answer, or run multi-turn/tool rollouts.
    """
    from distilflow.launch import dispatch, torchrun

    # many nodes: a TrainJob or a PAI-DLC job trains, this process waits for its result
    launched = dispatch(STAGE, config)
    if launched is not None:
        return RlResult.model_validate(launched)
    out = StageOutput(config.output_uri, STAGE)
    stored = out.reusable(config)
    if stored is not None:
        print(f"[{STAGE}] reusing finished output {out.uri}", flush=True)
        return RlResult.model_validate(stored["result"])

    problems_file, problems = read_problems(config.problems_uri)
    # checked before any process starts: RL never begins on a reward model that failed its gate
    reward_model = (
        resolve_reward_model(config.reward_model_uri) if "reward_model" in config.weights() else None
    )
    cds = problem_cds(config.difficulty_uri) if config.difficulty_uri else None
    rows, skipped = build_rows(problems, config.system_prompt, cds)
    if not rows:
        raise ConfigError(
            f"rl: none of the {len(problems)} problems in {problems_file} has a reference answer; "
            "the correctness reward needs an 'answer' on each problem"
        )
    if torchrun.needs_launch(config):  # several GPUs: one process each, under torchrun
        return RlResult.model_validate(torchrun.launch(STAGE, config))
    was_complete = out.is_complete()
    out.begin(config)
    with_cd = sum(row["cd"] is not None for row in rows)
    print(
        f"[{STAGE}] {len(rows)} problems ({with_cd} with a judged CD), {skipped} skipped (no reference answer); "
        f"rewards {config.weights()}",
        flush=True,
    )
    with tracking.training_run(config, STAGE, out.uri):  # MLflow / TensorBoard / W&B, when asked for
        return train(config, out, problems_file, problems, rows, reward_model, was_complete)


def read_problems(source: Any) -> tuple[str, list[records.Problem]]:
    """The problems file (for messages and the manifest) and its problems: a source mapping, a
    .jsonl/.parquet file, or a finished stage output holding problems.jsonl."""
    from distilflow.sources import SourceSpec, read_records
    from distilflow.training.data import resolve_data

    if isinstance(source, SourceSpec):
        return source.uri, read_records(source, records.Problem)
    problems_file, _ = resolve_data(source, "problems.jsonl", "rl problems")
    return problems_file, read_records(problems_file, records.Problem)


def train(
    config: RlConfig,
    out: StageOutput,
    problems_file: str,
    problems: list[records.Problem],
    rows: list[dict[str, Any]],
    reward_model: tuple[str, dict[str, float]] | None,
    was_complete: bool,
) -> RlResult:
    """The training part of ``run`` (heavy imports live here)."""
    from distilflow.models import load_tokenizer, resolve_model
    from distilflow.training.checkpointing import scratch_dir, train_resumable
    from distilflow.training.report import first_last, logged, write_report
    from distilflow.training.save import model_card, save_trained

    model_path = resolve_model(config.model)
    tokenizer = load_tokenizer(model_path)
    engine = rollout_engine(config)
    funcs = reward_functions(config, reward_model)
    trainer = make_trainer(config, rows, model_path, tokenizer, funcs, engine, scratch_dir(STAGE, out.uri))
    start_step = train_resumable(trainer, out.uri, config, STAGE, was_complete)

    history = trainer.state.log_history
    weights = config.weights()

    def ends(key: str) -> tuple[float | None, float | None]:
        return first_last(logged(history, key))

    terms = {name: ends(f"rewards/{name}/mean")[1] for name in weights}
    result = RlResult(
        model_uri=uris.join(out.uri, "model"),
        first_reward=ends("reward")[0],
        final_reward=ends("reward")[1],
        first_loss=ends("loss")[0],
        final_loss=ends("loss")[1],
        steps=trainer.state.global_step,
        problems_read=len(problems),
        problems_used=len(rows),
        problems_skipped=len(problems) - len(rows),
        first_accuracy=ends("accuracy")[0],
        final_accuracy=ends("accuracy")[1],
        final_terms={k: v for k, v in terms.items() if v is not None},
        weights=weights,
        final_kl=ends("kl")[1],
        final_completion_length=ends("completions/mean_length")[1],
        problems_with_cd=sum(row["cd"] is not None for row in rows),
        rollouts=engine,
        resumed_from_step=start_step or None,
        seed=config.seed,
    )
    card = model_card(STAGE, config.model, problems_file, result.model_dump(), config.to_dict())
    save_trained(trainer, result.model_uri, card)
    keys = (*REPORT_KEYS[:2], *(f"rewards/{n}/mean" for n in weights), *REPORT_KEYS[2:])
    summary = {**result.model_dump(), "weights": json.dumps(weights)}
    report = write_report(out.uri, STAGE, history, keys, summary)
    inputs = {"problems": problems_file, "model": config.model}
    if reward_model is not None:
        inputs["reward_model"] = reward_model[0]
    if config.difficulty_uri:
        inputs["difficulty"] = config.difficulty_uri
    outputs = {"model": result.model_uri, "report": report, **tracking.published(result)}
    out.finish(result, inputs=inputs, outputs=outputs)
    return result
