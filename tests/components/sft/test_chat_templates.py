"""What `sft` feeds the model: rendered tokens and loss masks for Qwen3- and Qwen2.5-style students.

The tiny fixtures get the real Qwen3 / Qwen2.5 chat templates (as shipped with TRL); the rows go through
the stage's own ``build_rows`` and ``make_trainer`` and TRL's tokenization and collator, and the test
reads back the token ids and labels of the batch the model would see.
"""

from __future__ import annotations

import shutil

import pytest

from distilflow.components.sft.config import SftConfig
from distilflow.records import Message, SftExample

QUESTION = "What is 3 + 4?"
REASONING = "We add 3 and 4 to get 7."
ANSWER = "The answer is 7."


def example(id: str, thinking: bool | None, reasoning: str | None = REASONING) -> SftExample:
    return SftExample(
        id=id,
        messages=[
            Message(role="user", content=QUESTION),
            Message(role="assistant", content=ANSWER, reasoning_content=reasoning),
        ],
        enable_thinking=thinking,
    )


def batch_for(model_dir: str, template: str, examples: list[SftExample], tmp_path) -> tuple:
    """(tokenizer, rows, collated batch) for ``examples`` as the sft stage prepares them."""
    from distilflow.components.sft.run import build_rows, make_trainer, training_template
    from distilflow.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    tokenizer.chat_template = template
    cfg = SftConfig(output_uri=str(tmp_path / "o"), data_uri="/unused.jsonl", model=model_dir, max_length=256)
    rows, dropped = build_rows(examples, tokenizer, cfg.max_length, training_template(tokenizer, cfg))
    assert dropped == 0
    trainer = make_trainer(cfg, rows, tokenizer, model_dir, str(tmp_path / "scratch"))
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    dataset = trainer.train_dataset
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    return tokenizer, rows, batch


def rendered(tokenizer, batch, i: int) -> tuple[str, str]:
    """(the whole sequence, the tokens with loss) of row ``i``, decoded without dropping special tokens."""
    ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
    labels = batch["labels"][i][batch["attention_mask"][i].bool()].tolist()
    assert all(
        label in (-100, token) for label, token in zip(labels, ids, strict=True)
    )  # labels are the ids, or masked
    trained = [token for label, token in zip(labels, ids, strict=True) if label != -100]
    # the loss covers one contiguous span: the assistant turn
    first = next(k for k, label in enumerate(labels) if label != -100)
    assert all(label != -100 for label in labels[first : first + len(trained)])
    return tokenizer.decode(ids), tokenizer.decode(trained)


def test_qwen3_thinking_on_and_off_per_example(tiny_qwen3, tmp_path):
    from trl.chat_template_utils import qwen3_chat_template

    on, off, default = example("on", True), example("off", False), example("default", None, reasoning=None)
    tokenizer, rows, batch = batch_for(tiny_qwen3, qwen3_chat_template, [on, off, default], tmp_path)
    assert [r["chat_template_kwargs"] for r in rows] == [
        {"enable_thinking": True},
        {"enable_thinking": False},
        {"enable_thinking": None},
    ]
    prompt = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    expected = [
        # thinking on: the reasoning inside the <think> block, trained on with the answer
        f"<think>\n{REASONING}\n</think>\n\n{ANSWER}<|im_end|>\n",
        # thinking off: the empty block Qwen3 emits with enable_thinking=false, the reasoning left out
        f"<think>\n\n</think>\n\n{ANSWER}<|im_end|>\n",
        f"<think>\n\n</think>\n\n{ANSWER}<|im_end|>\n",
    ]
    for i, completion in enumerate(expected):
        whole, trained = rendered(tokenizer, batch, i)
        assert whole == prompt + completion, i
        assert trained == completion, i  # no loss on the user turn or the assistant header
    # The trained sequence continues exactly what the student's own template shows it at inference
    for i, ex in enumerate((on, off)):
        inference = tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTION}],
            chat_template=qwen3_chat_template,
            add_generation_prompt=True,
            tokenize=False,
            enable_thinking=ex.enable_thinking,
        )
        assert rendered(tokenizer, batch, i)[0].startswith(inference), (i, inference)


def test_qwen2_5_folds_reasoning_into_the_answer(tiny_qwen2, tmp_path):
    """Qwen2.5's template ignores reasoning_content: the reasoning is written into the content, not lost."""
    from trl.chat_template_utils import qwen2_5_chat_template

    tokenizer, rows, batch = batch_for(tiny_qwen2, qwen2_5_chat_template, [example("r", None)], tmp_path)
    assert "reasoning_content" not in rows[0]["messages"][1]
    whole, trained = rendered(tokenizer, batch, 0)
    system = (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    )
    completion = f"<think>\n{REASONING}\n</think>\n\n{ANSWER}<|im_end|>\n"
    assert whole == f"{system}<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{completion}"
    assert trained == "\n" + completion  # TRL's Qwen2.5 training template opens the span at the newline


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_template_of_student_folder_is_used(arch, tiny_qwen2, tiny_qwen3, tmp_path):
    """With the fixture's own template (generation markers, renders reasoning_content) nothing is swapped."""
    from distilflow.models import load_tokenizer

    model_dir = tiny_qwen2 if arch == "qwen2" else tiny_qwen3
    template = load_tokenizer(model_dir).chat_template
    tokenizer, rows, batch = batch_for(model_dir, template, [example("on", True)], tmp_path)
    assert rows[0]["messages"][1]["reasoning_content"] == REASONING
    whole, trained = rendered(tokenizer, batch, 0)
    assert trained == f"<think>\n{REASONING}\n</think>\n\n{ANSWER}<|im_end|>"
    assert whole.startswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n<think>")
