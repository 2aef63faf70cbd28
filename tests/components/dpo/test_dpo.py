"""The `dpo` stage on a tiny Qwen3 model on CPU, including CogPO's per-pair beta."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from distilflow import uri as uris
from distilflow.components.dpo.config import DpoConfig
from distilflow.errors import IncompleteOutputError
from distilflow.outputs import MANIFEST, MARKER, StageOutput
from distilflow.records import Message, PreferencePair
from tests.conftest import curate_output

LONG = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)


def pairs(n: int = 8, long: int = 0, beta: bool = True) -> list[PreferencePair]:
    """Pairs preferring a boxed answer over filler; odd pairs carry their own beta when ``beta``."""
    rows = [
        PreferencePair(
            id=f"p{i}",
            prompt=[Message(role="user", content=f"What is {i} + 1?")],
            chosen=[
                Message(
                    role="assistant",
                    content=f"The answer is \\boxed{{{i + 1}}}.",
                    reasoning_content=f"{i} + 1 = {i + 1}",
                )
            ],
            rejected=[Message(role="assistant", content="The quick brown fox.")],
            beta=0.5 if beta and i % 2 else None,
        )
        for i in range(n)
    ]
    rows += [
        PreferencePair(
            id=f"long{i}",
            prompt=[Message(role="user", content="Say it.")],
            chosen=[Message(role="assistant", content=LONG)],
            rejected=[Message(role="assistant", content="No.")],
        )
        for i in range(long)
    ]
    return rows


def config(model: str, data_uri: str, output_uri: str, **overrides) -> DpoConfig:
    base = dict(
        output_uri=output_uri,
        data_uri=data_uri,
        model=model,
        max_steps=12,
        learning_rate=5e-3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_length=128,
        logging_steps=1,
    )
    base.update(overrides)
    return DpoConfig(**base)


def test_dpo_learns_preferences_saves_and_reuses(tiny_qwen3, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distilflow.components.dpo.run import run

    data = curate_output(str(tmp_path), "preference.jsonl", pairs(8, long=1))
    cfg = config(tiny_qwen3, data, str(tmp_path / "dpo"))
    result = run(cfg)

    assert result.rows_used == 8 and result.rows_dropped == 1
    assert result.per_sample_beta is True
    assert result.first_loss == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step one
    assert result.final_loss < 0.3, result
    assert result.final_reward_accuracy >= 0.75
    manifest = json.loads(uris.read_text(os.path.join(cfg.output_uri, MANIFEST)))
    assert manifest["metrics"]["beta_min"] == 0.1 and manifest["metrics"]["beta_max"] == 0.5
    assert os.path.exists(os.path.join(cfg.output_uri, MARKER))
    AutoModelForCausalLM.from_pretrained(result.model_uri)
    assert AutoTokenizer.from_pretrained(result.model_uri).chat_template

    again = run(cfg)
    assert again == result
    assert (
        json.loads(uris.read_text(os.path.join(cfg.output_uri, MANIFEST)))["finished_at"]
        == manifest["finished_at"]
    )


def test_per_pair_beta_is_applied(tiny_qwen3, tmp_path):
    """Batch loss with betas [b1, b2] equals the mean of each pair's loss at its own beta."""
    import torch
    from transformers import AutoModelForCausalLM

    from distilflow.components.dpo.run import build_rows, make_trainer
    from distilflow.models import load_tokenizer
    from distilflow.tiny import build_tiny

    # A reference that differs from the policy, so the DPO margin (and the effect of beta) is not zero
    ref = AutoModelForCausalLM.from_pretrained(build_tiny(str(tmp_path / "ref"), seed=1))
    tokenizer = load_tokenizer(tiny_qwen3)

    def loss(rows: list[PreferencePair], beta: float = 0.1, per_sample: bool = True) -> float:
        cfg = config(tiny_qwen3, "/unused.jsonl", str(tmp_path / "o"), beta=beta, per_sample_beta=per_sample)
        table, _, _ = build_rows(rows, tokenizer, cfg)
        trainer = make_trainer(cfg, table, tokenizer, tiny_qwen3, ref_model=ref)
        columns = ["prompt_ids", "chosen_ids", "rejected_ids"] + (["beta"] if "beta" in table[0] else [])
        batch = trainer.data_collator([{k: ex[k] for k in columns} for ex in trainer.train_dataset])
        trainer.model.eval()
        shutil.rmtree(trainer.args.output_dir, ignore_errors=True)  # never saved: drop the scratch folder
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, batch).item()

    both = pairs(2)  # p0 has no beta (takes the config beta), p1 has beta 0.5
    mixed = loss(both, beta=0.1)
    alone = [loss([both[0]], beta=0.1, per_sample=False), loss([both[1]], beta=0.5, per_sample=False)]
    assert mixed == pytest.approx(sum(alone) / 2, rel=1e-4)
    assert mixed != pytest.approx(loss(both, beta=0.1, per_sample=False), rel=1e-3)


def test_dpo_refuses_incomplete_upstream(tiny_qwen3, tmp_path):
    from distilflow.components.dpo.run import run

    data = curate_output(str(tmp_path), "preference.jsonl", pairs(2), complete=False)
    with pytest.raises(IncompleteOutputError, match="no completion marker"):
        run(config(tiny_qwen3, data, str(tmp_path / "dpo")))


def test_dpo_component_wires_student_and_data(tiny_qwen3, tmp_path):
    """The component body resolves both upstream artifacts and, on a finished output, reuses it."""
    from kfp import dsl

    from distilflow.components.dpo.component import dpo
    from distilflow.components.dpo.run import run

    data = curate_output(str(tmp_path), "preference.jsonl", pairs(4, beta=False))
    # The student artifact, as sft publishes it: the model folder plus the stage folder that vouches for it
    sft_out = StageOutput(str(tmp_path / "sft"), "sft")
    sft_out.finish(result={})
    root = str(tmp_path / "run")
    section = dict(max_steps=2, learning_rate=1e-3, per_device_train_batch_size=2, max_length=128)
    stored = run(DpoConfig(output_uri=os.path.join(root, "dpo"), data_uri=data, model=tiny_qwen3, **section))
    assert stored.per_sample_beta is False

    student = dsl.Model(name="student", uri="x", metadata={"uri": tiny_qwen3, "stage_uri": sft_out.uri})
    model = dsl.Model(name="model", uri=str(tmp_path / "artifact"))
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    tensorboard = dsl.Artifact(name="tensorboard", uri=str(tmp_path / "tensorboard"))
    dpo.python_func(
        config={"dpo": section},
        output_uri=root,
        data=dsl.Dataset(name="data", uri="x", metadata={"uri": data}),
        student=student,
        model=model,
        metrics=metrics,
        report=dsl.HTML(name="report", uri=str(tmp_path / "report.html")),
        tensorboard=tensorboard,
    )
    assert os.listdir(tensorboard.path) == ["README.txt"]  # untracked: a note, no event files
    assert "rewards/margins" in (tmp_path / "report.html").read_text()
    assert model.metadata["uri"] == stored.model_uri
    assert metrics.metadata["steps"] == 2


def test_dpo_resumes_from_newest_complete_checkpoint(tiny_qwen3, tmp_path):
    """An unfinished output resumes from its newest checkpoint with a marker and ends where an
    uninterrupted run ends; a changed config is refused unless resume=false; the report has the margins."""
    import torch
    from safetensors.torch import load_file

    from distilflow.components.dpo.run import run
    from distilflow.errors import ConfigError
    from distilflow.training.checkpointing import list_checkpoints

    data = curate_output(str(tmp_path), "preference.jsonl", pairs(8))
    cfg = config(
        tiny_qwen3, data, str(tmp_path / "dpo"), max_steps=6, per_device_train_batch_size=3, save_steps=2
    )
    whole = run(cfg)
    assert whole.resumed_from_step is None
    weights = load_file(os.path.join(whole.model_uri, "model.safetensors"))
    ckpts = os.path.join(cfg.output_uri, "checkpoints")
    assert [c.step for c in list_checkpoints(cfg.output_uri)] == [4, 6]  # save_total_limit=2
    report = uris.read_text(os.path.join(cfg.output_uri, "report.html"))
    assert "rewards/margins" in report and report.count("<svg") == 4

    # Preempted while uploading checkpoint-6: no stage marker, no model, checkpoint-6 without its marker
    for name in (MARKER, MANIFEST, "model"):
        uris.remove(os.path.join(cfg.output_uri, name), recursive=True)
    os.remove(os.path.join(ckpts, "checkpoint-6", "_COMPLETE"))
    resumed = run(cfg)
    assert resumed.resumed_from_step == 4 and resumed.steps == 6
    again = load_file(os.path.join(resumed.model_uri, "model.safetensors"))
    for name in weights:
        torch.testing.assert_close(again[name], weights[name], rtol=1e-4, atol=1e-5, msg=name)

    # Unfinished again, but rerun with another learning rate: refused, naming the field and the ways out
    uris.remove(os.path.join(cfg.output_uri, MARKER))
    changed = cfg.model_copy(update={"learning_rate": 1e-3})
    with pytest.raises(ConfigError, match=r"learning_rate: 0\.005 -> 0\.001.*resume=false"):
        run(changed)
    fresh = run(changed.model_copy(update={"resume": False}))
    assert fresh.resumed_from_step is None and fresh.steps == 6

    # A finished output rerun with another config trains anew: its old checkpoints are discarded, not refused
    other = run(changed.model_copy(update={"learning_rate": 2e-3}))
    assert other.resumed_from_step is None and other.steps == 6


def test_explicit_reference_model(tiny_qwen3, tmp_path):
    """ref_model names the frozen reference: with one that differs from the start model, the implicit
    reward margin is not zero already at the first step (with the start model as reference it is 0)."""
    from distilflow.components.dpo.run import run
    from distilflow.tiny import build_tiny

    ref = build_tiny(str(tmp_path / "ref"), seed=1)
    data = curate_output(str(tmp_path), "preference.jsonl", pairs(4))
    cfg = config(tiny_qwen3, data, str(tmp_path / "dpo"), max_steps=1, ref_model=ref, save_steps=0)
    result = run(cfg)
    assert abs(result.final_reward_margin) > 1e-4
    assert '"ref_model"' in uris.read_text(os.path.join(result.model_uri, "README.md"))


def test_lora_uses_the_policy_with_its_adapter_off_as_reference(tiny_qwen3, tmp_path):
    """With LoRA and no ref_model the reference is the policy with its adapter disabled (no copy):
    the first step's loss is log 2 (policy == reference), training lowers it, and the saved model is
    the merged one, with no adapter weights left in it."""
    from safetensors.torch import load_file

    from distilflow.components.dpo.run import run

    data = curate_output(str(tmp_path), "preference.jsonl", pairs(8))
    cfg = config(tiny_qwen3, data, str(tmp_path / "dpo"), lora=True, lora_r=8, lora_alpha=16, save_steps=0)
    result = run(cfg)
    assert result.first_loss == pytest.approx(0.6931, abs=1e-3)
    assert result.final_loss < result.first_loss - 0.05, result
    weights = load_file(os.path.join(result.model_uri, "model.safetensors"))
    assert weights and not any("lora" in name for name in weights)
    assert '"lora": true' in uris.read_text(os.path.join(result.model_uri, "README.md"))


def sequence_logps(model, inputs):
    """Summed log-probabilities of each row's completion tokens, from a plain forward pass (not TRL's)."""
    import torch

    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    tokens = torch.gather(logp, 2, inputs["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    return (tokens * inputs["completion_mask"][:, 1:]).sum(dim=1)


def test_cogpo_beta_reaches_the_loss_inside_train(tiny_qwen3, tmp_path, monkeypatch):
    """CogPO inside the dpo stage's real ``Trainer.train()`` (``run``: rows -> trainer -> train): at every
    step the loss TRL computes uses each pair's own beta, and equals -log sigmoid(beta_i * margin_i)
    averaged, with the margins computed here from plain forward passes of the policy and the reference.
    If the beta column fell out of the dataset (TRL's remove_unused_columns), the collator or the loss,
    the scalar config beta would be used and this fails."""
    import torch
    import torch.nn.functional as F
    from trl import DPOTrainer

    from distilflow.components.dpo.run import run
    from distilflow.models import load_tokenizer

    rows = pairs(4, beta=False)
    betas = {f"What is {i} + 1?": b for i, b in enumerate([0.05, 0.5, 1.0, 2.0])}
    rows = [p.model_copy(update={"beta": betas[p.prompt[0].content]}) for p in rows]
    data = curate_output(str(tmp_path), "preference.jsonl", rows)
    tokenizer = load_tokenizer(tiny_qwen3)
    seen: list[tuple[list[float], float, float, float]] = []
    original = DPOTrainer._compute_loss

    def observed(self, model, inputs, return_outputs):
        beta = self.beta
        with torch.no_grad():
            policy, ref = sequence_logps(model, inputs), sequence_logps(self.ref_model, inputs)
        loss = original(self, model, inputs, return_outputs)
        half = inputs["input_ids"].shape[0] // 2  # TRL's batch: the chosen rows, then the rejected ones
        prompts = [tokenizer.decode(ids) for ids in inputs["input_ids"][:half]]
        expected_betas = [next(b for q, b in betas.items() if q in text) for text in prompts]
        margin = (policy[:half] - ref[:half]) - (policy[half:] - ref[half:])
        want = -F.logsigmoid(torch.tensor(expected_betas) * margin).mean().item()
        scalar = -F.logsigmoid(0.1 * margin).mean().item()  # what the config's beta would give
        got_betas = beta.tolist() if torch.is_tensor(beta) else [beta] * half
        assert got_betas == pytest.approx(expected_betas), "each row's own beta, in batch order"
        seen.append((got_betas, loss.item(), want, scalar))
        return loss

    monkeypatch.setattr(DPOTrainer, "_compute_loss", observed)
    result = run(config(tiny_qwen3, data, str(tmp_path / "dpo"), max_steps=4, save_steps=0, beta=0.1))
    assert result.per_sample_beta is True and result.steps == 4 and len(seen) == 4
    for _, loss, want, _ in seen:
        assert loss == pytest.approx(want, rel=1e-4, abs=1e-5)
    # after the first step the policy has moved: the betas change the loss (the check can fail)
    assert any(abs(want - scalar) > 1e-3 for _, _, want, scalar in seen[1:])
