"""The `sft` stage on a tiny Qwen3 model on CPU: loss goes down, the model is saved and loads, reruns reuse."""

from __future__ import annotations

import json
import os

import pytest

from distilflow import uri as uris
from distilflow.components.sft.config import SftConfig, SftResult
from distilflow.errors import ConfigError, IncompleteOutputError
from distilflow.outputs import MANIFEST, MARKER, StageOutput
from distilflow.records import Message, SftExample, write_jsonl


def examples(n: int = 8, long: int = 0) -> list[SftExample]:
    """``n`` short arithmetic chats (half with thinking switched on explicitly) plus ``long`` long ones."""
    rows = []
    for i in range(n):
        rows.append(
            SftExample(
                id=f"e{i}",
                messages=[
                    Message(role="user", content=f"What is {i} + {i}?"),
                    Message(
                        role="assistant",
                        content=f"The answer is \\boxed{{{2 * i}}}.",
                        reasoning_content=f"We add {i} and {i} to get {2 * i}.",
                    ),
                ],
                enable_thinking=True if i % 2 else None,
            )
        )
    for i in range(long):
        text = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)
        rows.append(
            SftExample(
                id=f"long{i}",
                messages=[Message(role="user", content=text), Message(role="assistant", content=text)],
            )
        )
    return rows


def curate_output(root: str, rows: list[SftExample], complete: bool = True) -> str:
    """A curate-like upstream output folder holding sft.jsonl (with its completion marker unless told not)."""
    out = StageOutput(os.path.join(root, "curate"), "curate")
    write_jsonl(out.path("sft.jsonl"), rows)
    if complete:
        out.finish(result={}, counts={"sft": len(rows)})
    return out.uri


def config(model: str, data_uri: str, output_uri: str, **overrides) -> SftConfig:
    base = dict(
        output_uri=output_uri,
        data_uri=data_uri,
        model=model,
        max_steps=20,
        learning_rate=5e-3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_length=128,
        logging_steps=1,
    )
    base.update(overrides)
    return SftConfig(**base)


def test_sft_learns_saves_and_reuses(tiny_qwen3, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distilflow.components.sft.run import run

    data = curate_output(str(tmp_path), examples(8))
    cfg = config(tiny_qwen3, data, str(tmp_path / "run" / "sft"))
    result = run(cfg)

    assert result.steps == 20
    assert result.rows_used == 8 and result.rows_dropped == 0
    assert result.final_loss < result.first_loss * 0.7, (result.first_loss, result.final_loss)

    model_dir = result.model_uri
    assert os.path.exists(os.path.join(cfg.output_uri, MARKER))
    manifest = json.loads(uris.read_text(os.path.join(cfg.output_uri, MANIFEST)))
    assert manifest["result"] == result.model_dump()
    assert manifest["counts"] == {"rows_read": 8, "rows_used": 8, "rows_dropped": 0}
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "qwen3"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert "<think>" in tokenizer.chat_template and "generation" in tokenizer.chat_template
    assert "sft" in uris.read_text(os.path.join(model_dir, "README.md"))

    # A rerun with the same config returns the stored result without training or rewriting anything.
    weights = os.path.join(model_dir, "model.safetensors")
    mtime = os.path.getmtime(weights)
    again = run(cfg)
    assert again == result
    assert (
        json.loads(uris.read_text(os.path.join(cfg.output_uri, MANIFEST)))["finished_at"]
        == manifest["finished_at"]
    )
    assert os.path.getmtime(weights) == mtime


def test_sft_component_publishes_uri_and_metrics(tiny_qwen3, tmp_path):
    """The KFP component body (called directly), on an output that is already complete: no training."""
    from kfp import dsl

    from distilflow.components.sft.component import sft
    from distilflow.components.sft.run import run

    data = curate_output(str(tmp_path), examples(4))
    root = str(tmp_path / "run")
    section = dict(
        model=tiny_qwen3, max_steps=2, learning_rate=1e-3, per_device_train_batch_size=2, max_length=128
    )
    stored = run(SftConfig(output_uri=os.path.join(root, "sft"), data_uri=data, **section))

    model = dsl.Model(name="model", uri=str(tmp_path / "artifact"))
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    upstream = dsl.Dataset(name="data", uri=str(tmp_path / "x"), metadata={"uri": data})
    sft.python_func(
        config={"sft": section, "curate": {"ignored": True}},
        output_uri=root,
        data=upstream,
        model=model,
        metrics=metrics,
    )
    assert model.metadata == {"uri": stored.model_uri, "stage_uri": os.path.join(root, "sft")}
    assert metrics.metadata["final_loss"] == stored.final_loss
    assert metrics.metadata["rows_used"] == 4


def test_sft_drops_long_rows_and_merges_lora(tiny_qwen3, tmp_path):
    from transformers import AutoModelForCausalLM

    from distilflow.components.sft.run import run

    data = curate_output(str(tmp_path), examples(4, long=3))
    cfg = config(tiny_qwen3, data, str(tmp_path / "sft"), max_steps=3, max_length=96, lora=True, lora_r=4)
    result = run(cfg)

    assert result.rows_used == 4 and result.rows_dropped == 3
    manifest = json.loads(uris.read_text(os.path.join(cfg.output_uri, MANIFEST)))
    assert manifest["counts"]["rows_dropped"] == 3
    # LoRA was merged: a plain model folder, no adapter files
    assert not os.path.exists(os.path.join(result.model_uri, "adapter_config.json"))
    model = AutoModelForCausalLM.from_pretrained(result.model_uri)
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_sft_refuses_incomplete_upstream(tiny_qwen3, tmp_path):
    from distilflow.components.sft.run import run

    data = curate_output(str(tmp_path), examples(2), complete=False)
    with pytest.raises(IncompleteOutputError, match="_COMPLETE"):
        run(config(tiny_qwen3, data, str(tmp_path / "sft")))
    assert not os.path.exists(tmp_path / "sft" / MARKER)


def test_sft_fails_when_every_row_is_too_long(tiny_qwen3, tmp_path):
    from distilflow.components.sft.run import run

    data = curate_output(str(tmp_path), examples(0, long=2))
    with pytest.raises(ConfigError, match="raise sft.max_length"):
        run(config(tiny_qwen3, data, str(tmp_path / "sft"), max_length=32))


def test_build_rows_carries_enable_thinking(tiny_qwen3):
    from distilflow.components.sft.run import build_rows
    from distilflow.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_qwen3)
    chat = [Message(role="user", content="What is 1 + 1?"), Message(role="assistant", content="2")]
    rows, dropped = build_rows(
        [
            SftExample(id="off", messages=chat, enable_thinking=False),
            SftExample(id="default", messages=chat),
        ],
        tokenizer,
        max_length=512,
    )
    assert dropped == 0
    assert [r["chat_template_kwargs"] for r in rows] == [
        {"enable_thinking": False},
        {"enable_thinking": None},
    ]
    # The flag reaches the template: thinking off renders an empty think block
    off = tokenizer.apply_chat_template(
        rows[0]["messages"], tokenize=False, **rows[0]["chat_template_kwargs"]
    )
    default = tokenizer.apply_chat_template(
        rows[1]["messages"], tokenize=False, **rows[1]["chat_template_kwargs"]
    )
    assert "<think>\n\n</think>" in off and "<think>" not in default


def test_assistant_only_loss_template_choice(tiny_qwen3):
    """Markers present: the student's template; a known template without them: TRL's training variant;
    an unknown one: a ConfigError that names the fix."""
    from trl.chat_template_utils import qwen3_chat_template, qwen3_training_chat_template

    from distilflow.components.sft.run import training_template
    from distilflow.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_qwen3)
    cfg = SftConfig(output_uri="/tmp/x", data_uri="/tmp/d.jsonl", model=tiny_qwen3)
    assert training_template(tokenizer, cfg) is None
    tokenizer.chat_template = qwen3_chat_template
    assert training_template(tokenizer, cfg) == qwen3_training_chat_template
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ConfigError, match="assistant_only_loss=false"):
        training_template(tokenizer, cfg)
    assert training_template(tokenizer, cfg.model_copy(update={"assistant_only_loss": False})) is None


def test_sft_writes_to_s3(tiny_qwen3, tmp_path, s3_bucket):
    from distilflow.components.sft.run import run

    data = str(tmp_path / "sft.jsonl")  # a direct JSONL file needs no completion marker
    write_jsonl(data, examples(4))
    out = f"s3://{s3_bucket}/runs/r1/sft"
    result = run(config(tiny_qwen3, data, out, max_steps=2))

    assert result.model_uri == f"{out}/model"
    for name in ("model/model.safetensors", "model/tokenizer.json", "model/README.md", MANIFEST, MARKER):
        assert uris.exists(f"{out}/{name}"), name
    assert SftResult.model_validate(json.loads(uris.read_text(f"{out}/{MANIFEST}"))["result"]) == result
