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
    # 20 steps of 4 rows over 8 rows: every row 10 times (the exact count: test_sft_speed.py)
    assert manifest["counts"] == {
        "rows_read": 8, "rows_used": 8, "rows_dropped": 0, "rows_rejected": 0, "tokens_trained": result.tokens_trained
    }  # fmt: skip
    assert (
        result.tokens_trained > 10 * 8 * 20
        and 0 < result.padding_share < 0.5
        and result.tokens_per_second > 0
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "qwen3"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert "<think>" in tokenizer.chat_template and "generation" in tokenizer.chat_template
    card = uris.read_text(os.path.join(model_dir, "README.md"))
    for section in ("## Data", "## Teacher", "## Metrics", "## Recipe"):
        assert section in card
    assert "rows used: 8, dropped for length: 0" in card and f"final_loss: {result.final_loss}" in card

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
    tensorboard = dsl.Artifact(name="tensorboard", uri=str(tmp_path / "tensorboard"))
    sft.python_func(
        config={"sft": section, "curate": {"ignored": True}},
        output_uri=root,
        data=upstream,
        model=model,
        metrics=metrics,
        report=report,
        tensorboard=tensorboard,
    )
    # untracked: the TensorBoard artifact holds a note, no event files
    assert os.listdir(tensorboard.path) == ["README.txt"]
    assert tensorboard.metadata == {"stage_uri": os.path.join(root, "sft")}
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
    from distilflow.training.checkpointing import list_checkpoints

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

    from distilflow.training import arguments

    cfg = config(tiny_qwen3, "/unused.jsonl", str(tmp_path / "o"), deepspeed=zero, offload=offload)
    kwargs = arguments.training_arguments(lambda **kw: kw, cfg, str(tmp_path / "scratch"))
    ds = kwargs["deepspeed"]
    assert ds == arguments.deepspeed_config(zero, offload)

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


@pytest.mark.unit
def test_report_plots_logged_curves():
    from distilflow.training.report import report_html

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


def _needs_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch


@pytest.mark.gpu
def test_sft_bf16_zero2_on_gpu(tiny_qwen3, tmp_path):
    """On a GPU: bf16 mixed precision with DeepSpeed ZeRO-2, one process per visible GPU under torchrun.
    DeepSpeed keeps the module's parameters in bf16 (fp32 master copies live in the optimizer), so the
    saved weights are bf16; the loss goes down; checkpoints are written and marked complete."""
    _needs_gpu()
    pytest.importorskip("deepspeed")
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from distilflow.components.sft.run import run
    from distilflow.training.checkpointing import list_checkpoints

    data = str(tmp_path / "sft.jsonl")
    write_jsonl(data, examples(8))
    result = run(config(tiny_qwen3, data, str(tmp_path / "sft"), deepspeed="zero2", save_steps=10))
    assert result.steps == 20 and result.final_loss < result.first_loss * 0.7
    assert [c.step for c in list_checkpoints(str(tmp_path / "sft"))] == [10, 20]
    weights = load_file(os.path.join(result.model_uri, "model.safetensors"))
    linear = {k: v.dtype for k, v in weights.items() if k.endswith("proj.weight")}
    assert linear and set(linear.values()) == {torch.bfloat16}, linear
    AutoModelForCausalLM.from_pretrained(result.model_uri)


@pytest.mark.gpu
def test_sft_fsdp_on_gpu_checkpoints_shards_and_resumes(tiny_qwen3, tmp_path):
    """On a GPU: FSDP2 full_shard, one process per visible GPU. Checkpoints hold each rank's sharded
    model and optimizer state (torch.distributed.checkpoint files); the final model is gathered into
    one full Hugging Face folder; an interrupted run resumes from the sharded checkpoint."""
    _needs_gpu()
    from safetensors.torch import load_file

    from distilflow.components.sft.run import run

    data = str(tmp_path / "sft.jsonl")
    write_jsonl(data, examples(8))
    cfg = config(tiny_qwen3, data, str(tmp_path / "sft"), fsdp="full_shard", max_steps=6, save_steps=2)
    first = run(cfg)
    assert first.steps == 6 and first.final_loss < first.first_loss
    ckpt = os.path.join(cfg.output_uri, "checkpoints", "checkpoint-4")
    marker = json.loads(uris.read_text(os.path.join(ckpt, "_COMPLETE")))
    assert any(f.endswith(".distcp") for f in marker["files"]), marker["files"]
    full = load_file(os.path.join(first.model_uri, "model.safetensors"))
    base = load_file(os.path.join(tiny_qwen3, "model.safetensors"))
    assert set(base) <= set(full) and all(
        full[k].shape == base[k].shape for k in base
    )  # gathered, not shards

    for name in (MARKER, "model"):
        uris.remove(os.path.join(cfg.output_uri, name), recursive=True)
    os.remove(os.path.join(cfg.output_uri, "checkpoints", "checkpoint-6", "_COMPLETE"))
    again = run(cfg)
    assert again.resumed_from_step == 4 and again.steps == 6
    assert again.final_loss == pytest.approx(first.final_loss, rel=1e-3)


@pytest.mark.parametrize(
    "device", [pytest.param("cpu", marks=pytest.mark.slow), pytest.param("gpu", marks=pytest.mark.gpu)]
)
def test_lora_zero3_merges_gathered_adapter_into_base(device, tiny_qwen3, tmp_path):
    """LoRA under DeepSpeed ZeRO-3 (parameters partitioned; the stage launches itself with torchrun):
    the saved model is the base with the trained adapter merged in, W + (alpha / r) * B @ A, compared
    with the adapter of the last checkpoint (the final step). On a CPU: one process (TRL + DeepSpeed
    with two CPU processes does not run here); on a GPU: one process per GPU, bf16."""
    torch = _needs_gpu() if device == "gpu" else pytest.importorskip("torch")
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    from distilflow.components.sft.run import run

    data = str(tmp_path / "sft.jsonl")
    write_jsonl(data, examples(8))
    settings = dict(deepspeed="zero3", lora=True, max_steps=4, save_steps=4, per_device_train_batch_size=2)
    if device == "cpu":
        settings["processes"] = 1
    cfg = config(tiny_qwen3, data, str(tmp_path / "sft"), **settings)
    result = run(cfg)
    assert result.steps == 4

    merged = load_file(os.path.join(result.model_uri, "model.safetensors"))
    base = load_file(os.path.join(tiny_qwen3, "model.safetensors"))
    adapter = load_file(
        os.path.join(cfg.output_uri, "checkpoints", "checkpoint-4", "adapter_model.safetensors")
    )
    assert set(merged) == set(base)
    scale = cfg.lora_alpha / cfg.lora_r
    adapted = 0
    for name, weight in base.items():
        prefix = "base_model.model." + name.removesuffix(".weight")
        expected = weight.float()
        if f"{prefix}.lora_A.weight" in adapter:
            a, b = adapter[f"{prefix}.lora_A.weight"].float(), adapter[f"{prefix}.lora_B.weight"].float()
            expected = expected + scale * b @ a
            adapted += 1
        torch.testing.assert_close(merged[name].float(), expected, rtol=1e-4, atol=1e-5, msg=name)
    assert adapted == 14


# ---- FSDP ----


@pytest.mark.parametrize(
    "mode,offload", [("full_shard", False), ("full_shard", True), ("shard_grad_op", False)]
)
def test_fsdp_arguments_are_valid(mode, offload, tiny_qwen3, tmp_path, monkeypatch):
    """fsdp=... turns into TrainingArguments(fsdp=True, fsdp_config=...) that transformers translates into
    an accelerate FSDP2 plugin, which wraps every decoder layer of the model. (accelerate applies FSDP to
    GPU processes only, so the real sharded run is the gpu-marked test below.)"""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import AutoModelForCausalLM, TrainingArguments

    from distilflow.training import arguments

    cfg = config(tiny_qwen3, "/unused.jsonl", str(tmp_path / "o"), fsdp=mode, offload=offload)
    monkeypatch.setattr(arguments, "on_gpu", lambda: True)  # the arguments a GPU run gets
    kwargs = arguments.training_arguments(lambda **kw: kw, cfg, str(tmp_path / "scratch"))
    assert kwargs["fsdp"] is True and kwargs["bf16"] is True
    # FSDP's own activation checkpointing replaces the model's (on by default on a GPU)
    assert kwargs["gradient_checkpointing"] is False
    assert kwargs["fsdp_config"] == arguments.fsdp_config(mode, offload, True)
    assert "deepspeed" not in kwargs

    args = TrainingArguments(
        output_dir=str(tmp_path / "x"),
        fsdp=kwargs["fsdp"],
        fsdp_config=dict(kwargs["fsdp_config"]),
        use_cpu=True,
        report_to="none",
    )
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    plugin.set_auto_wrap_policy(AutoModelForCausalLM.from_pretrained(tiny_qwen3))
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is (mode == "full_shard")
    assert type(plugin.cpu_offload).__name__ == ("CPUOffloadPolicy" if offload else "OffloadPolicy")
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"  # each rank checkpoints its own shard
    assert plugin.activation_checkpointing is True
    assert plugin.transformer_cls_names_to_wrap == ["Qwen3DecoderLayer"]


def test_fsdp_config_checks(tiny_qwen3, tmp_path):
    from distilflow.components.sft.run import make_trainer

    with pytest.raises(ValueError, match="both shard the model"):
        config(tiny_qwen3, "/unused.jsonl", str(tmp_path / "o"), fsdp="full_shard", deepspeed="zero3")
    config(tiny_qwen3, "/unused.jsonl", str(tmp_path / "o"), fsdp="full_shard", offload=True)  # allowed
    cfg = config(tiny_qwen3, "/unused.jsonl", str(tmp_path / "o"), fsdp="full_shard")
    with pytest.raises(ConfigError, match="set fsdp=none on a CPU"):  # never a silent unsharded run
        make_trainer(cfg, [], None, tiny_qwen3, str(tmp_path / "scratch"))


# ---- LoRA merge (the path ZeRO-3 and FSDP take) ----


def test_lora_merge_by_reloading_base_equals_base_plus_adapter(tiny_qwen3, tmp_path, monkeypatch):
    """With sharded parameters (ZeRO-3, FSDP) no process holds the model: the Trainer gathers the adapter
    and the main process merges it into a fresh copy of the base. Run that path on a CPU (no ZeRO): the
    saved weights are W + (alpha / r) * B @ A for every adapted layer and the base elsewhere."""
    import torch
    from safetensors.torch import load_file

    from distilflow.components.sft.run import build_rows, make_trainer
    from distilflow.models import load_tokenizer
    from distilflow.training import save

    cfg = config(tiny_qwen3, "/unused.jsonl", str(tmp_path / "o"), max_steps=3, lora=True, lora_r=4)
    tokenizer = load_tokenizer(tiny_qwen3)
    rows, _ = build_rows(examples(4), tokenizer, cfg.max_length)
    trainer = make_trainer(cfg, rows, tokenizer, tiny_qwen3, str(tmp_path / "scratch"))
    trainer.train()
    adapter = tmp_path / "adapter"
    trainer.model.save_pretrained(str(adapter))  # what the Trainer's save_model writes for a PeftModel

    monkeypatch.setattr(save, "params_sharded", lambda trainer: True)
    out = str(tmp_path / "merged")
    save.save_trained(trainer, out, "card")

    merged = load_file(os.path.join(out, "model.safetensors"))
    base = load_file(os.path.join(tiny_qwen3, "model.safetensors"))
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    scale = cfg.lora_alpha / cfg.lora_r
    adapted = 0
    for name, weight in base.items():
        prefix = "base_model.model." + name.removesuffix(".weight")
        if f"{prefix}.lora_A.weight" in lora:
            a, b = lora[f"{prefix}.lora_A.weight"], lora[f"{prefix}.lora_B.weight"]
            assert b.abs().max() > 0, name  # the adapter trained
            expected = weight + scale * b @ a
            adapted += 1
        else:
            expected = weight
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6, msg=name)
    assert adapted == 14  # q, k, v, o, gate, up, down in both layers
    assert set(merged) <= set(base) and "lm_head.weight" not in set(merged) - set(base)
    assert os.path.exists(os.path.join(out, "tokenizer.json")) and not os.path.exists(trainer.args.output_dir)


# ---- checkpoints written by several processes and nodes ----


@pytest.mark.unit
def test_assign_uploads_gives_every_file_to_exactly_one_process():
    from distilflow.training.checkpointing import assign_uploads

    node_a = {
        "model.safetensors": 900,
        "optimizer.pt": 800,
        "scheduler.pt": 1,
        "trainer_state.json": 2,
        "latest": 1,
        "rng_state_0.pth": 3,
        "rng_state_1.pth": 3,
        "global_step4/zero_pp_rank_0_mp_rank_00_optim_states.pt": 50,
        "global_step4/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt": 50,
        "pytorch_model_fsdp_0/__1_0.distcp": 40,
    }
    node_b = {
        "latest": 1,  # a file more than one node wrote: uploaded once, from the lowest rank's node
        "rng_state_2.pth": 3,
        "rng_state_3.pth": 3,
        "global_step4/zero_pp_rank_2_mp_rank_00_optim_states.pt": 50,
        "global_step4/zero_pp_rank_3_mp_rank_00_optim_states.pt": 50,
        "pytorch_model_fsdp_0/__3_0.distcp": 40,
    }
    plan = assign_uploads({0: ("a", node_a), 1: ("a", node_a), 2: ("b", node_b), 3: ("b", node_b)})
    uploaded = [p for paths in plan.values() for p in paths]
    assert sorted(uploaded) == sorted(set(node_a) | set(node_b))  # everything, once
    for rank in range(4):  # a rank's own files go up from that rank
        assert f"rng_state_{rank}.pth" in plan[rank]
        assert any(f"zero_pp_rank_{rank}_" in p for p in plan[rank])
    assert "pytorch_model_fsdp_0/__3_0.distcp" in plan[3]
    assert "latest" in plan[0] + plan[1]
    # the two big shared files are uploaded in parallel by node a's two processes
    assert {"model.safetensors", "optimizer.pt"} == {
        next(p for p in plan[r] if p in ("model.safetensors", "optimizer.pt")) for r in (0, 1)
    }


def _run_ranks(monkeypatch, world: int, target, fail_rank: int | None = None):
    """Run ``target(rank)`` in ``world`` threads standing in for processes: the collectives of
    ``upload_checkpoint`` become a thread barrier; a rank that raises breaks the barrier for all."""
    import threading

    from distilflow.training import checkpointing

    barrier = threading.Barrier(world, timeout=30)
    gathered: dict[int, object] = {}
    local = threading.local()

    def all_gather(obj):
        gathered[local.rank] = obj
        barrier.wait()
        return [gathered[r] for r in range(world)]

    monkeypatch.setattr(checkpointing, "_all_gather", all_gather)
    monkeypatch.setattr(checkpointing, "_barrier", lambda: barrier.wait())
    real_upload = checkpointing._upload_files

    def upload(folder, paths, dest):
        if local.rank == fail_rank:
            barrier.abort()  # the process dies: the others' collectives fail, as NCCL/gloo would
            raise OSError("node lost")
        real_upload(folder, paths, dest)

    monkeypatch.setattr(checkpointing, "_upload_files", upload)
    errors: dict[int, BaseException] = {}

    def body(rank):
        local.rank = rank
        try:
            target(rank)
        except BaseException as exc:  # noqa: BLE001 - collected for the test to inspect
            errors[rank] = exc

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_checkpoint_complete_only_when_every_rank_uploaded(tmp_path, monkeypatch, s3_bucket):
    """Two nodes with two processes each write their own parts locally; each process uploads its share
    and its done marker; rank 0 writes _COMPLETE after all four. If a process dies mid-upload, the
    checkpoint has no _COMPLETE and a rerun deletes it instead of resuming from it."""
    from distilflow.training import checkpointing
    from distilflow.training.checkpointing import (
        CHECKPOINT_MARKER,
        list_checkpoints,
        resume_point,
        upload_checkpoint,
    )

    nodes = {0: tmp_path / "a", 1: tmp_path / "a", 2: tmp_path / "b", 3: tmp_path / "b"}
    for rank, node in nodes.items():  # what the trainer writes: rank 0 the shared state, each rank its RNG
        ckpt = node / "checkpoint-4"
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / f"rng_state_{rank}.pth").write_bytes(b"rng%d" % rank)
        if rank == 0:
            (ckpt / "model.safetensors").write_bytes(b"m" * 1000)
            (ckpt / "trainer_state.json").write_text('{"global_step": 4}')
    cfg = config("/m", "/d.jsonl", f"s3://{s3_bucket}/run/sft", save_steps=4)
    dest = f"{cfg.output_uri}/checkpoints/checkpoint-4"
    uris.write_bytes(f"{dest}/stale-from-an-interrupted-upload", b"x")
    marker = {"step": 4, "config_fingerprint": checkpointing.checkpoint_fingerprint(cfg), "config": {}}

    def save(rank):
        upload_checkpoint(
            str(nodes[rank] / "checkpoint-4"), dest, rank, 4, f"node-{nodes[rank].name}", marker
        )

    assert _run_ranks(monkeypatch, 4, save) == {}
    done = json.loads(uris.read_text(f"{dest}/{CHECKPOINT_MARKER}"))
    assert done["world_size"] == 4 and done["step"] == 4
    assert done["files"] == sorted(
        ["model.safetensors", "trainer_state.json"] + [f"rng_state_{r}.pth" for r in range(4)]
    )
    assert not uris.exists(f"{dest}/stale-from-an-interrupted-upload")
    for rank in range(4):
        assert uris.read_bytes(f"{dest}/rng_state_{rank}.pth") == b"rng%d" % rank
        mine = json.loads(uris.read_text(f"{dest}/_ranks/rank-{rank:05d}.json"))
        assert f"rng_state_{rank}.pth" in mine["files"]  # each rank uploaded its own RNG state
    assert [c.step for c in list_checkpoints(cfg.output_uri) if c.marker] == [4]

    # rank 3 dies while uploading checkpoint-8: nothing marks it complete, a rerun resumes from 4
    for rank, node in nodes.items():
        ckpt = node / "checkpoint-8"
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / f"rng_state_{rank}.pth").write_bytes(b"x")

    def save8(rank):
        upload_checkpoint(
            str(nodes[rank] / "checkpoint-8"), dest.replace("-4", "-8"), rank, 4, nodes[rank].name, marker
        )

    errors = _run_ranks(monkeypatch, 4, save8, fail_rank=3)
    assert isinstance(errors.pop(3), OSError) and set(errors) == {0, 1, 2}  # the others fail at the barrier
    assert not uris.exists(f"{cfg.output_uri}/checkpoints/checkpoint-8/{CHECKPOINT_MARKER}")
    start = resume_point(cfg.output_uri, cfg, "sft", was_complete=False)
    assert start.step == 4
    assert not uris.exists(f"{cfg.output_uri}/checkpoints/checkpoint-8")  # the incomplete one is deleted


def _two_nodes(cfg: SftConfig, tmp_path, tag: str) -> None:
    """``distilflow stage sft`` on two "nodes" of one process each: two torchrun agents on this machine,
    each with its own temporary folder (so neither sees the other's scratch files, as on real nodes)."""
    import subprocess

    import yaml

    from tests.conftest import free_port

    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    port = free_port()
    procs = []
    for node in range(2):
        tmp = tmp_path / f"{tag}-node{node}"
        tmp.mkdir()
        command = ["torchrun", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node)]
        command += ["--master_addr", "127.0.0.1", "--master_port", str(port)]
        command += ["--no-python", "distilflow", "stage", "sft", "--config", str(path)]
        log = open(tmp_path / f"{tag}-node{node}.log", "w")  # noqa: SIM115 - closed below
        env = {**os.environ, "TMPDIR": str(tmp)}
        procs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    for proc, log in procs:
        proc.wait(timeout=600)
        log.close()
    logs = "".join((tmp_path / f"{tag}-node{n}.log").read_text()[-3000:] for n in range(2))
    assert all(proc.returncode == 0 for proc, _ in procs), logs


@pytest.mark.slow
def test_sft_two_nodes_checkpoint_from_every_node_and_resume(tiny_qwen3, tmp_path, s3_bucket):
    """Two nodes (torchrun agents with separate scratch folders), gloo, S3 output: node 1's rank writes
    its own RNG state into the shared checkpoint with its done marker; rank 0 marks it complete. After a
    simulated preemption, both nodes resume from step 4, each rank with its own RNG state: with dropout
    in the model, the final loss equals the uninterrupted run only if both ranks' RNG were restored."""
    import shutil

    from distilflow.training.checkpointing import list_checkpoints

    model = tmp_path / "dropout-model"  # dropout makes the result depend on every rank's RNG stream
    shutil.copytree(tiny_qwen3, model)
    cfg_json = json.loads((model / "config.json").read_text())
    cfg_json["attention_dropout"] = 0.2
    (model / "config.json").write_text(json.dumps(cfg_json))

    data = str(tmp_path / "sft.jsonl")
    write_jsonl(data, examples(8))
    settings = dict(max_steps=6, per_device_train_batch_size=2, save_steps=2)
    cfg = config(str(model), data, f"s3://{s3_bucket}/two-nodes/sft", **settings)
    _two_nodes(cfg, tmp_path, "first")
    first = json.loads(uris.read_text(f"{cfg.output_uri}/{MANIFEST}"))["result"]
    assert first["steps"] == 6 and first["resumed_from_step"] is None

    assert [c.step for c in list_checkpoints(cfg.output_uri)] == [4, 6]
    ckpt = f"{cfg.output_uri}/checkpoints/checkpoint-4"
    marker = json.loads(uris.read_text(f"{ckpt}/_COMPLETE"))
    assert marker["world_size"] == 2
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "trainer_state.json"} <= set(
        marker["files"]
    )
    rank1 = json.loads(uris.read_text(f"{ckpt}/_ranks/rank-00001.json"))
    assert "rng_state_1.pth" in rank1["files"]  # uploaded by node 1 itself: node 0 never had it
    assert rank1["node"] != json.loads(uris.read_text(f"{ckpt}/_ranks/rank-00000.json"))["node"]

    # preempted while uploading checkpoint-6: the stage is unfinished, checkpoint-6 incomplete
    for name in (MARKER, "model"):
        uris.remove(f"{cfg.output_uri}/{name}", recursive=True)
    uris.remove(f"{cfg.output_uri}/checkpoints/checkpoint-6/_COMPLETE")
    _two_nodes(cfg, tmp_path, "again")  # fresh nodes: empty scratch folders
    again = json.loads(uris.read_text(f"{cfg.output_uri}/{MANIFEST}"))["result"]
    assert again["resumed_from_step"] == 4 and again["steps"] == 6
    assert again["final_loss"] == pytest.approx(first["final_loss"], rel=1e-5)


@pytest.mark.unit
def test_model_card_names_data_teacher_recipe_and_metrics(tmp_path):
    """The card follows the data back through curate's manifest to distill's resolved config."""
    from distilflow.outputs import StageOutput
    from distilflow.training.save import lineage, model_card

    distill = StageOutput(str(tmp_path / "distill"), "distill")
    uris.write_text(
        distill.path("config.resolved.yaml"),
        "teachers:\n- {name: r1, model: deepseek-ai/DeepSeek-R1}\n- {model: Qwen/QwQ-32B}\n",
    )
    curate = StageOutput(str(tmp_path / "curate"), "curate")
    uris.write_text(curate.path("config.resolved.yaml"), "output_uri: x\npreset: thoughty\nrv_target: 5\n")
    curate.finish(
        result={}, inputs={"traces": distill.path("traces.jsonl")}, counts={"sft": 40, "dropped_rv": 3}
    )

    origin = lineage(curate.uri)
    assert origin["teachers"] == {"r1": "deepseek-ai/DeepSeek-R1", "QwQ-32B": "Qwen/QwQ-32B"}
    assert origin["curate_recipe"] == {"preset": "thoughty", "rv_target": 5}
    result = {"first_loss": 2.0, "final_loss": 0.5, "steps": 10, "rows_used": 38, "rows_dropped": 2}
    card = model_card(
        "sft", "Qwen/Qwen3-4B", curate.path("sft.jsonl"), result, {"max_length": 4096}, origin=origin
    )
    assert "- r1: `deepseek-ai/DeepSeek-R1`" in card and "- QwQ-32B: `Qwen/QwQ-32B`" in card
    assert "rows used: 38, dropped for length: 2 (max_length 4096 tokens" in card
    assert "curate counts: dropped_rv 3, sft 40" in card and f"traces from: `{distill.uri}`" in card
    assert '"preset": "thoughty"' in card and '"max_length": 4096' in card and "- final_loss: 0.5" in card
    # a JSONL given directly has no lineage; the card says so instead of failing
    assert lineage(str(tmp_path / "rows.jsonl")) == {}
    assert "not recorded" in model_card("sft", "m", "rows.jsonl", result, {})


@pytest.mark.unit
def test_progress_eta_counts_only_steps_taken_by_this_run():
    from distilflow.training.callbacks import progress_line

    assert progress_line("sft", 30, 100, 0, 15.0) == "[sft] step 30/100 (30%) 2.00 steps/s ETA 0:00:35"
    # resumed at step 20: 10 steps in 5 s, not 30
    assert progress_line("sft", 30, 100, 20, 5.0) == "[sft] step 30/100 (30%) 2.00 steps/s ETA 0:00:35"
    assert progress_line("sft", 20, 9000, 20, 1.0).endswith("0.00 steps/s ETA ?")
    assert progress_line("sft", 1000, 9000, 0, 500.0).endswith("ETA 1:06:40")


# ---- the GPU benchmark's arithmetic and configuration (bench/bench_sft.py --gpu) ----


def _bench():
    import importlib.util

    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))), "bench", "bench_sft.py"
    )
    spec = importlib.util.spec_from_file_location("bench_sft", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.unit
def test_bench_gpu_peak_flops_and_mfu():
    bench = _bench()
    assert bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert bench.peak_flops("NVIDIA H200") == 989e12  # not H20's
    assert bench.peak_flops("NVIDIA H20") == 148e12
    assert bench.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert bench.peak_flops("NVIDIA A10G") == 70e12 and bench.peak_flops("NVIDIA A10") == 125e12
    assert bench.peak_flops("NVIDIA L40S") == 362e12 and bench.peak_flops("NVIDIA L4") == 121e12
    assert bench.peak_flops("Some Future GPU") is None
    assert bench.peak_flops("NVIDIA H100 80GB HBM3", override_tflops=500) == 500e12
    # 0.5e9 params at 100k tokens/s on 2 GPUs of 1000 TFLOP/s: 6 * 0.5e9 * 1e5 / 2e15 = 15%
    assert bench.mfu(500_000_000, 100_000.0, 1000e12, 2) == pytest.approx(0.15)


def test_bench_gpu_model_and_training_config(tmp_path, monkeypatch):
    """Qwen2.5-0.5B's shape has about 494M parameters; the benchmark trains it with the stage's own
    arguments: bf16 on a GPU, DeepSpeed ZeRO-2, no checkpoints."""
    import argparse

    from distilflow.training import arguments

    bench = _bench()
    cfg = bench.qwen2_config("0.5b")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.tie_word_embeddings) == (
        896,
        24,
        151936,
        True,
    )
    assert 490e6 < bench.count_params(cfg) < 500e6

    opts = argparse.Namespace(
        warmup=5, steps=30, batch=4, seq=2048, zero="zero2", gradient_checkpointing=False
    )
    sft = bench.gpu_sft_config(opts, "/model", "/data.jsonl", str(tmp_path / "out"), processes=8)
    assert sft.max_steps == 35 and sft.deepspeed == "zero2" and sft.save_steps == 0 and sft.processes == 8
    monkeypatch.setattr(arguments, "on_gpu", lambda: True)
    kwargs = arguments.training_arguments(lambda **kw: kw, sft, str(tmp_path / "scratch"))
    assert kwargs["bf16"] is True and kwargs["gradient_checkpointing"] is False
    assert kwargs["deepspeed"]["zero_optimization"]["stage"] == 2
    assert kwargs["save_strategy"] == "no" and kwargs["per_device_train_batch_size"] == 4


def test_no_examples_fails_or_publishes_the_untrained_model_when_asked(tiny_qwen3, tmp_path):
    """curate kept nothing (say, no trace had a correct answer): by default the stage fails naming the
    data; with if_no_examples: skip it trains nothing and publishes the starting model byte for byte,
    its result saying so, and a rerun reuses that output."""
    from distilflow.components.sft.run import run
    from distilflow.records import RecordError

    data = curate_output(str(tmp_path), "sft.jsonl", [])
    with pytest.raises(RecordError, match=r"holds no sft rows; nothing to train on"):
        run(config(tiny_qwen3, data, str(tmp_path / "fail")))
    assert not os.path.exists(tmp_path / "fail" / MARKER)

    cfg = config(tiny_qwen3, data, str(tmp_path / "sft"), if_no_examples="skip")
    result = run(cfg)
    assert result.trained is False and result.steps == 0 and result.rows_used == 0
    assert "holds no sft examples" in result.skipped and result.first_loss is None
    for name in os.listdir(tiny_qwen3):
        with (
            open(os.path.join(tiny_qwen3, name), "rb") as a,
            open(os.path.join(result.model_uri, name), "rb") as b,
        ):
            assert a.read() == b.read(), name
    manifest = json.loads(uris.read_text(os.path.join(cfg.output_uri, MANIFEST)))
    assert manifest["result"]["trained"] is False and os.path.exists(os.path.join(cfg.output_uri, MARKER))
    assert run(cfg) == result
