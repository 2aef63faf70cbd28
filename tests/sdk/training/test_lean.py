"""distilflow.training.lean, throughput and kernels on hand-made values (issue 22)."""

from __future__ import annotations

import pytest

from distilflow.errors import ConfigError


def test_lean_arguments_build_valid_training_arguments(tmp_path):
    from transformers import TrainingArguments

    from distilflow.training.lean import lean_arguments

    cpu = lean_arguments(False)
    assert cpu == {
        "logging_nan_inf_filter": False,
        "include_num_input_tokens_seen": "no",
        "optim": "adamw_torch_fused",
        "dataloader_pin_memory": False,
    }
    gpu = lean_arguments(True)
    assert gpu["dataloader_num_workers"] == 2 and gpu["dataloader_persistent_workers"] is True
    assert gpu["accelerator_config"] == {"non_blocking": True} and gpu["dataloader_pin_memory"] is True
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **gpu)
    assert args.accelerator_config.non_blocking is True and args.dataloader_prefetch_factor == 2


def test_device_means_average_each_name_and_reset():
    import torch

    from distilflow.training.lean import DeviceMeans

    means = DeviceMeans()
    for value in (1.0, 2.0, 6.0):
        means.add("a", torch.tensor(value, requires_grad=True) * 1)
    means.add("b", torch.tensor(5))
    assert means.pop() == {"a": 3.0, "b": 5.0}
    assert means.pop() == {}
    means.add("a", torch.tensor(4.0))
    assert means.pop(gather=lambda t: torch.cat([t, t + 2])) == {"a": 5.0}  # mean over two "ranks"


def test_token_counter_counts_real_tokens_and_slots():
    import torch

    from distilflow.training.throughput import TokenCounter, batch_tokens, describe

    counter = TokenCounter()
    padded = {
        "input_ids": torch.zeros(2, 5, dtype=torch.long),
        "attention_mask": torch.tensor([[1] * 5, [1, 1, 0, 0, 0]]),
    }
    packed = {
        "input_ids": torch.zeros(1, 9, dtype=torch.long),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]),
    }
    counter.add(padded)
    counter.add(packed)
    counter.add([{"prompt": "GRPO rows are not token batches"}])
    assert batch_tokens({"prompt": "x"}) is None
    assert counter.totals() == (16, 19) and counter.batches == 2
    counter.started = 10.0
    rates = counter.rates(16, 19, now=14.0)
    assert rates == {"tokens_trained": 16, "padding_share": pytest.approx(3 / 19), "tokens_per_second": 4.0}
    assert describe(rates) == "16 tokens (15.8% padding), 4 tokens/s"
    assert counter.totals(gather=lambda t: torch.cat([t, t])) == (32, 38)
    assert TokenCounter().totals() == (0, 0)


def test_liger_arguments(tmp_path, monkeypatch, capsys):
    import importlib.util
    import json

    from distilflow.training import kernels

    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    assert kernels.liger_arguments(False, str(folder), "sft", gpu=True) == {}
    assert kernels.liger_arguments(True, str(folder), "sft", gpu=False) == {}
    assert "[sft] use_liger_kernel: off on a CPU" in capsys.readouterr().out

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real(name, *a)
    )
    with pytest.raises(
        ConfigError, match=r"liger-kernel is not installed: pip install 'distilflow\[liger\]'"
    ):
        kernels.liger_arguments(True, str(folder), "dpo", gpu=True)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else real(name, *a)
    )
    assert kernels.liger_arguments(True, str(folder), "sft", gpu=True) == {
        "use_liger_kernel": True,
        "liger_kernel_config": {"fused_linear_cross_entropy": False},
    }
    assert "use_liger_kernel: on" in capsys.readouterr().out
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma2"}))
    with pytest.raises(
        ConfigError, match=r"'gemma2' model; .* qwen2, qwen3, llama. Set reward.use_liger_kernel=false"
    ):
        kernels.liger_arguments(True, str(folder), "reward", gpu=True)


def test_training_arguments_carry_the_lean_settings(tmp_path, monkeypatch):
    """Every training stage's arguments (``training_arguments``) hold the lean settings: workers and
    non-blocking copies on a GPU only."""
    from distilflow.components.sft.config import SftConfig
    from distilflow.training import arguments

    cfg = SftConfig(output_uri=str(tmp_path / "o"), data_uri="/x.jsonl", model="/m")
    monkeypatch.setattr(arguments, "on_gpu", lambda: True)
    gpu = arguments.training_arguments(lambda **kw: kw, cfg, str(tmp_path))
    assert gpu["logging_nan_inf_filter"] is False and gpu["include_num_input_tokens_seen"] == "no"
    assert gpu["dataloader_num_workers"] == 2 and gpu["accelerator_config"] == {"non_blocking": True}
    assert gpu["dataloader_pin_memory"] is True and gpu["bf16"] is True
    monkeypatch.setattr(arguments, "on_gpu", lambda: False)
    cpu = arguments.training_arguments(lambda **kw: kw, cfg, str(tmp_path))
    assert cpu["dataloader_num_workers"] == 0 and "accelerator_config" not in cpu
    assert cpu["dataloader_pin_memory"] is False and cpu["logging_nan_inf_filter"] is False
