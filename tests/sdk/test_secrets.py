"""Secrets stay in the environment: every ``*_env`` field of every config refuses a key pasted into it
(naming the field, never the value), and a key variable a stage needs is reported when unset."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel, ValidationError

from distilflow.components import iter_config_classes
from distilflow.config import BaseConfig
from distilflow.errors import ConfigError
from distilflow.secrets import env_field_problems, is_env_field, looks_like_key, unset_keys
from distilflow.teachers.config import TeacherConfig

pytestmark = pytest.mark.unit

# Fake keys in the shapes providers publish (assembled here so that no scanner mistakes them for real).
PASTED = {
    "openai": "sk-" + "proj-" + "Pz7Qm2Lx9Vb4Nc6Rt1Yw8Ks3",
    "anthropic": "sk-" + "ant-api03-" + "Hq5Jv8Wd2Fz7Lm4Xc1Bn6",
    "aws": "AKIA" + "Q7W2E9R4T1Y6U3I8",
    "alibaba": "LTAI" + "5tQ8wZ3mK7pV2xR9",
    "huggingface": "hf_" + "Kd8Lp3Qs7Vx2Zb6Nm4Wr9Tc5",
    "github": "ghp_" + "R8t2Y7u3I9o4P6a1S5d0F2g8H3j7K1l9Z4x6",
    "random": "Zx8kQ2mN4pL7vR9tY3wB6cD1eF5gH0",
}
NAMES = [
    "TEACHER_API_KEY",
    "OPENAI_API_KEY",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
    "AWS_SECRET_ACCESS_KEY",
    "HF_TOKEN",
]


def test_key_shapes_are_told_from_variable_names():
    assert {k: bool(looks_like_key(v)) for k, v in PASTED.items()} == dict.fromkeys(PASTED, True)
    assert [n for n in NAMES if looks_like_key(n)] == []
    assert looks_like_key(PASTED["anthropic"]) == "an Anthropic API key (sk-ant-...)"


def env_fields() -> list[tuple[type[BaseConfig], str, typing.Any]]:
    """Every ``*_env`` field of every config class, found by walking them (not a hand list)."""
    return [
        (cls, name, info.annotation)
        for cls in iter_config_classes()
        for name, info in cls.model_fields.items()
        if is_env_field(name)
    ]


def pasted_value(annotation: typing.Any, key: str) -> list[typing.Any]:
    """The ways a key can be pasted into a field of this type (as the name, a list item, a dict key)."""
    text = str(annotation)
    if text.startswith("list["):
        return [[key]]
    if text.startswith("dict["):
        return [{key: "secret-name/key"}, {"AWS_SECRET_ACCESS_KEY": key}]
    return [key]


def test_the_walk_finds_every_kind_of_env_field():
    found = {(cls.__name__, name) for cls, name, _ in env_fields()}
    assert {
        ("TeacherConfig", "api_key_env"),
        ("ModelSpec", "api_key_env"),
        ("DeployConfig", "api_key_env"),
        ("EasConfig", "access_key_secret_env"),
        ("DlcSettings", "secret_env_names"),
    } <= found
    assert any(name == "secret_env" for _, name in found) and any(name == "env" for _, name in found)


@pytest.mark.parametrize("provider", list(PASTED))
def test_every_env_field_refuses_a_pasted_key_without_showing_it(provider):
    key = PASTED[provider]
    checked = 0
    for cls, name, annotation in env_fields():
        for value in pasted_value(annotation, key):
            with pytest.raises(ConfigError) as err:
                cls.from_dict({name: value}, where="c.yaml")
            message = str(err.value)
            lines = [line for line in message.splitlines() if f"{cls.__name__}.{name}" in line]
            assert lines, (cls.__name__, name, message)
            assert key not in message and key[:12] not in message, (cls.__name__, name)
            # a raw pydantic error (a traceback) does not echo it either
            with pytest.raises(ValidationError) as raw:
                cls.model_validate({name: value})
            assert key not in str(raw.value) and key not in repr(raw.value)
            checked += 1
    assert checked >= 12


def test_a_name_that_is_no_variable_name_is_refused_too():
    with pytest.raises(ConfigError, match=r"TeacherConfig.api_key_env: must be the name of an environment"):
        TeacherConfig.from_dict({"model": "m", "api_key_env": "my key"})
    assert TeacherConfig.from_dict(
        {"model": "m", "base_url": "http://h/v1", "api_key_env": "TEACHER_API_KEY"}
    )


def test_a_pipeline_config_with_a_pasted_key_is_refused_before_it_becomes_a_parameter():
    key = PASTED["openai"]
    tree = {"distill": {"teachers": [{"model": "m", "api_key_env": key}]}, "sft": {"secret_env": {"X": key}}}
    problems = env_field_problems(tree)
    assert [p.split(":")[0] for p in problems] == ["distill.teachers[0].api_key_env", "sft.secret_env"]
    assert not any(key in p for p in problems)


class Section(BaseModel):
    teacher: TeacherConfig
    judges: list[TeacherConfig] = []


def test_unset_keys_names_the_variable_a_stage_needs(monkeypatch):
    monkeypatch.delenv("TEACHER_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("JUDGE_KEY", "set")
    endpoint = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
    section = Section(
        teacher=TeacherConfig(**endpoint, api_key_env="TEACHER_API_KEY"),
        judges=[
            TeacherConfig(**endpoint, api_key_env="JUDGE_KEY"),
            TeacherConfig(**endpoint),  # the default variable, not chosen: a keyless endpoint is fine
            # the default, named as a config dumped with its defaults names it
            TeacherConfig(**endpoint, api_key_env="OPENAI_API_KEY"),
            TeacherConfig(
                backend="transformers", model="folder", api_key_env="UNSET_BUT_UNUSED"
            ),  # in-process: sends no key
        ],
    )
    (line,) = unset_keys(section, "distill")
    assert line.startswith("TEACHER_API_KEY is not set (distill.teacher.api_key_env names it)")
    monkeypatch.setenv("TEACHER_API_KEY", "")
    assert len(unset_keys(section, "distill")) == 1  # empty counts as unset
    monkeypatch.setenv("TEACHER_API_KEY", "x")
    assert unset_keys(section, "distill") == []
