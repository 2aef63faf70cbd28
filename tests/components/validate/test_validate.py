"""The validate stage lists every problem with a pipeline config before any work starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from distilflow.components.validate.config import ValidateConfig
from distilflow.components.validate.run import run
from distilflow.errors import ConfigError
from distilflow.outputs import MARKER

STAGES = ["validate", "distill", "curate", "sft", "evaluate", "deploy"]


def make(tmp_path, pipeline_config, **kw) -> ValidateConfig:
    return ValidateConfig(
        output_uri=str(tmp_path / "run" / "validate"),
        run_uri=str(tmp_path / "run"),
        stages=STAGES,
        pipeline_config=pipeline_config,
        **kw,
    )


def good_config(problems_file, tiny_qwen3):
    teacher = {"backend": "transformers", "model": tiny_qwen3}
    return {
        "distill": {"problems_uri": problems_file, "teacher": teacher},
        "curate": {"judge": teacher},
        "sft": {"model": tiny_qwen3},
        "evaluate": {"problems_uri": problems_file},
        "deploy": {},
    }


def test_valid_config_passes_and_writes_report(tmp_path, problems_file, tiny_qwen3):
    result = run(make(tmp_path, good_config(problems_file, tiny_qwen3)))
    assert (tmp_path / "run" / "validate" / MARKER).exists()
    report = json.loads((tmp_path / "run" / "validate" / "report.json").read_text())
    assert "sft" in report["configs"] and report["configs"]["sft"]["model"] == tiny_qwen3
    assert any("4 problems" in line for line in result.checked)
    assert any(line.startswith("distill.teacher") for line in result.checked)


def test_all_problems_listed_together(tmp_path, problems_file, tiny_qwen3):
    config = good_config(problems_file, tiny_qwen3)
    config["distill"]["problems_uri"] = str(tmp_path / "missing.jsonl")
    config["sft"]["model"] = str(tmp_path / "no-such-model")
    config["curate"]["no_such_field"] = 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "problem": "x"}\n{"id": "b"}\n')
    config["evaluate"]["problems_uri"] = str(bad)
    with pytest.raises(ConfigError) as exc:
        run(make(tmp_path, config))
    text = str(exc.value)
    assert "missing.jsonl" in text
    assert "no-such-model" in text
    assert "no_such_field" in text and "unknown key" in text
    assert f"{bad}:2" in text and "problem" in text
    assert "4 problem(s)" in text
    assert not (tmp_path / "run" / "validate" / MARKER).exists()


def test_model_without_chat_template(tmp_path, problems_file, tiny_qwen3):
    import shutil

    broken = tmp_path / "no-template"
    shutil.copytree(tiny_qwen3, broken)
    cfg_path = broken / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    (broken / "chat_template.jinja").unlink(missing_ok=True)
    config = good_config(problems_file, tiny_qwen3)
    config["sft"]["model"] = str(broken)
    with pytest.raises(ConfigError, match="chat template"):
        run(make(tmp_path, config))


def test_unreachable_endpoint_is_named(tmp_path, problems_file, tiny_qwen3):
    from tests.conftest import free_port

    config = good_config(problems_file, tiny_qwen3)
    url = f"http://127.0.0.1:{free_port()}/v1"
    config["distill"]["teacher"] = {"backend": "openai", "base_url": url, "model": "teacher"}
    with pytest.raises(ConfigError, match="unreachable") as exc:
        run(make(tmp_path, config))
    assert url in str(exc.value)


@pytest.mark.unit
def test_unknown_stage_and_section(tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        ValidateConfig(output_uri="o", run_uri="r", stages=["validate", "sftt"])
    with pytest.raises(ConfigError, match="name no stage"):
        run(make(tmp_path, {"sftt": {}}))


def test_evaluate_models_are_checked(tmp_path, problems_file, tiny_qwen3):
    """evaluate's extra models (teacher, base student) are checked like teachers: a missing folder and an
    unreachable endpoint are named by their place in the list."""
    from tests.conftest import free_port

    config = good_config(problems_file, tiny_qwen3)
    url = f"http://127.0.0.1:{free_port()}/v1"
    config["evaluate"]["models"] = [
        {"name": "base", "model": tiny_qwen3},
        {"name": "gone", "model": str(tmp_path / "no-such-student")},
        {"name": "teacher", "model": "qwq", "backend": "openai", "base_url": url},
    ]
    with pytest.raises(ConfigError) as exc:
        run(make(tmp_path, config))
    text = str(exc.value)
    assert "evaluate.models[1]" in text and "no-such-student" in text
    assert "evaluate.models[2]" in text and url in text and "unreachable" in text
    assert "models[0]" not in text and "2 problem(s)" in text


def test_an_endpoint_teacher_storing_logits_needs_its_tokenizer_here(tmp_path, problems_file, tiny_qwen3):
    """distill.logits from an endpoint: the served model's tokenizer must be a folder or URI here (it
    reads the token ids); a hub name is refused before any GPU is claimed, a folder passes."""
    config = good_config(problems_file, tiny_qwen3)
    endpoint = {
        "backend": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "Qwen/Qwen2.5-72B-Instruct",
    }
    config["distill"] |= {"teacher": endpoint, "logits": {"top_k": 20}}
    with pytest.raises(
        ConfigError, match=r"distill.teacher.tokenizer: no tokenizer at 'Qwen/Qwen2.5-72B-Instruct'"
    ):
        run(make(tmp_path, config, check_endpoints=False))
    config["distill"]["teacher"]["tokenizer"] = tiny_qwen3
    result = run(make(tmp_path, config, check_endpoints=False))
    assert f"distill.teacher.tokenizer: {tiny_qwen3}" in result.checked


def test_a_teacher_inside_a_settings_block_is_checked(tmp_path, problems_file, tiny_qwen3):
    """sft.gkd.teacher (on-policy distillation) is a model like any other: a missing folder is named
    before any GPU is claimed."""
    config = good_config(problems_file, tiny_qwen3)
    config["sft"]["gkd"] = {"teacher": {"backend": "transformers", "model": str(tmp_path / "no-teacher")}}
    with pytest.raises(ConfigError, match=r"sft.gkd.teacher: .*no-teacher"):
        run(make(tmp_path, config))
    config["sft"]["gkd"]["teacher"]["model"] = tiny_qwen3
    assert f"sft.gkd.teacher: model {tiny_qwen3}" in run(make(tmp_path, config)).checked


def _validate_cli(*args: str):
    from click.testing import CliRunner

    from distilflow.client.cli import main

    return CliRunner().invoke(main, ["validate", *args])


@pytest.mark.unit
def test_validate_lists_the_defaults_it_filled_in_and_prints_each_check_once(tmp_path, problems_file):
    """A config with no teacher: the quickstart's SmolLM2 teacher is shown as the pipeline's default,
    sections left out are named as running on defaults, the student is named but not built."""
    import tempfile

    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"distill: {{problems_uri: {problems_file}, n: 3}}\n")
    student = os.path.join(tempfile.gettempdir(), "distilflow-validate", "models", "student-tiny-qwen3")
    shutil.rmtree(os.path.dirname(os.path.dirname(student)), ignore_errors=True)
    done = _validate_cli(str(cfg))
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0] == f"validating {cfg} for pipeline quickstart (the default; --pipeline NAME for another)"
    filled = lines[lines.index("defaults filled in (not in your config):") + 1 :]
    filled = [x.strip() for x in filled[: next(i for i, x in enumerate(filled) if not x.startswith("  "))]]
    assert filled[0].startswith("distill.teacher = {backend: transformers, model: smollm2")
    assert filled[0].endswith("(default of the pipeline, quickstart.yaml)")
    assert "distill.n = 2" not in done.output  # the user's n=3 is no default
    assert filled[1] == "distill.prompt = thought_solution (default of the pipeline, quickstart.yaml)"
    assert [x.split(":")[0] for x in filled[2:]] == ["curate", "sft", "evaluate", "deploy"]
    assert "model=a tiny Qwen3 student, built when the run starts" in filled[3]
    checks = [x for x in lines if x.startswith("ok  ")]
    assert len(checks) == len(set(checks)) >= 8
    assert "[validate]" not in done.output  # the stage's own log lines are not printed a second time
    assert not os.path.exists(student)  # named, not built


@pytest.mark.unit
def test_validate_never_invents_a_teacher_for_a_recipe(tmp_path, problems_file):
    cfg = tmp_path / "mine.yaml"
    sections = {"distill": {"problems_uri": problems_file}, "evaluate": {"problems_uri": problems_file}}
    cfg.write_text(json.dumps(sections))
    done = _validate_cli(str(cfg), "--pipeline", "thoughtx")
    assert done.exit_code == 1
    assert "give exactly one of teacher (one model) or teachers" in done.output
    assert "smollm2" not in done.output and "the default;" not in done.output


@pytest.mark.unit
def test_validate_builds_no_model_and_imports_no_torch(tmp_path, problems_file):
    """What made validate take 5-10 s: it built the quickstart's tiny student (torch, transformers)."""
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"distill: {{problems_uri: {problems_file}}}\n")
    code = (
        "import sys; from distilflow.client.local import validate_config; "
        f"v = validate_config('quickstart', {str(cfg)!r}); "
        "print(sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules)); "
        "print(*v.checked, sep=chr(10))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded, *checked = done.stdout.splitlines()
    assert loaded == "[]" and len(checked) == 11
    # the student (sft.model, and evaluate's untrained-student entry) is named, never built or checked
    pending = [line for line in checked if line.endswith("(made when the run starts; not checked now)")]
    assert [line.split(":")[0] for line in pending] == ["sft.model", "evaluate.models[0]"]
