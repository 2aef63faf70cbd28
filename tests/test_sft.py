"""The `sft` stage on a tiny Qwen3 model on CPU: loss goes down, the model is saved and loads, reruns reuse."""

from __future__ import annotations

import json
import os

import pytest

from distilflow import uri as uris
from distilflow.components.sft.config import SftConfig, SftResult
from distilflow.errors import ConfigError, IncompleteOutputError
from distilflow.outputs import MANIFEST, MARKER
from distilflow.records import Message, SftExample, write_jsonl
from tests.conftest import curate_output


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

    data = curate_output(str(tmp_path), "sft.jsonl", examples(8))
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

    data = curate_output(str(tmp_path), "sft.jsonl", examples(4))
    root = str(tmp_path / "run")
    section = dict(
        model=tiny_qwen3, max_steps=2, learning_rate=1e-3, per_device_train_batch_size=2, max_length=128
    )
    stored = run(SftConfig(output_uri=os.path.join(root, "sft"), data_uri=data, **section))

    model = dsl.Model(name="model", uri=str(tmp_path / "artifact"))
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    upstream = dsl.Dataset(name="data", uri=str(tmp_path / "x"), metadata={"uri": data})
    report = dsl.HTML(name="report", uri=str(tmp_path / "report.html"))
    sft.python_func(
        config={"sft": section, "curate": {"ignored": True}},
        output_uri=root,
        data=upstream,
        model=model,
        metrics=metrics,
        report=report,
    )
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") == 3 and "learning_rate" in page  # loss, learning rate, grad norm
    assert report.metadata["uri"] == os.path.join(root, "sft", "report.html")
    assert model.metadata == {"uri": stored.model_uri, "stage_uri": os.path.join(root, "sft")}
    assert metrics.metadata["final_loss"] == stored.final_loss
    assert metrics.metadata["rows_used"] == 4


def test_sft_drops_long_rows_and_merges_lora(tiny_qwen3, tmp_path):
    from transformers import AutoModelForCausalLM

    from distilflow.components.sft.run import run

    data = curate_output(str(tmp_path), "sft.jsonl", examples(4, long=3))
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

    data = curate_output(str(tmp_path), "sft.jsonl", examples(2), complete=False)
    with pytest.raises(IncompleteOutputError, match="_COMPLETE"):
        run(config(tiny_qwen3, data, str(tmp_path / "sft")))
    assert not os.path.exists(tmp_path / "sft" / MARKER)


def test_sft_fails_when_every_row_is_too_long(tiny_qwen3, tmp_path):
    from distilflow.components.sft.run import run

    data = curate_output(str(tmp_path), "sft.jsonl", examples(0, long=2))
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


def _complete_steps(output_uri: str) -> list[int]:
    from distilflow.training import list_checkpoints

    return [c.step for c in list_checkpoints(output_uri) if c.marker is not None]


def test_sft_resumes_after_kill_from_s3_checkpoint(tiny_qwen3, tmp_path, s3_bucket):
    """kill -9 mid-training, rerun: training continues from the newest complete checkpoint on the S3
    server (step counter, schedule, RNG and data position), an incomplete checkpoint is ignored, and the
    result matches an uninterrupted run step for step."""
    import signal
    import subprocess
    import sys
    import time

    import torch
    from safetensors.torch import load_file

    from distilflow.components.sft.run import run

    data = str(tmp_path / "sft.jsonl")
    write_jsonl(data, examples(8))
    # 4 micro-batches an epoch and a checkpoint every 3 steps: resumes land mid-epoch
    settings = dict(max_steps=24, per_device_train_batch_size=2, save_steps=3, save_total_limit=2)
    killed = config(tiny_qwen3, data, f"s3://{s3_bucket}/killed/sft", **settings)
    script = (
        "import json, sys\n"
        "from distilflow.components.sft.config import SftConfig\n"
        "from distilflow.components.sft.run import run\n"
        "run(SftConfig(**json.loads(sys.argv[1])))\n"
    )
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(killed.to_dict())], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 120
            while not _complete_steps(killed.output_uri):
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()
                assert time.monotonic() < deadline, "no checkpoint within 120 s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)  # kill -9, as a preempted pod
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not uris.exists(f"{killed.output_uri}/{MARKER}")
    steps = _complete_steps(killed.output_uri)
    assert 0 < steps[-1] < 24, steps
    # a newer checkpoint whose upload never finished (no marker) must not be resumed from
    uris.write_bytes(f"{killed.output_uri}/checkpoints/checkpoint-{steps[-1] + 1}/model.safetensors", b"junk")

    resumed = run(killed)
    assert resumed.resumed_from_step == steps[-1]
    assert resumed.steps == 24
    assert _complete_steps(killed.output_uri) == [21, 24]  # save_total_limit=2, the junk one deleted
    assert not uris.exists(f"{killed.output_uri}/checkpoints/checkpoint-{steps[-1] + 1}")

    whole = run(config(tiny_qwen3, data, str(tmp_path / "whole" / "sft"), **settings))
    assert whole.resumed_from_step is None and whole.steps == 24
    assert resumed.final_loss == pytest.approx(whole.final_loss, rel=1e-4)
    local = tmp_path / "resumed-model.safetensors"
    local.write_bytes(uris.read_bytes(f"{resumed.model_uri}/model.safetensors"))
    a, b = load_file(str(local)), load_file(os.path.join(whole.model_uri, "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)

    report = uris.read_text(f"{killed.output_uri}/report.html")
    assert report.count("<svg") == 3 and "learning_rate" in report


@pytest.mark.parametrize("curriculum", [True, False])
def test_curriculum_keeps_file_order(tiny_qwen3, tmp_path, curriculum):
    """With curriculum=true the trainer's data loader yields the rows in sft.jsonl order, every epoch;
    without it they are shuffled."""
    import shutil

    from distilflow.components.sft.run import build_rows, make_trainer
    from distilflow.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_qwen3)
    rows, _ = build_rows(examples(8), tokenizer, 128)
    cfg = config(
        tiny_qwen3, "/unused.jsonl", str(tmp_path / "o"), per_device_train_batch_size=2, curriculum=curriculum
    )
    trainer = make_trainer(cfg, rows, tokenizer, tiny_qwen3, str(tmp_path / "scratch"))
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    assert trainer.args.gradient_checkpointing is False  # None: only on a GPU

    def seen() -> list[int]:  # the question number of each row, in the order the trainer reads them
        order = []
        for batch in trainer.get_train_dataloader():
            for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
                text = tokenizer.decode(ids[labels == -100])
                order.append(int(text.split("What is ")[1].split(" ")[0]))
        return order

    first, second = seen(), seen()
    if curriculum:
        assert first == second == list(range(8))
    else:
        assert sorted(first) == list(range(8)) and first != list(range(8))


def test_gradient_checkpointing_option(tiny_qwen3, tmp_path):
    import shutil

    from distilflow.components.sft.run import build_rows, make_trainer
    from distilflow.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_qwen3)
    rows, _ = build_rows(examples(2), tokenizer, 128)
    cfg = config(tiny_qwen3, "/unused.jsonl", str(tmp_path / "o"), gradient_checkpointing=True, max_steps=1)
    trainer = make_trainer(cfg, rows, tokenizer, tiny_qwen3, str(tmp_path / "scratch"))
    trainer.train()
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    assert trainer.args.gradient_checkpointing is True
    assert trainer.model.is_gradient_checkpointing


def test_packing_needs_flash_attention(tiny_qwen3, tmp_path):
    from distilflow.components.sft.run import make_trainer

    with pytest.raises(ValueError, match="attn_implementation"):
        config(tiny_qwen3, "/unused.jsonl", str(tmp_path / "o"), packing=True)
    cfg = config(
        tiny_qwen3,
        "/unused.jsonl",
        str(tmp_path / "o"),
        packing=True,
        attn_implementation="flash_attention_2",
    )
    with pytest.raises(ConfigError, match="packing=false on a CPU"):
        make_trainer(cfg, [], None, tiny_qwen3, str(tmp_path / "scratch"))


@pytest.mark.slow
def test_sft_two_cpu_processes_checkpoint_and_resume(tiny_qwen3, tmp_path):
    """Two data-parallel CPU processes (gloo): launched with torchrun by hand, the checkpoints hold both
    ranks' RNG states; an interrupted output rerun with processes=2 launches torchrun itself and resumes
    from its newest complete checkpoint."""
    import shutil
    import subprocess

    import yaml

    from distilflow.components.sft.run import run

    data = str(tmp_path / "sft.jsonl")
    write_jsonl(data, examples(8))
    settings = dict(max_steps=6, per_device_train_batch_size=2, save_steps=2, processes=2)
    cfg = config(tiny_qwen3, data, str(tmp_path / "sft"), **settings)
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    command = [
        "torchrun",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--no-python",
        "distilflow",
        "stage",
        "sft",
    ]
    done = subprocess.run([*command, "--config", str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first = json.loads(uris.read_text(os.path.join(cfg.output_uri, MANIFEST)))["result"]
    assert first["steps"] == 6 and first["resumed_from_step"] is None
    assert first["final_loss"] < first["first_loss"]
    ckpts = os.path.join(cfg.output_uri, "checkpoints")
    assert sorted(os.listdir(ckpts)) == ["checkpoint-4", "checkpoint-6"]
    saved = set(os.listdir(os.path.join(ckpts, "checkpoint-4")))
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt"} <= saved

    # as if preempted while uploading checkpoint-6
    os.remove(os.path.join(cfg.output_uri, MARKER))
    os.remove(os.path.join(ckpts, "checkpoint-6", "_COMPLETE"))
    shutil.rmtree(os.path.join(cfg.output_uri, "model"))
    again = run(cfg)  # not under torchrun: the stage launches its two processes itself
    assert again.resumed_from_step == 4 and again.steps == 6
    assert again.final_loss == pytest.approx(first["final_loss"], rel=1e-4)


@pytest.mark.parametrize(
    "zero,offload", [("zero2", False), ("zero2", True), ("zero3", False), ("zero3", True)]
)
def test_deepspeed_config_is_valid(zero, offload, tiny_qwen3, tmp_path):
    """The generated config reaches the trainer arguments and, with the Trainer's "auto" values filled in,
    passes DeepSpeed's own config validation (which rejects unknown keys)."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from distilflow import training

    cfg = config(tiny_qwen3, "/unused.jsonl", str(tmp_path / "o"), deepspeed=zero, offload=offload)
    kwargs = training.training_arguments(lambda **kw: kw, cfg, str(tmp_path / "scratch"))
    ds = kwargs["deepspeed"]
    assert ds == training.deepspeed_config(zero, offload)

    hf = HfTrainerDeepSpeedConfig(ds)
    args = TrainingArguments(
        output_dir=str(tmp_path / "x"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        use_cpu=True,
    )
    hf.trainer_config_process(args)

    class Model:
        class config:  # noqa: N801 - stands in for a model's config
            hidden_size = 64

    hf.trainer_config_finalize(args, Model(), num_training_steps=20)
    checked = DeepSpeedConfig(hf.config)
    assert checked.zero_optimization_stage == (2 if zero == "zero2" else 3)
    assert checked.train_micro_batch_size_per_gpu == 4 and checked.gradient_accumulation_steps == 2
    assert (checked.zero_config.offload_optimizer is not None) == offload
    assert (checked.zero_config.offload_param is not None) == (offload and zero == "zero3")
    if zero == "zero3":
        assert checked.zero_config.gather_16bit_weights_on_model_save


def test_offload_needs_deepspeed(tiny_qwen3, tmp_path):
    with pytest.raises(ValueError, match="offload=true needs deepspeed"):
        config(tiny_qwen3, "/unused.jsonl", str(tmp_path / "o"), offload=True)


def test_report_plots_logged_curves():
    from distilflow.training import report_html

    history = [
        {"step": 1, "loss": 3.0, "learning_rate": 1e-3},
        {"step": 2, "loss": 2.0, "learning_rate": 5e-4, "grad_norm": float("nan")},
        {"step": 3, "loss": 1.5, "learning_rate": 0.0},
        {"step": 3, "train_runtime": 9.0},  # the end-of-training summary: not a curve point
    ]
    page = report_html("sft", history, ("loss", "learning_rate", "grad_norm"), {"steps": 3, "note": "<b>"})
    assert page.count("<svg") == 2  # grad_norm has no finite value: no empty plot
    loss = page.split('aria-label="loss"')[1].split("</svg>")[0]
    assert loss.count("<circle") == 3 and ">3<" in loss and ">1.5<" in loss  # one dot a step, y range shown
    assert "&lt;b&gt;" in page and "<b>" not in page  # values are escaped


@pytest.mark.gpu
def test_sft_bf16_zero2_on_gpu(tiny_qwen3, tmp_path):
    """On a GPU: bf16 mixed precision with DeepSpeed ZeRO-2, one process per visible GPU under torchrun."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("deepspeed")
    from transformers import AutoModelForCausalLM

    from distilflow.components.sft.run import run
    from distilflow.training import list_checkpoints

    data = str(tmp_path / "sft.jsonl")
    write_jsonl(data, examples(8))
    result = run(config(tiny_qwen3, data, str(tmp_path / "sft"), deepspeed="zero2", save_steps=10))
    assert result.steps == 20 and result.final_loss < result.first_loss * 0.7
    assert [c.step for c in list_checkpoints(str(tmp_path / "sft"))] == [10, 20]
    AutoModelForCausalLM.from_pretrained(result.model_uri)
