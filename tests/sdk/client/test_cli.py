"""The CLI is thin over the SDK: commands succeed with output a user can act on, and fail with
exit 1 and a one-line reason."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from distilflow.client.cli import main
from tests.fakes.kfp_api_server import KfpApiServer


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.unit
def test_pipelines_lists_quickstart():
    res = invoke("pipelines")
    assert res.exit_code == 0
    assert res.output.split()[0] == "quickstart"


@pytest.mark.unit
def test_compile_writes_spec(tmp_path):
    out = tmp_path / "q.yaml"
    res = invoke("compile", "quickstart", "-o", str(out))
    assert res.exit_code == 0, res.output
    spec = yaml.safe_load(out.read_text())
    assert spec["pipelineInfo"]["name"] == "quickstart"
    assert "next:" in res.output


@pytest.mark.unit
def test_run_needs_local_or_host():
    res = invoke("run", "quickstart")
    assert res.exit_code == 1
    assert "--local" in res.output and "--host" in res.output


@pytest.mark.unit
def test_unknown_pipeline_is_named():
    res = invoke("run", "nosuch", "--local")
    assert res.exit_code == 1
    assert "nosuch" in res.output and "quickstart" in res.output


@pytest.mark.unit
def test_stage_with_missing_config_file(tmp_path):
    res = invoke("stage", "sft", "--config", str(tmp_path / "missing.yaml"))
    assert res.exit_code == 1
    assert "missing.yaml" in res.output and "not found" in res.output


@pytest.mark.unit
def test_stage_unknown_name(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}")
    res = invoke("stage", "nosuch", "--config", str(cfg))
    assert res.exit_code == 1
    assert "nosuch" in res.output and "sft" in res.output


@pytest.mark.unit
def test_stage_reports_bad_fields_together(tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text("output_uri: out\nbogus_key: 1\nlearning_rate: -1\n")
    res = invoke("stage", "sft", "--config", str(cfg))
    assert res.exit_code == 1
    assert "bogus_key" in res.output and "unknown key" in res.output
    assert "learning_rate" in res.output and str(cfg) in res.output


@pytest.mark.unit
def test_bad_set_syntax(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}")
    res = invoke("validate", str(cfg), "--set", "no_equals_sign")
    assert res.exit_code == 1
    assert "KEY=VALUE" in res.output


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
def test_run_host_refuses_local_output_uri():
    res = invoke("run", "quickstart", "--host", "http://127.0.0.1:9", "--output-uri", "runs/x")
    assert res.exit_code == 1
    assert "object storage" in res.output


# --- upload, submit, status against a loopback KFP API server -------------------------------

TOKEN = "kfp-token-never-printed-7f3a"


def pipeline_spec(doc: dict):
    """Parse a pipeline spec (dict) back into the PipelineSpec proto; fails on anything else."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    if "pipeline_spec" in doc:
        doc = doc["pipeline_spec"]
    return json_format.ParseDict(doc, pipeline_spec_pb2.PipelineSpec())


def uploaded_spec(upload: dict):
    docs = [d for d in yaml.safe_load_all(upload["content"]) if d]
    return pipeline_spec(docs[0])


def spec_name(name: str) -> str:
    """KFP writes a pipeline's name in the spec with dashes."""
    return name.replace("_", "-")


def assert_token_only_in_headers(server, *outputs: str) -> None:
    assert server.calls, "no request reached the server"
    for call in server.calls:
        assert call["headers"].get("authorization") == f"Bearer {TOKEN}", call["path"]
        assert TOKEN not in json.dumps([call["path"], call["query"], call["body"]])
    for out in outputs:
        assert TOKEN not in out


def posted_runs(server) -> list[dict]:
    return [c["body"] for c in server.calls if c["method"] == "POST" and c["path"] == "/apis/v2beta1/runs"]


def every_pipeline() -> list[str]:
    from distilflow.client.pipelines import list_pipelines

    return list(list_pipelines())


@pytest.mark.parametrize("name", every_pipeline())
def test_every_pipeline_uploads_and_submits(name, monkeypatch):
    """Each registered pipeline: `upload` sends a spec that parses back into a PipelineSpec, and
    `submit` creates a run whose parameters are the spec's parameters."""
    monkeypatch.setenv("DISTILFLOW_KFP_TOKEN", TOKEN)
    with KfpApiServer(token=TOKEN) as server:
        up = invoke("upload", name, "--host", server.url)
        sub = invoke("submit", name, "--host", server.url, "--output-uri", "s3://bucket/runs/r1")
    assert up.exit_code == 0, up.output
    assert sub.exit_code == 0, sub.output
    [upload] = server.uploads
    assert upload["kind"] == "pipeline" and upload["query"]["name"] == name
    spec = uploaded_spec(upload)
    assert spec.pipeline_info.name == spec_name(name)
    assert spec.deployment_spec and "output_uri" in spec.root.input_definitions.parameters
    assert f"created pipeline {name}" in up.output and "/#/pipelines/details/" in up.output

    [run] = posted_runs(server)
    run_spec = pipeline_spec(run["pipeline_spec"])
    assert run_spec.pipeline_info.name == spec_name(name)
    params = run["runtime_config"]["parameters"]
    declared = set(spec.root.input_definitions.parameters)
    assert set(params) <= declared and params["output_uri"] == "s3://bucket/runs/r1"
    required = {
        p
        for p, d in spec.root.input_definitions.parameters.items()
        if not d.is_optional and not d.HasField("default_value")
    }
    assert required <= set(params)
    assert run["experiment_id"] in server.experiments
    assert "submitted run run-" in sub.output and "/#/runs/details/run-" in sub.output
    assert_token_only_in_headers(server, up.output, sub.output)


def test_upload_versions(monkeypatch):
    monkeypatch.setenv("KFP_BEARER_TOKEN", TOKEN)
    with KfpApiServer(token=TOKEN) as server:
        first = invoke("upload", "quickstart", "--host", server.url)
        again = invoke("upload", "quickstart", "--host", server.url)  # unchanged: nothing uploaded
        v2 = invoke("upload", "quickstart", "--host", server.url, "--version", "v2", "--description", "try 2")
        v2_again = invoke("upload", "quickstart", "--host", server.url, "--version", "v2")
    for res in (first, again, v2, v2_again):
        assert res.exit_code == 0, res.output
    assert [u["kind"] for u in server.uploads] == ["pipeline", "version"]
    version = server.uploads[1]
    [pipeline_id] = server.pipelines
    assert version["query"] == {"name": "v2", "pipelineid": pipeline_id, "description": "try 2"}
    assert uploaded_spec(version).pipeline_info.name == "quickstart"
    assert "already there, unchanged" in again.output and "already there, unchanged" in v2_again.output
    assert "uploaded version v2" in v2.output and "--version v2" in v2.output
    assert_token_only_in_headers(server, first.output, again.output, v2.output)


def test_upload_refuses_an_existing_version_with_another_spec():
    with KfpApiServer() as server:
        assert invoke("upload", "quickstart", "--host", server.url, "--version", "v1").exit_code == 0
        for version in server.versions.values():  # the v1 on the server was built from other code
            version["pipeline_spec"]["pipelineInfo"]["description"] = "an older build"
        res = invoke("upload", "quickstart", "--host", server.url, "--version", "v1")
    assert res.exit_code == 1
    assert "already has a version 'v1' with another spec" in res.output


def test_submit_wait_follows_the_run_to_success(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with KfpApiServer(token=TOKEN) as server:
        res = invoke(
            "submit",
            "quickstart",
            "--host",
            server.url,
            "--token-file",
            str(token_file),
            "--set",
            "output_uri=s3://bucket/runs/r2",
            "--set",
            "sft.max_steps=7",
            "--experiment",
            "team-a",
            "--wait",
            "--poll-interval",
            "0.01",
        )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    run_id = lines[0].split()[2]
    assert f"run {run_id}: RUNNING" in lines and f"run {run_id}: SUCCEEDED" in lines
    assert f"run {run_id} SUCCEEDED: {server.url}/#/runs/details/{run_id}" in lines
    [run] = posted_runs(server)
    params = run["runtime_config"]["parameters"]
    assert params["output_uri"] == "s3://bucket/runs/r2"
    assert params["config"]["sft"]["max_steps"] == 7
    assert "output_uri" not in params["config"]
    assert [e["display_name"] for e in server.experiments.values()] == ["team-a"]
    assert_token_only_in_headers(server, res.output)


def test_submit_wait_fails_with_the_runs_reason(monkeypatch):
    monkeypatch.setenv("DISTILFLOW_KFP_TOKEN", TOKEN)
    with KfpApiServer(token=TOKEN, fail_with="sft exited with code 1: CUDA out of memory") as server:
        res = invoke(
            "submit",
            "quickstart",
            "--host",
            server.url,
            "--output-uri",
            "s3://b/r",
            "--wait",
            "--poll-interval",
            "0",
        )
        run_id = next(iter(server.runs))
        status = invoke("status", run_id, "--host", server.url)
    assert res.exit_code == 1
    assert f"run {run_id} FAILED" in res.output
    assert "error: sft exited with code 1: CUDA out of memory" in res.output
    assert "failed task sft: sft exited with code 1" in res.output
    assert status.exit_code == 1 and "FAILED" in status.output
    assert_token_only_in_headers(server, res.output, status.output)


def test_wrong_token_is_refused_without_printing_it(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with KfpApiServer(token="the-right-token") as server:
        res = invoke("upload", "quickstart", "--host", server.url, "--token-file", str(token_file))
    assert res.exit_code == 1
    assert "answered 401" in res.output and f"token file {token_file}" in res.output
    assert TOKEN not in res.output


@pytest.mark.unit
def test_missing_token_file_is_named(tmp_path):
    res = invoke(
        "submit", "quickstart", "--host", "http://127.0.0.1:9", "--token-file", str(tmp_path / "nope")
    )
    assert res.exit_code == 1
    assert "nope" in res.output and "cannot read" in res.output


def test_submit_an_uploaded_version():
    with KfpApiServer() as server:
        assert invoke("upload", "quickstart", "--host", server.url, "--version", "v1").exit_code == 0
        res = invoke(
            "submit", "quickstart", "--host", server.url, "--version", "v1", "--output-uri", "oss://b/r"
        )
        missing = invoke(
            "submit", "quickstart", "--host", server.url, "--version", "v9", "--output-uri", "s3://b/r"
        )
    assert res.exit_code == 0, res.output
    [run] = posted_runs(server)
    ref = run["pipeline_version_reference"]
    assert server.versions[ref["pipeline_version_id"]]["display_name"] == "v1"
    assert ref["pipeline_id"] in server.pipelines and run.get("pipeline_spec") is None
    assert run["runtime_config"]["parameters"]["output_uri"] == "oss://b/r"
    assert missing.exit_code == 1
    assert "no uploaded version 'v9'" in missing.output and "distilflow upload quickstart" in missing.output


@pytest.mark.unit
def test_submit_needs_a_host(monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    res = invoke("submit", "quickstart", "--output-uri", "s3://b/r")
    assert res.exit_code == 1 and "--host" in res.output


def test_sdk_client_for_notebooks(tmp_path):
    """The notebook path: Client.upload, submit, status, wait, run_url; the token file is reread."""
    from distilflow.client.remote import Client

    token_file = tmp_path / "token"
    token_file.write_text("first-token")
    with KfpApiServer(token="first-token") as server:
        client = Client(server.url, token_file=str(token_file), ui_host="https://kfp.example.com/pipeline")
        assert "first-token" not in repr(client) and str(token_file) in repr(client)
        uploaded = client.upload("quickstart")
        assert uploaded.url.startswith("https://kfp.example.com/pipeline/#/pipelines/details/")
        run = client.submit("quickstart", overrides=["output_uri=s3://b/r", "distill.n=2"], run_name="nb run")
        assert run.state == "PENDING" and run.name == "nb run"
        assert (
            run.url
            == client.run_url(run.run_id)
            == f"https://kfp.example.com/pipeline/#/runs/details/{run.run_id}"
        )
        assert run.url in run._repr_html_()
        # the kubelet rotates a projected token: the next poll reads the file again
        token_file.write_text("second-token")
        server.token = "second-token"
        seen: list[str] = []
        done = client.wait(run.run_id, poll_interval=0, echo=seen.append)
    assert done.succeeded and done.state == "SUCCEEDED"
    assert seen == [f"run {run.run_id}: RUNNING", f"run {run.run_id}: SUCCEEDED"]
    auth = [c["headers"]["authorization"] for c in server.calls]
    assert auth[0] == "Bearer first-token" and auth[-1] == "Bearer second-token"
    [posted] = posted_runs(server)
    assert posted["runtime_config"]["parameters"]["config"]["distill"]["n"] == 2


@pytest.mark.unit
def test_token_sources_in_order(tmp_path):
    from distilflow.client.auth import resolve_token

    f = tmp_path / "t"
    f.write_text(" from-file \n")
    env = {"DISTILFLOW_KFP_TOKEN": "a", "KFP_BEARER_TOKEN": "b", "KF_PIPELINES_SA_TOKEN_PATH": str(f)}
    assert resolve_token("x", str(f), env)[0] == "x"
    assert resolve_token(None, str(f), env)[:2] == ("from-file", str(f))
    assert resolve_token(None, None, env) == ("a", None, "$DISTILFLOW_KFP_TOKEN")
    assert resolve_token(None, None, {"KFP_BEARER_TOKEN": "b"})[0] == "b"
    assert resolve_token(None, None, {"KF_PIPELINES_SA_TOKEN_PATH": str(f)})[0] == "from-file"
    f.write_text("")
    with pytest.raises(Exception, match="is empty"):
        resolve_token(None, str(f), {})


@pytest.mark.unit
def test_run_arguments_follow_the_spec_types():
    """--set NAME=VALUE sets a pipeline parameter typed as its spec says; other keys go to the config."""
    from distilflow.client.arguments import run_arguments
    from distilflow.errors import ConfigError

    params = {
        "output_uri": {"parameterType": "STRING"},
        "student_model": {"parameterType": "STRING", "defaultValue": "Qwen/Qwen2.5-1.5B-Instruct"},
        "gpus": {"parameterType": "NUMBER_INTEGER", "defaultValue": 1},
        "learning_rate": {"parameterType": "NUMBER_DOUBLE", "defaultValue": 1e-5},
        "deploy": {"parameterType": "BOOLEAN", "defaultValue": True},
        "placement": {"parameterType": "STRUCT", "defaultValue": {"shm_gb": 16}},
        "overrides": {"parameterType": "STRING", "defaultValue": "{}"},
        "teacher_endpoint": {"parameterType": "STRING"},
    }
    args = run_arguments(
        "any",
        params,
        overrides=[
            "output_uri=oss://bucket/runs/r1",
            "student_model=08",  # a string parameter keeps the text as typed
            "gpus=8",
            "learning_rate=2e-5",
            "deploy=false",
            "placement.node_selector.pool=a100",
            "sft.max_steps=20",
            "teacher_endpoint=http://vllm:8000/v1",
        ],
    )
    assert args == {
        "output_uri": "oss://bucket/runs/r1",
        "student_model": "08",
        "gpus": 8,
        "learning_rate": 2e-5,
        "deploy": False,
        "placement": {"shm_gb": 16, "node_selector": {"pool": "a100"}},
        "overrides": json.dumps({"sft": {"max_steps": 20}}),
        "teacher_endpoint": "http://vllm:8000/v1",
    }
    with pytest.raises(ConfigError, match="'gpus' takes an integer"):
        run_arguments("any", params, overrides=["gpus=many", "output_uri=s3://b/r", "teacher_endpoint=x"])
    with pytest.raises(ConfigError, match="needs teacher_endpoint"):
        run_arguments("any", params, overrides=["output_uri=s3://b/r"])
    with pytest.raises(ConfigError, match="object storage"):
        run_arguments("any", params, overrides=["teacher_endpoint=x"], output_uri="runs/local")
    with pytest.raises(ConfigError, match="has no parameter for --set sft.max_steps"):
        run_arguments(
            "any",
            {"output_uri": {"parameterType": "STRING"}},
            overrides=["sft.max_steps=1"],
            output_uri="s3://b/r",
        )


@pytest.mark.unit
def test_local_run_routes_pipeline_parameters_from_set():
    """`distilflow run thoughtx --local --set preset=1.5b-1node` sets the pipeline parameter (typed as the
    pipeline declares it); other --set items stay config overrides."""
    from distilflow.client.arguments import local_arguments
    from distilflow.errors import ConfigError
    from distilflow.pipelines import load_pipeline

    pipeline = load_pipeline("thoughtx").pipeline
    args, rest = local_arguments(
        pipeline, ["preset=1.5b-1node", "gpu_count=2", "sft.max_steps=3", 'gpu_node_selector={"a": "b"}']
    )
    assert args == {"preset": "1.5b-1node", "gpu_count": 2, "gpu_node_selector": {"a": "b"}}
    assert rest == ["sft.max_steps=3"]
    with pytest.raises(ConfigError, match="gpu_count.*integer"):
        local_arguments(pipeline, ["gpu_count=many"])
    quick, rest = local_arguments(load_pipeline("quickstart").pipeline, ["sft.max_steps=1"])
    assert quick == {} and rest == ["sft.max_steps=1"]


@pytest.mark.unit
def test_summary_lists_stage_outputs_below_the_run(tmp_path):
    """A recipe that writes a stage output under a sub-folder (thoughty's no-thinking/evaluate) shows it
    in the run summary; unfinished outputs and checkpoints do not."""
    from distilflow.client.local import summarize
    from distilflow.config import BaseConfig
    from distilflow.outputs import StageOutput

    for rel, stage in (("sft", "sft"), ("no-thinking/evaluate", "evaluate")):
        out = StageOutput(str(tmp_path / rel), stage)
        out.begin(BaseConfig())
        out.finish(result={}, counts={"rows": 1})
    StageOutput(str(tmp_path / "evaluate"), "evaluate").begin(BaseConfig())  # killed: no marker
    summary = summarize("thoughty", str(tmp_path), ["sft", "evaluate"])
    assert list(summary.stages) == ["sft", "no-thinking/evaluate"]
    assert any("no-thinking/evaluate" in line for line in summary.lines())


# --- the KFP API's filters, and answers that do not match them --------------------------------------


def test_a_server_that_ignores_the_name_filter_is_refused():
    """A backend answering the display_name search with another pipeline: upload and submit fail naming
    it, instead of adding a version to (or running) the wrong pipeline."""
    with KfpApiServer() as server:
        assert invoke("upload", "reward_rl", "--host", server.url).exit_code == 0
        server.ignore_filters = True
        up = invoke("upload", "quickstart", "--host", server.url, "--version", "v1")
        sub = invoke(
            "submit", "quickstart", "--host", server.url, "--version", "v1", "--output-uri", "s3://b/r"
        )
    for res in (up, sub):
        assert res.exit_code == 1
        assert (
            "answered a search for pipeline 'quickstart' with pipeline(s) named ['reward_rl']" in res.output
        )
    assert [u["kind"] for u in server.uploads] == ["pipeline"] and posted_runs(server) == []


def test_an_experiment_of_another_name_is_refused():
    """kfp.Client takes the only experiment a search returns; the client checks its name before running."""
    from distilflow.client.remote import Client
    from distilflow.errors import DistilflowError

    with KfpApiServer() as server:
        server.experiments["e1"] = {"experiment_id": "e1", "display_name": "team-x", "namespace": ""}
        server.ignore_filters = True
        with pytest.raises(
            DistilflowError,
            match="asked to create experiment 'distilflow' and answered with experiment 'team-x'",
        ):
            Client(server.url).submit("quickstart", output_uri="s3://b/r")
    assert posted_runs(server) == []


def test_lookups_follow_the_namespace():
    """In multi-user mode pipelines live in a namespace: the lookup asks in the client's namespace, so a
    second upload finds the first (a lookup without it would miss it and collide)."""
    from distilflow.client.remote import Client

    with KfpApiServer() as server:
        first = Client(server.url, namespace="team-a").upload("quickstart")
        again = Client(server.url, namespace="team-a").upload("quickstart")
        elsewhere = Client(server.url, namespace="team-b").upload("quickstart")
    assert first.created_pipeline and not again.created_pipeline and not again.new_version
    assert again.pipeline_id == first.pipeline_id and elsewhere.pipeline_id != first.pipeline_id
    lookups = [c for c in server.calls if c["method"] == "GET" and c["path"] == "/apis/v2beta1/pipelines"]
    assert [c["query"].get("namespace") for c in lookups] == ["team-a", "team-a", "team-b"]
    assert all(json.loads(c["query"]["filter"])["predicates"][0]["key"] == "display_name" for c in lookups)


def test_the_kfp_fake_refuses_what_the_api_refuses():
    """Filters on unknown keys, bodies with undeclared fields and specs that do not parse are refused as
    KFP 2.17's API server refuses them (so the tests above can fail)."""
    import urllib.request

    from tests.fakes import kfp_api_rules as rules

    with pytest.raises(rules.Refusal, match='unrecognized field \\\\"owner\\\\"'):
        rules.parse_filter(
            json.dumps({"predicates": [{"key": "owner", "operation": "EQUALS", "string_value": "x"}]}),
            "pipelines",
        )
    assert rules.parse_filter(
        '{"predicates":[{"key":"display_name","operation":1,"stringValue":"q"}]}', "versions"
    ) == [("display_name", 1, "q")]
    with pytest.raises(rules.Refusal, match=r'proto: unknown field \\"pipelineSpecs\\"'):
        rules.check_body("v2beta1Run", {"display_name": "r", "pipelineSpecs": {}})
    with pytest.raises(rules.Refusal, match="invalid v2 pipeline spec"):
        rules.check_package(
            "pipelineInfo: {name: q}\nroot: {}\nschemaVersion: 2.1.0\nsdkVersion: x\nextra: 1\n"
        )
    with KfpApiServer() as server:
        request = urllib.request.Request(
            server.url + "/apis/v2beta1/experiments",
            data=b'{"display_name": "e", "owner": "me"}',
            method="POST",
        )
        request.add_header("Content-Type", "application/json")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request)
        assert err.value.code == 400 and 'unknown field "owner"' in json.loads(err.value.read())["message"]
