"""Promise 4: no key or token reaches a file. The suite's environment holds distinctive fake keys
(``conftest.SECRETS``: teacher and judge API keys, AWS credentials, an HF token); the stage runs
send them where they belong (bearer headers, S3 signatures). This module adds the runs the others
do not cover (every pipeline compiled, a rejected key, validate against an endpoint, a pipeline
config naming the keys' variables) and then scans every file the suite wrote (outputs, caches,
manifests, reports, logs, compiled pipelines) and every object in the S3 server for the keys, raw,
URL-quoted or base64-encoded.

It runs last in the package (file order), so it sees what the other modules wrote.
"""

from __future__ import annotations

import base64
import os
import urllib.parse

import pytest
from click.testing import CliRunner

from distilflow.client.cli import main
from distilflow.pipelines import PIPELINES
from tests.fakes.fault_server import FaultServer
from tests.reliability.conftest import (
    JUDGE_KEY_ENV,
    SECRETS,
    TEACHER_KEY_ENV,
    cli,
    endpoint_teacher,
    figure,
    problems,
    write_config,
)

pytestmark = pytest.mark.reliability


def forms(secret: str) -> list[bytes]:
    """The ways a key could be written: as is, URL-quoted, base64 (a Basic header, a JSON blob)."""
    raw = secret.encode()
    return [
        raw,
        urllib.parse.quote(secret, safe="").encode(),
        base64.b64encode(raw),
        base64.b64encode(raw)[:-2],
    ]


def scan(blobs: dict[str, bytes]) -> list[tuple[str, str]]:
    """``(where, which secret)`` for every blob holding a secret in any form."""
    found = []
    for where, data in blobs.items():
        for name, secret in SECRETS.items():
            if any(form in data for form in forms(secret)):
                found.append((where, name))
    return found


def local_files(root: str) -> dict[str, bytes]:
    blobs = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                blobs[path] = f.read()
    return blobs


def s3_objects(endpoint: str) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    blobs = {}
    for bucket in s3.list_buckets()["Buckets"]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                body = s3.get_object(Bucket=bucket["Name"], Key=key)["Body"].read()
                blobs[f"s3://{bucket['Name']}/{key}"] = body
    return blobs


def test_scanner_finds_a_planted_key(tmp_path):
    """The scan is not vacuous: it finds each key in each form it looks for."""
    for name, secret in SECRETS.items():
        for i, form in enumerate(forms(secret)):
            (tmp_path / f"{name}-{i}.txt").write_bytes(b"header " + form + b" trailer")
    found = scan(local_files(str(tmp_path)))
    assert len(found) == len(SECRETS) * 4


def test_key_related_runs_write_no_key(rel_root):
    """Runs that handle keys directly: compile every pipeline, a rejected key, a failing validate."""
    work = os.path.join(rel_root, "secrets")
    os.makedirs(work)
    log = os.path.join(work, "cli.log")
    for name in PIPELINES:  # in-process: a Python start per pipeline would cost more than the compile
        done = CliRunner().invoke(
            main, ["compile", name, "-o", os.path.join(work, "compiled", f"{name}.yaml")]
        )
        assert done.exit_code == 0, done.output[-2000:]
        with open(log, "a") as f:
            f.write(done.output)
    problems_uri = problems(os.path.join(work, "problems.jsonl"), 4)
    with FaultServer(api_key=SECRETS[TEACHER_KEY_ENV], faults={"500": 0.3}, seed=4) as url:
        section = {"output_uri": os.path.join(work, "distill-ok"), "problems_uri": problems_uri, "n": 2}
        section["teacher"] = endpoint_teacher(url)
        done = cli(
            "stage", "distill", "--config", write_config(os.path.join(work, "ok.yaml"), section), log=log
        )
        assert done.returncode == 0, done.stderr[-2000:]
    with FaultServer(api_key="a-different-key") as url:  # the server refuses the suite's key
        section = {"output_uri": os.path.join(work, "distill"), "problems_uri": problems_uri}
        section["teacher"] = endpoint_teacher(url, max_retries=0)
        done = cli(
            "stage", "distill", "--config", write_config(os.path.join(work, "d.yaml"), section), log=log
        )
        assert done.returncode == 1 and f"${TEACHER_KEY_ENV}" in done.stderr, done.stderr
    with FaultServer(api_key=SECRETS[JUDGE_KEY_ENV]) as url:
        pipeline = {
            "distill": {"teacher": endpoint_teacher(url, model="not-served")},
            "curate": {"judge": endpoint_teacher(url, JUDGE_KEY_ENV)},
            "sft": {"model": os.path.join(work, "no-model")},
        }
        done = cli("validate", write_config(os.path.join(work, "pipeline.yaml"), pipeline), log=log)
        assert done.returncode == 1 and "not-served" in done.stderr, done.stderr
    compiled = local_files(os.path.join(work, "compiled"))
    assert len(compiled) == len(PIPELINES) and not scan(compiled)


def test_nothing_the_suite_wrote_holds_a_key(rel_root, s3_server):
    blobs = local_files(rel_root)
    local = len(blobs)
    blobs.update(s3_objects(s3_server))
    found = scan(blobs)
    assert not found, found[:10]
    kinds = {
        "manifests": sum(p.endswith("manifest.json") for p in blobs),
        "resolved_configs": sum(p.endswith("config.resolved.yaml") for p in blobs),
        "reports": sum(p.endswith((".html", ".md")) for p in blobs),
        "logs": sum(p.endswith(".log") for p in blobs),
        "cache_entries": sum("/cache/" in p for p in blobs),
        "compiled_pipelines": sum("/compiled/" in p for p in blobs),
        "checkpoint_files": sum("/checkpoints/" in p for p in blobs),
    }
    assert kinds["manifests"] and kinds["cache_entries"] and kinds["compiled_pipelines"] and kinds["logs"]
    figure(
        "secrets/scan",
        files=local,
        s3_objects=len(blobs) - local,
        megabytes=round(sum(map(len, blobs.values())) / 2**20, 1),
        secrets=len(SECRETS),
        hits=len(found),
        **kinds,
    )


def _env_paths(cls, prefix: tuple = ()) -> list[tuple[tuple, object]]:
    """``(path, annotation)`` of every ``*_env`` field reachable from a config class; a path step is a
    field name, or ``0`` for the first item of a list of configs. Found by walking, not listed by hand."""
    from distilflow.components import _nested_models
    from distilflow.secrets import is_env_field

    paths = []
    for name, info in cls.model_fields.items():
        if is_env_field(name):
            paths.append(((*prefix, name), info.annotation))
            continue
        listed = "list[" in str(info.annotation)
        for nested in _nested_models(info.annotation):
            paths.extend(_env_paths(nested, (*prefix, name, 0) if listed else (*prefix, name)))
    return paths


def _paste(paths: list[tuple[tuple, object]], key: str) -> dict:
    """A config section with ``key`` pasted into every one of ``paths`` (as a name, a list item, a dict key)."""
    section: dict = {}
    for path, annotation in paths:
        node: dict | list = section
        for step, after in zip(path[:-1], path[1:], strict=True):
            if step == 0:
                node = node[0] if node else (node.append({}) or node[0])
            else:
                node = node.setdefault(step, [] if after == 0 else {})
        text = str(annotation)
        node[path[-1]] = (
            [key] if text.startswith("list[") else {key: "s/k"} if "dict[" in text or "Map" in text else key
        )
    return section


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


@pytest.mark.unit
def test_keys_pasted_into_every_env_field_of_every_stage_leak_nowhere(tmp_path, caplog):
    """Keys of several providers' shapes pasted into every ``*_env`` field of every stage: ``stage``,
    ``validate`` and ``run --local`` refuse each with a line naming the field, exit 1, and neither the
    terminal, the logs nor any file written holds the key (the configs we wrote aside)."""
    import logging

    from distilflow.components import STAGES, load_config_class
    from tests.sdk.test_secrets import PASTED

    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    stages = {s: _env_paths(load_config_class(s)) for s in STAGES}
    stages = {s: p for s, p in stages.items() if p}
    assert {"distill", "curate", "sft", "dpo", "evaluate", "deploy"} <= set(stages)
    outputs, configs, named = [], set(), 0
    for provider, key in PASTED.items():
        pipeline = {}
        for stage, paths in stages.items():
            section = {**_paste(paths, key), "output_uri": str(tmp_path / provider / stage)}
            configs.add(write_config(str(tmp_path / f"{provider}-{stage}.yaml"), section))
            done = runner.invoke(
                main, ["stage", stage, "--config", str(tmp_path / f"{provider}-{stage}.yaml")]
            )
            outputs.append(done.output + (done.stderr if hasattr(done, "stderr") else ""))
            assert done.exit_code == 1, (stage, done.output[-1500:])
            for path, _ in paths:
                assert _dotted(path) in done.output, (stage, _dotted(path), done.output[-1500:])
                named += 1
            pipeline[stage] = {k: v for k, v in section.items() if k != "output_uri"}
        lifecycle = write_config(str(tmp_path / f"{provider}-pipeline.yaml"), pipeline)
        configs.add(lifecycle)
        for args in (["validate", lifecycle, "--pipeline", "lifecycle"], ["run", "quickstart", "--local"]):
            args = (
                args if args[0] == "validate" else [*args, "--config", lifecycle, "--runs-dir", str(tmp_path)]
            )
            done = runner.invoke(main, args)
            outputs.append(done.output)
            assert done.exit_code == 1 and "api_key_env" in done.output, (args, done.output[-1500:])
    files = {p: b for p, b in local_files(str(tmp_path)).items() if p not in configs}
    logs = "\n".join(r.getMessage() for r in caplog.records)
    blobs = {"terminal": "\n".join(outputs).encode(), "logs": logs.encode(), **files}
    leaks = [(where, p) for where, data in blobs.items() for p, key in PASTED.items() if key.encode() in data]
    assert not leaks, leaks[:5]
    assert not any(p.endswith(("config.resolved.yaml", "_COMPLETE")) for p in files)
    figure("secrets/pasted", providers=len(PASTED), stages=len(stages), fields_named=named, files=len(files))


@pytest.mark.unit
def test_an_unset_key_variable_stops_validate_and_the_stage_before_any_work(tmp_path, monkeypatch):
    """ "TEACHER_API_KEY is not set", from validate and from the stage itself, before a request or a file."""
    monkeypatch.delenv("DISTILFLOW_UNSET_KEY", raising=False)
    with FaultServer() as url:
        teacher = endpoint_teacher(url, key_env="DISTILFLOW_UNSET_KEY")
        out = tmp_path / "distill"
        section = {
            "output_uri": str(out),
            "problems_uri": problems(str(tmp_path / "p.jsonl"), 2),
            "teacher": teacher,
        }
        runner = CliRunner()
        done = runner.invoke(
            main, ["stage", "distill", "--config", write_config(str(tmp_path / "d.yaml"), section)]
        )
        assert done.exit_code == 1
        assert "DISTILFLOW_UNSET_KEY is not set (distill.teacher.api_key_env names it)" in done.output
        assert not out.exists()  # nothing written, not even config.resolved.yaml
        pipeline = {"distill": {k: v for k, v in section.items() if k != "output_uri"}}
        done = runner.invoke(main, ["validate", write_config(str(tmp_path / "p.yaml"), pipeline)])
        assert done.exit_code == 1 and "DISTILFLOW_UNSET_KEY is not set" in done.output, done.output
        assert "HTTP 401" not in done.output  # the endpoint is not asked with a missing key
