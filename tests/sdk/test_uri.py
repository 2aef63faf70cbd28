"""URIs: validation, joins, atomic local writes, and the same I/O on disk and on a real S3 server (moto)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from distilflow import uri as uris
from distilflow.errors import DistilflowError, StorageError
from distilflow.uri import Uri, check_uri

# --- check_uri -------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    "value",
    [
        "relative/dir",
        "/abs/dir/file.jsonl",
        "./x",
        "~/data",
        "file:///tmp/x",
        "s3://bucket",
        "s3://bucket/key/deeper",
        "oss://bucket/prefix/",
        "gs://bucket/k",
        "S3://Bucket/k",
    ],
)
def test_check_uri_accepts(value):
    assert check_uri(value) == value


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("http://example.com/data", "unsupported URI scheme 'http://'"),
        ("ftp://host/file", "unsupported URI scheme 'ftp://'"),
        ("hf://org/model", "is not a hub dataset path"),
        ("s3://", "names no bucket"),
        ("s3:///key", "names no bucket"),
        ("gs://", "names no bucket"),
        ("file://", "names no path"),
        ("", "empty URI"),
        ("   ", "empty URI"),
        ("s3:/bucket/key", "missing a '/'"),
    ],
)
def test_check_uri_refuses(value, says):
    with pytest.raises(ValueError) as info:
        check_uri(value)
    msg = str(info.value)
    assert says in msg
    if "bucket" not in says and "path" not in says:
        for scheme in ("file://", "s3://", "oss://", "gs://"):
            assert scheme in msg, msg


@pytest.mark.unit
def test_uri_type_in_a_model():
    class M(BaseModel):
        where: Uri

    assert M(where="s3://b/k").where == "s3://b/k"
    with pytest.raises(ValidationError, match="unsupported URI scheme 'http://'"):
        M(where="http://x/y")


@pytest.mark.unit
def test_scheme_and_locality():
    assert (
        uris.scheme("s3://b/k") == "s3"
        and uris.scheme("/tmp/x") == "file"
        and uris.scheme("file:///x") == "file"
    )
    assert uris.is_local("relative") and uris.is_local("file:///x") and not uris.is_local("gs://b/k")
    assert uris.local_path("file:///tmp/x") == "/tmp/x"
    assert uris.local_path("rel") == os.path.join(os.getcwd(), "rel")
    with pytest.raises(ValueError):
        uris.local_path("s3://b/k")
    assert uris.bucket("s3://my-bucket/a/b") == "my-bucket"


@pytest.mark.unit
def test_storage_options_endpoint(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("DISTILFLOW_S3_ENDPOINT_URL", raising=False)
    assert uris.storage_options("s3://b/k") == {}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws-env:1")
    assert uris.storage_options("s3://b/k") == {"client_kwargs": {"endpoint_url": "http://aws-env:1"}}
    monkeypatch.setenv("DISTILFLOW_S3_ENDPOINT_URL", "http://ours:2")  # ours wins
    assert uris.storage_options("s3://b/k") == {"client_kwargs": {"endpoint_url": "http://ours:2"}}
    assert uris.storage_options("/local") == {}


# --- join ------------------------------------------------------------------------------------


@pytest.mark.unit
def test_join():
    assert uris.join("s3://b/runs/", "r1", "sft") == "s3://b/runs/r1/sft"
    assert uris.join("s3://b", "a/b.json") == "s3://b/a/b.json"
    assert uris.join("s3://b/p", "/abs") == "s3://b/p/abs"  # never escapes the bucket
    assert uris.join("gs://b/p", "x") == "gs://b/p/x"
    assert uris.join("/tmp/root", "a", "b") == "/tmp/root/a/b"
    assert uris.join("file:///tmp/root", "a") == "/tmp/root/a"


# --- local I/O -------------------------------------------------------------------------------


@pytest.mark.unit
def test_local_read_write_exists_remove(tmp_path):
    target = str(tmp_path / "deep" / "er" / "f.txt")
    assert not uris.exists(target)
    uris.write_text(target, "héllo\n")  # creates parent folders
    assert uris.exists(target)
    assert uris.read_text(target) == "héllo\n"
    assert uris.read_bytes("file://" + target) == "héllo\n".encode()
    uris.write_text(target, "second")
    assert uris.read_text(target) == "second"
    assert os.listdir(tmp_path / "deep" / "er") == ["f.txt"]  # no temporary files left
    uris.remove(target)
    assert not uris.exists(target)
    uris.remove(target)  # removing what is gone is fine
    uris.remove(str(tmp_path / "deep"), recursive=True)
    assert not (tmp_path / "deep").exists()


@pytest.mark.unit
def test_local_read_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        uris.read_text(str(tmp_path / "missing.txt"))


@pytest.mark.unit
@pytest.mark.parametrize("fail_in", ["fsync", "replace"])
def test_failed_local_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, fail_in):
    target = tmp_path / "data.jsonl"
    uris.write_text(str(target), "old content\n")

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(uris.os, fail_in, boom)
    with pytest.raises(OSError, match="simulated"):
        uris.write_text(str(target), "new content that must not appear\n")
    monkeypatch.undo()
    assert target.read_text() == "old content\n"
    assert os.listdir(tmp_path) == ["data.jsonl"]


@pytest.mark.unit
def test_local_upload_dir_and_materialize(tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "a" / "b" / "deep.bin").write_bytes(b"\x00\x01")
    dest = str(tmp_path / "dest")
    uris.upload_dir(str(src), dest)
    assert read_tree(dest) == read_tree(str(src))
    uris.upload_dir(dest, dest)  # same place: no-op
    assert uris.materialize(dest) == dest
    assert uris.materialize("file://" + dest) == dest
    with pytest.raises(FileNotFoundError, match="no such folder"):
        uris.upload_dir(str(tmp_path / "nope"), str(tmp_path / "x"))


@pytest.mark.unit
def test_oss_without_ossfs_says_which_extra(monkeypatch):
    import importlib
    import sys

    # ossfs is in the dev extra: make it unimportable (and forget a class fsspec already loaded)
    monkeypatch.setitem(sys.modules, "ossfs", None)
    monkeypatch.delitem(importlib.import_module("fsspec.registry")._registry, "oss", raising=False)
    with pytest.raises(StorageError) as err:
        uris.filesystem("oss://bucket/k")
    assert str(err.value) == (
        "oss://bucket/k: oss:// needs a package that is not installed; pip install 'distilflow[oss]' (ossfs)"
    )


# --- S3 (moto's real HTTP server) ------------------------------------------------------------


def read_tree(root: str) -> dict[str, bytes]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = Path(path).read_bytes()
    return out


def test_s3_write_read_exists_remove(s3_bucket):
    base = f"s3://{s3_bucket}/prefix"
    target = uris.join(base, "sub", "f.txt")
    assert not uris.exists(target)
    uris.write_text(target, "über\n")
    assert uris.exists(target)
    assert uris.read_text(target) == "über\n"
    assert uris.read_bytes(target) == "über\n".encode()
    uris.write_text(target, "v2")
    assert uris.read_text(target) == "v2"
    # the object really is in the bucket, under the key we asked for
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["DISTILFLOW_S3_ENDPOINT_URL"], region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["prefix/sub/f.txt"]
    uris.remove(target)
    assert not uris.exists(target)


def test_s3_exists_sees_writes_by_other_processes(s3_bucket):
    """Another pod writes a completion marker after this process listed the folder."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["DISTILFLOW_S3_ENDPOINT_URL"], region_name="us-east-1")
    folder = f"s3://{s3_bucket}/run"
    uris.write_text(f"{folder}/a.txt", "a")
    fs, path = uris.filesystem(folder)
    assert fs.ls(path) == [f"{s3_bucket}/run/a.txt"]  # s3fs now holds a listing of the folder
    s3.put_object(Bucket=s3_bucket, Key="run/_COMPLETE", Body=b"done")
    s3.delete_object(Bucket=s3_bucket, Key="run/a.txt")
    assert uris.exists(f"{folder}/_COMPLETE")
    assert not uris.exists(f"{folder}/a.txt")
    fs.ls(path)  # cache the new listing, then another pod rewrites the marker with longer content
    s3.put_object(Bucket=s3_bucket, Key="run/_COMPLETE", Body=b"done, and then some")
    assert uris.read_text(f"{folder}/_COMPLETE") == "done, and then some"


def test_s3_missing_key(s3_bucket):
    target = f"s3://{s3_bucket}/prefix/missing.txt"
    with pytest.raises(FileNotFoundError, match=f"{target}: no such file"):
        uris.read_text(target)


def test_s3_upload_dir_then_materialize(s3_bucket, tmp_path):
    src = tmp_path / "model"
    (src / "tokenizer" / "extra").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (src / "tokenizer" / "extra" / "w.bin").write_bytes(bytes(range(256)) * 40)
    remote = f"s3://{s3_bucket}/prefix/model"
    uris.upload_dir(str(src), remote)
    uris.upload_dir(str(src), remote)  # a second upload overwrites, it does not nest
    assert uris.exists(uris.join(remote, "tokenizer", "extra", "w.bin"))

    cache = str(tmp_path / "cache")
    local = uris.materialize(remote, cache_dir=cache)
    assert read_tree(local) == read_tree(str(src))
    assert not [n for n in os.listdir(os.path.dirname(local)) if ".partial-" in n]
    # unchanged content: the second call is served from the cache (nothing downloaded again)
    stamp = os.path.getmtime(os.path.join(local, "config.json"))
    assert uris.materialize(remote, cache_dir=cache) == local
    assert os.path.getmtime(os.path.join(local, "config.json")) == stamp
    # a rerun upstream wrote a new model to the same URI: downloaded again, never served stale
    (src / "config.json").write_text('{"a": 2}')
    uris.upload_dir(str(src), remote)
    fresh = uris.materialize(remote, cache_dir=cache)
    assert fresh != local and read_tree(fresh) == read_tree(str(src))
    assert not os.path.exists(local)  # the stale download is gone
    # the model was deleted from the store: an error naming it, not a stale copy
    uris.remove(remote, recursive=True)
    with pytest.raises(FileNotFoundError, match="no such"):
        uris.materialize(remote, cache_dir=cache)


def test_s3_materialize_single_file(s3_bucket, tmp_path):
    remote = f"s3://{s3_bucket}/prefix/data.jsonl"
    uris.write_text(remote, '{"id": "1"}\n')
    cache = str(tmp_path / "cache")
    local = uris.materialize(remote, cache_dir=cache)
    assert os.path.isfile(local) and os.path.basename(local) == "data.jsonl"
    assert Path(local).read_text() == '{"id": "1"}\n'
    assert uris.materialize(remote, cache_dir=cache) == local  # cached answer is the same path


def test_s3_materialize_missing_leaves_nothing_in_cache(s3_bucket, tmp_path):
    remote = f"s3://{s3_bucket}/prefix/not-there"
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match=f"{remote}: no such file"):
        uris.materialize(remote, cache_dir=str(cache))
    assert not (cache / "downloads").exists() or os.listdir(cache / "downloads") == []


def test_s3_missing_bucket_is_named_with_a_fix(s3_bucket, tmp_path):
    missing = f"{s3_bucket}-typo"
    remote = f"s3://{missing}/prefix/f.txt"
    endpoint = os.environ["DISTILFLOW_S3_ENDPOINT_URL"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("x")
    # what s3fs itself says is "The specified bucket does not exist" with no name; ours names it
    ops = [
        lambda: uris.write_text(remote, "x"),
        lambda: uris.read_text(remote),
        lambda: uris.upload_dir(str(tmp_path / "d"), f"s3://{missing}/prefix"),
        lambda: uris.materialize(remote, cache_dir=str(tmp_path / "cache")),
    ]
    for op in ops:
        with pytest.raises(StorageError) as info:
            op()
        msg = str(info.value)
        assert f"bucket {missing!r} does not exist at {endpoint}" in msg
        assert f"aws s3 mb s3://{missing} --endpoint-url {endpoint}" in msg
        assert isinstance(info.value, DistilflowError)
    assert not uris.exists(remote)
    # upload_dir must not have created the bucket as a side effect
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    assert missing not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
