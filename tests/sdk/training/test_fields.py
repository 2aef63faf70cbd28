"""The training stages' shared config block (``distilflow.training.fields.TrainingConfig``): each stage
keeps its own defaults, redeclares only what differs, refuses max_steps=0, and the fields declared
resume-neutral are exactly the ones a checkpoint ignores."""

from __future__ import annotations

import pytest

from distilflow.components.dpo.config import DpoConfig
from distilflow.components.reward.config import RewardConfig
from distilflow.components.rl.config import RlConfig
from distilflow.components.sft.config import SftConfig
from distilflow.training.checkpointing import checkpoint_config, checkpoint_fingerprint
from distilflow.training.fields import TrainingConfig, resume_neutral

pytestmark = pytest.mark.unit

REQUIRED = {
    SftConfig: {"output_uri": "/o", "data_uri": "/d.jsonl", "model": "/m"},
    DpoConfig: {"output_uri": "/o", "data_uri": "/d.jsonl", "model": "/m"},
    RewardConfig: {"output_uri": "/o", "data_uri": "/d.jsonl", "model": "/m"},
    RlConfig: {"output_uri": "/o", "model": "/m", "problems_uri": "/p.jsonl"},
}
HYPER = ("num_train_epochs", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps")


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (SftConfig, (2.0, 1e-5, 1, 8, 10)),
        (DpoConfig, (1.0, 5e-7, 1, 8, 10)),
        (RewardConfig, (1.0, 1e-5, 4, 2, 10)),
        (RlConfig, (1.0, 1e-6, 8, 1, 1)),
    ],
)
def test_each_stage_keeps_its_defaults(cls, expected):
    cfg = cls(**REQUIRED[cls])
    assert (*(getattr(cfg, name) for name in HYPER), cfg.logging_steps) == expected
    assert (cfg.max_steps, cfg.lora, cfg.lora_r, cfg.lora_alpha, cfg.gradient_checkpointing, cfg.seed) == (
        -1,
        False,
        16,
        32,
        None,
        0,
    )


@pytest.mark.parametrize("cls", list(REQUIRED))
def test_a_stage_redeclares_only_what_differs(cls):
    base = TrainingConfig.model_fields
    own = [name for name in cls.__annotations__ if name in base]
    same = [
        name
        for name in own
        if (cls.model_fields[name].default, cls.model_fields[name].description)
        == (base[name].default, base[name].description)
    ]
    assert same == [], f"{cls.__name__} repeats the shared fields {same}; inherit them from TrainingConfig"


@pytest.mark.parametrize("cls", list(REQUIRED))
def test_max_steps_zero_is_refused(cls):
    with pytest.raises(ValueError, match="max_steps=0 trains nothing"):
        cls(**REQUIRED[cls], max_steps=0)


def test_resume_neutral_fields_are_the_ones_a_checkpoint_ignores():
    cfg = SftConfig(**REQUIRED[SftConfig])
    neutral = {"save_steps", "save_total_limit", "logging_steps", "resume"}
    neutral |= {"use_liger_kernel"}  # the same computation in other kernels: a checkpoint stays usable
    neutral |= {"launcher", "runtime", "namespace", "env", "secret_env", "dlc"}
    neutral |= {"tracking"}  # where the run is tracked: also left out of the stage's fingerprint
    assert resume_neutral(cfg) == neutral
    assert resume_neutral(RlConfig(**REQUIRED[RlConfig])) == neutral  # rl's own logging_steps too
    assert set(checkpoint_config(cfg)) == set(cfg.to_dict()) - neutral
    same = checkpoint_fingerprint(cfg)
    assert checkpoint_fingerprint(cfg.model_copy(update={"logging_steps": 3, "save_steps": 7})) == same
    assert checkpoint_fingerprint(cfg.model_copy(update={"use_liger_kernel": True})) == same
    assert checkpoint_fingerprint(cfg.model_copy(update={"learning_rate": 3e-5})) != same
    assert checkpoint_fingerprint(cfg.model_copy(update={"nodes": 2})) != same  # the world size changes
    tracked = SftConfig(**REQUIRED[SftConfig], tracking={"backend": "mlflow", "pipeline_run": "run-2"})
    assert tracked.fingerprint() == cfg.fingerprint()  # a rerun under another pipeline run reuses the output
    assert checkpoint_fingerprint(tracked) == same
    assert cfg.model_copy(update={"learning_rate": 3e-5}).fingerprint() != cfg.fingerprint()
