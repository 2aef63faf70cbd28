"""A newcomer's storage mistakes get one line: missing credentials, an unreachable endpoint, a missing
bucket and access denied, for s3:// (moto's server, with its IAM checks on), oss:// (the OSS fake,
checking AccessKey ids) and gs:// (gcsfs not installed). Each through the CLI as a user runs it:
exit 1, one line naming the URI, the cause and the fix, no traceback (only with ``--debug``), and
nothing marked complete."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import pytest
import yaml
from click.testing import CliRunner

from distilflow.client.cli import main
from tests.conftest import free_port

ROOT = "s3://runs"


def stage_cli(tmp_path, output_uri: str, problems_uri: str, *flags: str):
    """``distilflow [flags] stage distill`` in-process, on a config reading and writing ``URI``s."""
    config = {
        "output_uri": output_uri,
        "problems_uri": problems_uri,
        "teacher": {"backend": "transformers", "model": "smollm2"},
    }
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(config))
    return CliRunner().invoke(main, [*flags, "stage", "distill", "--config", str(path)])


def one_line(done) -> str:
    """The error line of a failed CLI run, after checking it is the only output and no traceback."""
    assert done.exit_code == 1, done.output
    lines = [line for line in done.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.output
    assert "Traceback" not in done.output
    return lines[0]


@pytest.fixture(scope="module")
def iam_s3():
    """moto's S3 server in its own process with its IAM checks on after the first 5 requests (the readiness probe; the root
    makes a bucket, an object, a user and the user's key), so a key without a policy is AccessDenied."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "5"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, *_iam_setup(url)
    finally:  # also when the setup fails: no server outlives the tests
        proc.terminate()
        proc.wait(timeout=10)


def _iam_setup(url: str) -> tuple[str, str]:
    """The root's 5 free requests: the readiness probe, a bucket, an object, a user and its key."""
    import boto3
    import httpx

    for _ in range(100):
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    root = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "root"}
    root["aws_secret_access_key"] = "root"
    s3 = boto3.client("s3", **root)
    s3.create_bucket(Bucket="runs")
    s3.put_object(Bucket="runs", Key="problems.jsonl", Body=b'{"id": "p1", "problem": "1+1?"}\n')
    iam = boto3.client("iam", **root)
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture
def aws(monkeypatch, tmp_path):
    """An environment with no AWS credentials anywhere, no metadata service, one attempt per request."""
    import fsspec

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fsspec.get_filesystem_class("s3").clear_instance_cache()
    yield monkeypatch
    fsspec.get_filesystem_class("s3").clear_instance_cache()


def test_s3_missing_credentials(aws, iam_s3, tmp_path):
    aws.setenv("DISTILFLOW_S3_ENDPOINT_URL", iam_s3[0])
    line = one_line(stage_cli(tmp_path, f"{ROOT}/out", f"{ROOT}/problems.jsonl"))
    assert line.startswith(
        "error: s3://runs/out/_COMPLETE: no s3:// credentials found; set AWS_ACCESS_KEY_ID"
    )


def test_s3_unreachable_endpoint(aws, tmp_path):
    aws.setenv("AWS_ACCESS_KEY_ID", "AKIAUNUSED")
    aws.setenv("AWS_SECRET_ACCESS_KEY", "unused")
    dead = f"http://127.0.0.1:{free_port()}"
    aws.setenv("DISTILFLOW_S3_ENDPOINT_URL", dead)
    line = one_line(stage_cli(tmp_path, f"{ROOT}/out", f"{ROOT}/problems.jsonl"))
    assert line == (
        f"error: s3://runs/out/_COMPLETE: cannot reach the store at {dead} ($DISTILFLOW_S3_ENDPOINT_URL); "
        "check that address and that the store is up (and the network between)"
    )


def test_s3_missing_bucket(aws, s3_server, tmp_path):
    aws.setenv("DISTILFLOW_S3_ENDPOINT_URL", s3_server)
    aws.setenv("AWS_ACCESS_KEY_ID", "testing")
    aws.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    line = one_line(stage_cli(tmp_path, "s3://no-such-bucket/out", "s3://no-such-bucket/problems.jsonl"))
    assert line.startswith("error: s3://no-such-bucket/")
    assert f"bucket 'no-such-bucket' does not exist at {s3_server}" in line and "create it" in line


def test_s3_access_denied(aws, iam_s3, tmp_path):
    url, key_id, secret = iam_s3
    aws.setenv("DISTILFLOW_S3_ENDPOINT_URL", url)
    local_out = str(tmp_path / "out")
    aws.setenv("AWS_ACCESS_KEY_ID", key_id)  # a real key of a user no policy lets read anything
    aws.setenv("AWS_SECRET_ACCESS_KEY", secret)
    line = one_line(stage_cli(tmp_path, local_out, f"{ROOT}/problems.jsonl"))
    assert line.startswith(
        "error: s3://runs/problems.jsonl: access denied (403): the credentials may not use "
    )
    assert "grant them read/write on it" in line and "AWS_ACCESS_KEY_ID" in line
    aws.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")  # a key the store does not know
    line = one_line(stage_cli(tmp_path, local_out, f"{ROOT}/problems.jsonl"))
    assert line.startswith("error: s3://runs/problems.jsonl: access denied (403)")
    assert not os.path.exists(os.path.join(local_out, "_COMPLETE"))
    debug = stage_cli(tmp_path, local_out, f"{ROOT}/problems.jsonl", "--debug")
    assert debug.exit_code == 1 and type(debug.exception).__name__ == "StorageError"
    assert type(debug.exception.__cause__).__name__ == "PermissionError"  # the store's own error, kept


@pytest.fixture
def oss_env(monkeypatch):
    pytest.importorskip("ossfs")
    import fsspec

    from tests.fakes.oss_server import FakeOss

    fake = FakeOss(buckets=("runs", "private"), access_keys={"LTAI-reader": ("runs",)})
    endpoint = fake.start()
    monkeypatch.setenv("OSS_ENDPOINT", endpoint)
    for name in ("OSS_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    fsspec.get_filesystem_class("oss").clear_instance_cache()
    yield fake, endpoint, monkeypatch
    fake.stop()
    fsspec.get_filesystem_class("oss").clear_instance_cache()


def test_oss_each_mistake_is_one_line(oss_env, tmp_path):
    import fsspec

    fake, endpoint, env = oss_env
    local_out = str(tmp_path / "out")
    line = one_line(stage_cli(tmp_path, local_out, "oss://runs/problems.jsonl"))
    assert line.startswith(
        "error: oss://runs/problems.jsonl: no oss:// credentials found; set OSS_ACCESS_KEY_ID"
    )
    for key_id, uri, expected in (
        (
            "LTAI-reader",
            "oss://no-such-bucket/p.jsonl",
            "bucket 'no-such-bucket' does not exist at " + endpoint,
        ),
        ("LTAI-reader", "oss://private/p.jsonl", "access denied (AccessDenied)"),
        ("LTAI-unknown", "oss://runs/p.jsonl", "the store refused the credentials (InvalidAccessKeyId)"),
    ):
        env.setenv("OSS_ACCESS_KEY_ID", key_id)
        env.setenv("OSS_ACCESS_KEY_SECRET", "secret")
        fsspec.get_filesystem_class("oss").clear_instance_cache()
        line = one_line(stage_cli(tmp_path, local_out, uri))
        assert line.startswith(f"error: {uri}: {expected}"), line
    env.setenv("OSS_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    fsspec.get_filesystem_class("oss").clear_instance_cache()
    line = one_line(stage_cli(tmp_path, local_out, "oss://runs/p.jsonl"))
    assert "cannot reach the store at http://127.0.0.1:" in line and "($OSS_ENDPOINT)" in line
    assert not os.path.exists(os.path.join(local_out, "_COMPLETE"))
    assert fake.requests  # the store was asked: each line is its real answer, translated


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_gs_without_gcsfs_says_how_to_install(tmp_path):
    line = one_line(stage_cli(tmp_path, "gs://bucket/out", "gs://bucket/problems.jsonl"))
    assert line == (
        "error: gs://bucket/out/_COMPLETE: gs:// needs a package that is not installed; "
        "pip install 'distilflow[gcs]' (gcsfs)"
    )
