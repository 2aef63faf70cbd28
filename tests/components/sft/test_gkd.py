"""sft with ``gkd``: on-policy distillation on TRL's GKDTrainer, tiny models on CPU.

In-process, the stage's lmbda/beta/temperature reach TRL's trainer and it trains end to end. Served,
the loss on a batch equals the generalized JSD over the teacher's top-k and tail computed here from
a plain forward pass of the teacher, the server is asked (vLLM's ``prompt_logprobs``) for exactly the
batch's real tokens, and with ``lmbda=1`` the student's own samples are what gets scored."""

import math

import pytest

from distilflow.components.sft.config import SftConfig
from distilflow.records import SftExample


@pytest.fixture
def chats(tmp_path) -> str:
    from tests.conftest import curate_output

    rows = [
        SftExample(
            id=f"e{i}",
            messages=[
                {"role": "user", "content": f"What is {i} + 4?"},
                {
                    "role": "assistant",
                    "content": f"The answer is {i + 4}.",
                    "reasoning_content": f"{i} and 4",
                },
            ],
        )
        for i in range(4)
    ]
    return curate_output(str(tmp_path), "sft.jsonl", rows)


def gkd_config(tmp_path, data: str, student: str, teacher: dict, **gkd) -> SftConfig:
    return SftConfig.from_dict(
        {
            "output_uri": str(tmp_path / "sft"),
            "data_uri": data,
            "model": student,
            "max_steps": 2,
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "logging_steps": 1,
            "max_length": 512,
            "save_steps": 0,
            "gkd": {"teacher": teacher, "max_new_tokens": 6} | gkd,
        }
    )


def test_in_process_teacher_trains_with_trls_gkd_trainer(tmp_path, chats, tiny_qwen3, tiny_teacher):
    from trl.experimental.gkd import GKDTrainer

    from distilflow.components.sft.run import chat_trainer, run
    from distilflow.models import load_tokenizer
    from distilflow.records import iter_output_rows

    teacher = {"backend": "transformers", "model": tiny_teacher}
    config = gkd_config(tmp_path, chats, tiny_qwen3, teacher, lmbda=0.25, beta=0.7, temperature=0.8)
    examples = list(iter_output_rows(chats, "sft", SftExample))
    trainer, counts = chat_trainer(
        config, chats, examples, load_tokenizer(tiny_qwen3), tiny_qwen3, str(tmp_path / "scratch")
    )
    assert isinstance(trainer, GKDTrainer) and counts == (4, 4, 0, 0)
    assert (trainer.lmbda, trainer.beta, trainer.temperature) == (0.25, 0.7, 0.8)
    assert trainer.generation_config.max_new_tokens == 6
    result = run(config)
    assert result.loss == "gkd" and result.steps == 2 and math.isfinite(result.final_loss)


def test_served_teacher_loss_is_the_jsd_over_its_top_k(tmp_path, chats, tiny_qwen3, tiny_teacher):
    import torch
    from transformers import AutoModelForCausalLM

    from distilflow.components.sft.run import chat_trainer, run
    from distilflow.models import load_tokenizer
    from distilflow.records import iter_output_rows
    from tests.fakes.vllm_server import VllmLogprobsServer

    server = VllmLogprobsServer(tiny_teacher, served_name="teacher")
    url = server.start()
    try:
        teacher = {"backend": "openai", "base_url": url, "model": "teacher", "tokenizer": tiny_teacher}
        config = gkd_config(tmp_path, chats, tiny_qwen3, teacher, beta=0.5, top_k=5, lmbda=0.0)
        examples = list(iter_output_rows(chats, "sft", SftExample))
        trainer, _ = chat_trainer(
            config, chats, examples, load_tokenizer(tiny_qwen3), tiny_qwen3, str(tmp_path / "scratch")
        )
        batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
        loss = float(trainer.compute_loss(trainer.model.eval(), batch).detach())
        asked = [r["body"] for r in server.requests if r["path"] == "/v1/completions"]

        # the same, by hand: teacher and student softmax, coarsened to the teacher's top-5 and the tail
        t_model = AutoModelForCausalLM.from_pretrained(tiny_teacher).eval()
        total, count = 0.0, 0
        assert len(asked) == 2 and all(a["prompt_logprobs"] == 5 for a in asked)
        for i in range(2):
            real = batch["attention_mask"][i].bool()
            ids, labels = batch["input_ids"][i][real], batch["labels"][i][real]
            first = int((labels != -100).nonzero()[0])
            # the rows are sent concurrently: the server may see them in either order
            assert ids.tolist() in [a["prompt"] for a in asked]
            with torch.no_grad():
                p = torch.softmax(t_model(ids[None]).logits[0].double(), -1)
                q = torch.softmax(trainer.model(ids[None]).logits[0].double(), -1)
            for j in range(first, len(ids)):
                top = torch.topk(p[j - 1], 5).indices
                pt = p[j - 1][top].tolist() + [1 - float(p[j - 1][top].sum())]
                qt = q[j - 1][top].tolist() + [1 - float(q[j - 1][top].sum())]
                m = [(a + b) / 2 for a, b in zip(pt, qt, strict=True)]
                total += 0.5 * sum(a * math.log(a / c) for a, c in zip(pt, m, strict=True))
                total += 0.5 * sum(b * math.log(b / c) for b, c in zip(qt, m, strict=True))
                count += 1
        assert loss == pytest.approx(total / count, rel=1e-4)

        # fully on-policy: the student's own samples are sent to be scored
        server.requests.clear()
        result = run(gkd_config(tmp_path, chats, tiny_qwen3, teacher, lmbda=1.0, top_k=5))
        assert result.steps == 2 and math.isfinite(result.final_loss)
        scored = [r["body"]["prompt"] for r in server.requests if r["path"] == "/v1/completions"]
        data = [ex for ex in (trainer.train_dataset[i]["messages"][-1]["content"] for i in range(4))]
        decoded = [load_tokenizer(tiny_qwen3).decode(p) for p in scored]
        assert len(scored) == 4 and not any(answer in text for text in decoded for answer in data)
    finally:
        server.stop()
