"""The CLI is thin over the SDK: commands succeed with output a user can act on, and fail with
exit 1 and a one-line reason."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from distilflow.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_pipelines_lists_quickstart():
    res = invoke("pipelines")
    assert res.exit_code == 0
    assert res.output.split()[0] == "quickstart"


def test_compile_writes_spec(tmp_path):
    out = tmp_path / "q.yaml"
    res = invoke("compile", "quickstart", "-o", str(out))
    assert res.exit_code == 0, res.output
    spec = yaml.safe_load(out.read_text())
    assert spec["pipelineInfo"]["name"] == "quickstart"
    assert "next:" in res.output


def test_run_needs_local_or_host():
    res = invoke("run", "quickstart")
    assert res.exit_code == 1
    assert "--local" in res.output and "--host" in res.output


def test_unknown_pipeline_is_named():
    res = invoke("run", "nosuch", "--local")
    assert res.exit_code == 1
    assert "nosuch" in res.output and "quickstart" in res.output


def test_stage_with_missing_config_file(tmp_path):
    res = invoke("stage", "sft", "--config", str(tmp_path / "missing.yaml"))
    assert res.exit_code == 1
    assert "missing.yaml" in res.output and "not found" in res.output


def test_stage_unknown_name(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}")
    res = invoke("stage", "nosuch", "--config", str(cfg))
    assert res.exit_code == 1
    assert "nosuch" in res.output and "sft" in res.output


def test_stage_reports_bad_fields_together(tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text("output_uri: out\nbogus_key: 1\nlearning_rate: -1\n")
    res = invoke("stage", "sft", "--config", str(cfg))
    assert res.exit_code == 1
    assert "bogus_key" in res.output and "unknown key" in res.output
    assert "learning_rate" in res.output and str(cfg) in res.output


def test_bad_set_syntax(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}")
    res = invoke("validate", str(cfg), "--set", "no_equals_sign")
    assert res.exit_code == 1
    assert "KEY=VALUE" in res.output


def test_validate_lists_every_problem(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "distill": {"problems_uri": str(tmp_path / "nope.jsonl"), "n": 0},
                "sft": {"model": str(tmp_path / "no-model")},
            }
        )
    )
    res = invoke("validate", str(cfg))
    assert res.exit_code == 1
    assert "distill" in res.output and "n" in res.output
    assert "no-model" in res.output


def test_validate_unknown_section(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("sftt: {max_steps: 3}\n")
    res = invoke("validate", str(cfg))
    assert res.exit_code == 1
    assert "sftt" in res.output and "sections are" in res.output


def test_stage_runs_one_stage_without_kfp(tmp_path, problems_file, tiny_qwen3):
    from distilflow.records import Trace, read_jsonl

    cfg = tmp_path / "distill.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "output_uri": str(tmp_path / "out"),
                "problems_uri": problems_file,
                "teacher": {"backend": "transformers", "model": tiny_qwen3, "max_new_tokens": 8},
            }
        )
    )
    res = invoke("stage", "distill", "--config", str(cfg), "--set", "n=2")
    assert res.exit_code == 0, res.output
    traces = read_jsonl(str(tmp_path / "out" / "traces.jsonl"), Trace)
    assert len(traces) == 4 * 2
    assert (tmp_path / "out" / "_COMPLETE").exists()


def test_run_host_submits_to_kfp_api(monkeypatch):
    """`run --host` compiles the pipeline and creates a run through kfp.Client's real REST calls."""
    from tests.kfp_api_server import KfpApiServer

    secret = "sk-submit-secret-42"
    monkeypatch.setenv("TEACHER_KEY", secret)
    with KfpApiServer() as server:
        res = invoke(
            "run",
            "quickstart",
            "--host",
            server.url,
            "--output-uri",
            "s3://bucket/runs/r1",
            "--set",
            "distill.teacher.api_key_env=TEACHER_KEY",
        )
    assert res.exit_code == 0, res.output
    assert "submitted run run-" in res.output
    runs = [
        body
        for method, path, body in server.requests
        if method == "POST" and path.startswith("/apis/v2beta1/runs")
    ]
    assert len(runs) == 1
    run = runs[0]
    params = run["runtime_config"]["parameters"]
    assert params["output_uri"] == "s3://bucket/runs/r1"
    assert params["config"]["distill"]["teacher"]["api_key_env"] == "TEACHER_KEY"
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "quickstart"
    assert secret not in json.dumps(server.requests)


def test_run_host_refuses_local_output_uri():
    res = invoke("run", "quickstart", "--host", "http://127.0.0.1:9", "--output-uri", "runs/x")
    assert res.exit_code == 1
    assert "object storage" in res.output
