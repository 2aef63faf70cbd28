"""sft with ``kd``: white-box distillation from the teacher logits distill stored.

Each row of distill's ``logits/`` Parquet shards becomes one training example: the prompt rendered
by the student's chat template (with the generation prompt), then the teacher's answer tokens as
they are (same vocabulary: checked against the teacher's fingerprint), with the teacher's top-k at
every answer position riding along in the batch. The loss (``kd_loss``) is taken on the answer
tokens only. Rows are streamed from the shards into an on-disk ``datasets`` table (memory: one
shard), so the logits of a large run never sit in memory at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from distilflow.components.sft.config import SftConfig
from distilflow.errors import ConfigError

STAGE = "sft"


def logits_source(data_uri: str) -> Any:
    """The ``LogitsSummary`` of the distill output ``data_uri`` (its marker required)."""
    from distilflow.components.distill.logits import read_summary
    from distilflow.errors import DistilflowError
    from distilflow.outputs import require_complete

    manifest = require_complete(data_uri, "sft.kd data")
    try:
        return read_summary(manifest, f"sft.kd: data_uri {data_uri}")
    except DistilflowError as exc:
        raise ConfigError(str(exc)) from None


def check_vocabulary(tokenizer: Any, teacher: dict[str, Any], student: str, where: str) -> None:
    """Refuse a student whose tokenizer's vocabulary is not the teacher's (``teacher``: its
    ``vocab_fingerprint``): token ids would mean different tokens. Cross-tokenizer distillation
    (aligning two vocabularies) is not supported yet."""
    from distilflow.teachers.logprobs import vocab_fingerprint

    found = vocab_fingerprint(tokenizer)
    if found["fingerprint"] != teacher["fingerprint"]:
        raise ConfigError(
            f"{where}: the student {student} has another vocabulary than the teacher (student tokenizer "
            f"{found['fingerprint']}, {found['vocab_size']} tokens; teacher {teacher['fingerprint']}, "
            f"{teacher['vocab_size']} tokens): white-box distillation needs the same tokenizer, since the "
            "teacher's logprobs are indexed by its token ids. Use a student of the teacher's family, or plain "
            "sft on the traces (cross-tokenizer distillation is a later step)"
        )


def _rows(files: list[str], tokenizer: Any, max_length: int, vocab: int) -> Any:
    """Training rows from the Parquet shards (a generator for ``Dataset.from_generator``): the
    student's prompt ids then the answer ids; top-k entries outside the student's logits (ids >=
    ``vocab``) are dropped (their mass joins the tail)."""
    import numpy as np

    from distilflow.components.distill.logits import iter_rows

    for uri in files:
        for row in iter_rows(uri):
            prompt = tokenizer.apply_chat_template(json.loads(row["prompt"]), add_generation_prompt=True)
            prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
            if len(prompt) + len(row["ids"]) > max_length or not len(row["ids"]):
                continue
            top_ids, top_lps = row["top_ids"], row["top_logprobs"]
            outside = top_ids >= vocab
            top_lps = np.where(outside, -np.inf, top_lps).astype(np.float32)
            top_ids = np.where(outside, 0, top_ids)
            yield {
                "id": row["id"],
                "input_ids": prompt + row["ids"].tolist(),
                "prompt_len": len(prompt),
                "top_ids": top_ids.reshape(-1).astype(np.int32),
                "top_logprobs": top_lps.reshape(-1),
            }


def kd_dataset(summary: Any, tokenizer: Any, config: SftConfig, vocab: int, scratch: str) -> Any:
    """The training rows as a ``datasets.Dataset`` cached under ``scratch`` (arrow on disk)."""
    from datasets import Dataset

    return Dataset.from_generator(
        _rows,
        gen_kwargs={
            "files": summary.files,
            "tokenizer": tokenizer,
            "max_length": config.max_length,
            "vocab": vocab,
        },
        cache_dir=os.path.join(scratch, "kd-rows"),
    )


@dataclass
class KdCollator:
    """Pads a batch of KD rows: ``input_ids``, ``attention_mask``, ``labels`` (-100 on the prompt and
    padding) and the teacher's ``top_ids``/``top_logprobs`` as ``(B, L, k)``, aligned with ``labels``
    (position ``j`` holds the distribution that predicted token ``j``; ``-inf`` elsewhere)."""

    pad_token_id: int
    k: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        top_ids = torch.zeros((len(rows), width, self.k), dtype=torch.long)
        top_lps = torch.full((len(rows), width, self.k), float("-inf"), dtype=torch.float32)
        for i, row in enumerate(rows):
            n, start = len(row["input_ids"]), row["prompt_len"]
            ids[i, :n] = torch.tensor(row["input_ids"])
            mask[i, :n] = 1
            labels[i, start:n] = ids[i, start:n]
            top_ids[i, start:n] = torch.tensor(row["top_ids"]).view(n - start, self.k)
            top_lps[i, start:n] = torch.tensor(row["top_logprobs"], dtype=torch.float32).view(
                n - start, self.k
            )
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "top_ids": top_ids,
            "top_logprobs": top_lps,
        }


def trainer_class() -> type:
    """TRL's ``SFTTrainer`` with the KD loss (``kd_loss.kd_terms``) in place of its own.

    The loss is the CE and divergence sums over the answer positions divided by the positions of the
    whole accumulated batch (``num_items_in_batch``, as transformers' own causal-LM loss), so gradient
    accumulation weighs every token alike; both terms are logged (``ce``, ``divergence``), kept on the
    device until the trainer logs (``DeviceMeans``).
    """
    from trl import SFTTrainer

    from distilflow.components.sft.kd_loss import kd_terms
    from distilflow.training.lean import DeviceMeans

    class KdTrainer(SFTTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.device_means = DeviceMeans()

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if self.model.training:
                gather = self.accelerator.gather if self.accelerator.num_processes > 1 else None
                logs.update(self.device_means.pop(gather))
            super().log(logs, start_time)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            settings = self.kd_settings
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            terms = kd_terms(
                outputs.logits,
                inputs["labels"],
                inputs["top_ids"],
                inputs["top_logprobs"],
                settings,
                skip_kd=settings.alpha == 0,
            )
            count = num_items_in_batch if num_items_in_batch is not None else max(terms.positions, 1)
            loss = ((1 - settings.alpha) * terms.ce + settings.alpha * terms.kd) / count
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # num_items_in_batch counts every device
            if model.training:
                positions = max(terms.positions, 1)
                self.device_means.add("ce", terms.ce / positions)
                self.device_means.add("divergence", terms.kd / positions)
            return (loss, outputs) if return_outputs else loss

    return KdTrainer


def make_kd_trainer(config: SftConfig, tokenizer: Any, model_path: str, scratch: str) -> tuple[Any, int, int]:
    """The KD trainer over distill's logits at ``config.data_uri``; also (rows read, rows dropped for
    exceeding ``max_length``). Refuses a student of another vocabulary before loading anything else."""
    from transformers import AutoConfig
    from trl import SFTConfig

    from distilflow.training.arguments import lora_config, training_arguments
    from distilflow.training.callbacks import quiet_trainer
    from distilflow.training.throughput import count_tokens

    summary = logits_source(config.data_uri)
    teacher = {"fingerprint": summary.tokenizer_fingerprint, "vocab_size": summary.vocab_size}
    check_vocabulary(tokenizer, teacher, config.model, "sft.kd")
    vocab = AutoConfig.from_pretrained(model_path).get_text_config().vocab_size
    dataset = kd_dataset(summary, tokenizer, config, vocab, scratch)
    dropped = summary.rows - len(dataset)
    print(
        f"[{STAGE}] kd: {len(dataset)} teacher answers with top-{summary.top_k} logprobs, {dropped} dropped "
        f"(> {config.max_length} tokens); {config.kd.divergence}, alpha={config.kd.alpha}, "  # type: ignore[union-attr]
        f"T={config.kd.temperature}, tail={config.kd.tail}",  # type: ignore[union-attr]
        flush=True,
    )
    if not len(dataset):
        raise ConfigError(
            f"sft.kd: all {summary.rows} rows of {config.data_uri} are longer than max_length={config.max_length} "
            "tokens; raise sft.max_length"
        )
    args = training_arguments(
        SFTConfig,
        config,
        scratch,
        max_length=None,
        packing=False,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    trainer = trainer_class()(
        model=model_path,
        args=args,
        train_dataset=dataset,
        data_collator=KdCollator(tokenizer.pad_token_id, summary.top_k),
        processing_class=tokenizer,
        peft_config=lora_config(config),
    )
    trainer.kd_settings = config.kd
    count_tokens(trainer, STAGE)
    return quiet_trainer(trainer, STAGE), summary.rows, dropped
