"""sft with ``gkd``: on-policy distillation (GKD, Agarwal et al. 2024, "On-Policy Distillation of
Language Models: Learning from Self-Generated Mistakes") on TRL's ``GKDTrainer``.

With probability ``lmbda`` a batch's answers are sampled from the student itself (``model.generate``
inside the trainer), otherwise the data's own answers are used; either way the student learns the
teacher's token distribution on those tokens (generalized JSD, ``beta``). The teacher is either

- in-process (``backend: transformers``): TRL's ``GKDTrainer`` as it is, full-vocabulary logits; or
- served (``backend: openai``): a vLLM server scores each batch's tokens through ``/v1/completions``
  with ``prompt_logprobs=top_k`` (``OpenAITeacher.score``), and the divergence is taken over the
  teacher's top-k and the tail (``kd_loss.generalized_jsd``); nothing of the teacher is loaded here.

Either way the student must share the teacher's vocabulary (fingerprints compared before training).
"""

from __future__ import annotations

from typing import Any

from distilflow.components.sft.config import SftConfig

STAGE = "sft"


def check_teacher_vocabulary(config: SftConfig, tokenizer: Any) -> None:
    """Refuse a teacher whose tokenizer's vocabulary is not the student's (``tokenizer``, else the
    teacher's model folder)."""
    from distilflow.components.sft.kd import check_vocabulary
    from distilflow.models import load_tokenizer
    from distilflow.teachers.logprobs import vocab_fingerprint

    teacher = config.gkd.teacher  # type: ignore[union-attr]
    found = vocab_fingerprint(load_tokenizer(teacher.tokenizer or teacher.model, need_chat_template=False))
    check_vocabulary(tokenizer, found, config.model, "sft.gkd")


def gkd_arguments(config: SftConfig, scratch: str) -> Any:
    """TRL's ``GKDConfig`` from the stage config (lmbda, beta, temperature, max_new_tokens)."""
    from trl.experimental.gkd import GKDConfig

    from distilflow.training.arguments import training_arguments

    gkd = config.gkd
    return training_arguments(
        GKDConfig,
        config,
        scratch,
        max_length=config.max_length,
        packing=False,
        lmbda=gkd.lmbda,  # type: ignore[union-attr]
        beta=gkd.beta,  # type: ignore[union-attr]
        temperature=gkd.temperature,  # type: ignore[union-attr]
        max_new_tokens=gkd.max_new_tokens,  # type: ignore[union-attr]
        teacher_model_init_kwargs={"dtype": "float32"},
    )


def served_trainer_class() -> type:
    """``GKDTrainer`` whose teacher is a vLLM server: TRL's on-policy sampling (``training_step``) as
    it is; no teacher model is loaded, and the loss asks the server for the teacher's top-k on each
    batch's tokens."""
    from transformers import GenerationConfig
    from trl import SFTTrainer
    from trl.experimental.gkd import GKDTrainer
    from trl.experimental.utils import DataCollatorForChatML

    class ServedGKDTrainer(GKDTrainer):
        def __init__(self, teacher: Any, top_k: int, **kwargs: Any):
            args, tokenizer = kwargs["args"], kwargs["processing_class"]
            # what GKDTrainer sets up, less loading a local teacher
            args.remove_unused_columns = False
            args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
            kwargs.setdefault(
                "data_collator", DataCollatorForChatML(tokenizer=tokenizer, max_length=args.max_length)
            )
            SFTTrainer.__init__(self, **kwargs)
            self.teacher, self.top_k, self.teacher_model = teacher, top_k, None
            self.lmbda, self.beta, self.temperature, self.seq_kd = (
                args.lmbda,
                args.beta,
                args.temperature,
                False,
            )
            self.generation_kwargs = {
                "max_new_tokens": args.max_new_tokens,
                "temperature": args.temperature,
                "do_sample": True,
                "top_k": 0,
                "top_p": 1.0,
                "use_cache": not args.gradient_checkpointing,
                "pad_token_id": tokenizer.pad_token_id,
            }
            self.generation_config = GenerationConfig(**self.generation_kwargs)
            eos = getattr(self.model.generation_config, "eos_token_id", None)
            if eos is not None:
                self.generation_config.eos_token_id = eos

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            from distilflow.components.sft.kd_loss import generalized_jsd

            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            top_ids, top_lps = teacher_topk(self.teacher, inputs, self.top_k)
            mask = inputs["labels"][:, 1:] != -100
            found = generalized_jsd(
                outputs.logits[:, :-1][mask], top_ids[:, 1:][mask], top_lps[:, 1:][mask], self.beta
            ).sum()
            count = num_items_in_batch if num_items_in_batch is not None else max(int(mask.sum()), 1)
            loss = found / count
            return (loss, outputs) if return_outputs else loss

    return ServedGKDTrainer


def teacher_topk(teacher: Any, inputs: dict[str, Any], k: int) -> tuple[Any, Any]:
    """The served teacher's top-k at every answer token of a batch, as ``(B, L, k)`` ids and logprobs
    aligned with ``labels`` (``-inf`` where there is no answer token). Each row's real tokens (its
    attention mask) go to the server as one sequence: the prompt, then the answer to score."""
    import torch

    ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    b, width = ids.shape
    top_ids = torch.zeros((b, width, k), dtype=torch.long, device=ids.device)
    top_lps = torch.full((b, width, k), float("-inf"), dtype=torch.float32, device=ids.device)
    prompts, answers, where = [], [], []
    for i in range(b):
        real = torch.nonzero(mask[i], as_tuple=False).view(-1)
        answer = real[labels[i, real] != -100]
        if not len(answer):
            continue
        first = int((real == answer[0]).nonzero()[0])
        prompts.append(ids[i, real[:first]].tolist())
        answers.append(ids[i, real[first:]].tolist())
        where.append((i, real[first:]))
    for (i, positions), found in zip(where, teacher.score(prompts, answers, k), strict=True):
        top_ids[i, positions] = torch.as_tensor(found.top_ids, dtype=torch.long, device=ids.device)
        top_lps[i, positions] = torch.as_tensor(found.top_logprobs, device=ids.device)
    return top_ids, top_lps


def make_gkd_trainer(
    config: SftConfig, rows: list[dict[str, Any]], tokenizer: Any, model_path: str, scratch: str
) -> Any:
    """The on-policy distillation trainer over ``rows`` (``build_rows``' chats), the teacher in-process
    or served."""
    from datasets import Dataset

    from distilflow.models import resolve_model
    from distilflow.teachers import make_teacher
    from distilflow.training.arguments import lora_config
    from distilflow.training.callbacks import quiet_trainer

    gkd = config.gkd
    check_teacher_vocabulary(config, tokenizer)
    args = gkd_arguments(config, scratch)
    common = {
        "model": model_path,
        "args": args,
        "train_dataset": Dataset.from_list([{"messages": r["messages"]} for r in rows]),
        "processing_class": tokenizer,
        "peft_config": lora_config(config),
    }
    served = gkd.teacher.backend == "openai"  # type: ignore[union-attr]
    print(
        f"[{STAGE}] gkd: teacher {gkd.teacher.display_name} ({'served' if served else 'in-process'}), "  # type: ignore[union-attr]
        f"lmbda={gkd.lmbda}, beta={gkd.beta}, {len(rows)} prompts",  # type: ignore[union-attr]
        flush=True,
    )
    if served:
        trainer = served_trainer_class()(make_teacher(gkd.teacher), gkd.top_k, **common)  # type: ignore[union-attr]
    else:
        from trl.experimental.gkd import GKDTrainer

        trainer = GKDTrainer(teacher_model=resolve_model(gkd.teacher.model), **common)  # type: ignore[union-attr]
    return quiet_trainer(trainer, STAGE)
