"""oss:// end to end: distilflow.uri over ossfs/oss2 against a loopback OSS-compatible server
(tests/fakes/oss_server.py). A stage output round-trips: begin/finish (resolved config, manifest, marker),
records written and read back, a folder uploaded and materialized, stale markers removed; the
AccessKey signs requests and never travels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import Field

pytest.importorskip("ossfs")

from distilflow import uri as uris  # noqa: E402
from distilflow.config import BaseConfig  # noqa: E402
from distilflow.errors import IncompleteOutputError, StorageError  # noqa: E402
from distilflow.outputs import MARKER, StageOutput, require_complete  # noqa: E402
from distilflow.records import Problem, read_jsonl, write_jsonl  # noqa: E402
from tests.fakes.oss_server import FakeOss  # noqa: E402

KEY_ID = "LTAI-oss-test"
KEY_SECRET = "oss-secret-never-sent"


class ToyConfig(BaseConfig):
    output_uri: str = Field(description="Output folder")
    steps: int = Field(3, description="Steps")


@pytest.fixture
def oss(monkeypatch, tmp_path):
    import fsspec

    fake = FakeOss(buckets=("runs",))
    endpoint = fake.start()
    monkeypatch.setenv("OSS_ENDPOINT", endpoint)
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", KEY_SECRET)
    monkeypatch.setenv("DISTILFLOW_CACHE", str(tmp_path / "cache"))
    fsspec.get_filesystem_class("oss").clear_instance_cache()
    yield fake
    fake.stop()


def test_stage_output_round_trips_on_oss(oss, tmp_path):
    run = "oss://runs/exp/r1"
    config = ToyConfig(output_uri=uris.join(run, "distill"), steps=5)
    out = StageOutput(config.output_uri, "distill")
    assert out.reusable(config) is None
    out.begin(config)
    problems = [Problem(id=f"p{i}", problem=f"What is {i} + {i}?", answer=str(2 * i)) for i in range(250)]
    assert write_jsonl(out.path("problems.jsonl"), problems) == 250
    out.finish(result={"rows": 250}, counts={"problems": 250})

    keys = oss.keys("runs")
    assert keys == [
        "exp/r1/distill/_COMPLETE",
        "exp/r1/distill/config.resolved.yaml",
        "exp/r1/distill/manifest.json",
        "exp/r1/distill/problems.jsonl",
    ]
    assert b'"id":"p249"' in oss.buckets["runs"]["exp/r1/distill/problems.jsonl"].data.replace(b" ", b"")
    # read back through a fresh filesystem (no cached listings), as the next stage's pod would
    import fsspec

    fsspec.get_filesystem_class("oss").clear_instance_cache()
    manifest = require_complete(config.output_uri)
    assert manifest["result"] == {"rows": 250} and manifest["counts"] == {"problems": 250}
    assert StageOutput(config.output_uri, "distill").reusable(config)["result"] == {"rows": 250}
    assert read_jsonl(out.path("problems.jsonl"), Problem) == problems
    assert ToyConfig.load(out.path("config.resolved.yaml")) == config

    # a rerun with another config drops the marker before writing anything else
    other = ToyConfig(output_uri=config.output_uri, steps=6)
    assert out.reusable(other) is None
    StageOutput(config.output_uri, "distill").begin(other)
    assert "exp/r1/distill/_COMPLETE" not in oss.keys("runs")
    with pytest.raises(IncompleteOutputError, match=MARKER):
        require_complete(config.output_uri)

    for r in oss.requests:
        assert KEY_SECRET not in str(r)
        assert r["headers"]["authorization"].startswith(f"OSS {KEY_ID}:")


def test_upload_dir_and_materialize_on_oss(oss, tmp_path):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"hidden_size": 64}')
    (model / "sub" / "weights.bin").write_bytes(os.urandom(300_000))
    uri = "oss://runs/exp/r1/sft/model"
    uris.upload_dir(str(model), uri)
    assert oss.keys("runs") == ["exp/r1/sft/model/config.json", "exp/r1/sft/model/sub/weights.bin"]

    local = Path(uris.materialize(uri))
    assert (local / "config.json").read_text() == '{"hidden_size": 64}'
    assert (local / "sub" / "weights.bin").read_bytes() == (model / "sub" / "weights.bin").read_bytes()
    assert uris.materialize(uri) == str(local)  # cached: no second download
    single = Path(uris.materialize(uris.join(uri, "config.json")))
    assert single.name == "config.json" and single.read_text() == '{"hidden_size": 64}'
    # ranged reads (fsspec's readahead) return the right bytes
    fs, path = uris.filesystem(uris.join(uri, "sub", "weights.bin"))
    with fs.open(path, "rb", block_size=65536) as f:
        f.seek(100_000)
        assert f.read(1000) == (model / "sub" / "weights.bin").read_bytes()[100_000:101_000]

    uris.remove(uri, recursive=True)
    assert oss.keys("runs") == []
    assert not uris.exists(uris.join(uri, "config.json"))


def test_missing_object_and_bucket_are_named(oss):
    with pytest.raises(FileNotFoundError, match="oss://runs/nope.jsonl: no such file"):
        uris.read_text("oss://runs/nope.jsonl")
    with pytest.raises(StorageError, match="bucket 'typo-bucket' does not exist"):
        uris.read_text("oss://typo-bucket/x.json")


def test_listing_pages_and_v2(oss):
    """The server pages v1 (marker) and v2 (continuation token) listings as OSS does; oss2 follows both."""
    import oss2

    for i in range(7):
        uris.write_text(f"oss://runs/many/part-{i:02d}.jsonl", "{}\n")
    uris.write_text("oss://runs/many/sub/x.jsonl", "{}\n")
    bucket = oss2.Bucket(oss2.Auth(KEY_ID, KEY_SECRET), os.environ["OSS_ENDPOINT"], "runs")
    v1 = [o.key for o in oss2.ObjectIterator(bucket, prefix="many/", delimiter="/", max_keys=3)]
    v2 = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix="many/", delimiter="/", max_keys=3)]
    expected = [f"many/part-{i:02d}.jsonl" for i in range(7)] + ["many/sub/"]
    assert v1 == v2 == expected
    pages = [r for r in oss.requests if r["method"] == "GET" and r["path"].rstrip("/") == "/runs"]
    assert any("marker" in r["query"] for r in pages) and any(
        "continuation-token" in r["query"] for r in pages
    )
    listed = uris.filesystem("oss://runs/many")[0].ls("runs/many", detail=False)
    assert sorted(p.rstrip("/") for p in listed) == [f"runs/{k.rstrip('/')}" for k in expected]


def test_multipart_upload(oss):
    import oss2

    bucket = oss2.Bucket(oss2.Auth(KEY_ID, KEY_SECRET), os.environ["OSS_ENDPOINT"], "runs")
    data = os.urandom(250_000)
    upload_id = bucket.init_multipart_upload("big.bin").upload_id
    parts = []
    for n, off in enumerate(range(0, len(data), 102_400), start=1):  # OSS's smallest part: 100 KB
        result = bucket.upload_part("big.bin", upload_id, n, data[off : off + 102_400])
        parts.append(oss2.models.PartInfo(n, result.etag))
    bucket.complete_multipart_upload("big.bin", upload_id, parts)
    assert uris.read_bytes("oss://runs/big.bin") == data


def test_a_stage_runs_end_to_end_on_oss(oss, problems_file, tiny_qwen3):
    """distill reads its problems from oss:// and writes its whole output there; a rerun reuses it."""
    from distilflow.client.local import run_stage
    from distilflow.records import Trace

    uris.write_bytes("oss://runs/data/problems.jsonl", Path(problems_file).read_bytes())
    overrides = [
        "output_uri=oss://runs/exp/r2/distill",
        "problems_uri=oss://runs/data/problems.jsonl",
        "teacher.backend=transformers",
        f"teacher.model={tiny_qwen3}",
        "teacher.max_new_tokens=8",
        "n=2",
    ]
    result = run_stage("distill", None, overrides)
    traces = read_jsonl("oss://runs/exp/r2/distill/traces.jsonl", Trace)
    assert len(traces) == 4 * 2 and {t.problem_id for t in traces} == {"p1", "p2", "p3", "p4"}
    manifest = require_complete("oss://runs/exp/r2/distill")
    assert manifest["stage"] == "distill"
    assert "exp/r2/distill/_COMPLETE" in oss.keys("runs")
    puts = len([r for r in oss.requests if r["method"] in ("PUT", "POST")])
    again = run_stage("distill", None, overrides)
    assert again == result
    assert len([r for r in oss.requests if r["method"] in ("PUT", "POST")]) == puts  # nothing rewritten


def test_the_oss_fake_refuses_bodies_oss_refuses(oss):
    """Parts out of order, a wrong ETag, a part under 100 KB before the last, a body whose Content-MD5
    does not match: refused with OSS's codes (so the multipart test above can fail)."""
    import oss2

    bucket = oss2.Bucket(oss2.Auth(KEY_ID, KEY_SECRET), os.environ["OSS_ENDPOINT"], "runs")

    def upload(sizes: list[int]) -> tuple[str, list]:
        upload_id = bucket.init_multipart_upload("p.bin").upload_id
        parts = [oss2.models.PartInfo(n, bucket.upload_part("p.bin", upload_id, n, os.urandom(size)).etag)
                 for n, size in enumerate(sizes, start=1)]  # fmt: skip
        return upload_id, parts

    upload_id, parts = upload([102_400, 10])
    with pytest.raises(oss2.exceptions.ServerError) as err:
        bucket.complete_multipart_upload("p.bin", upload_id, [parts[0], oss2.models.PartInfo(2, "0" * 32)])
    assert err.value.status == 400 and err.value.code == "InvalidPart"
    # oss2 sorts the parts itself: send the reversed list as raw XML
    xml = "".join(
        f"<Part><PartNumber>{p.part_number}</PartNumber><ETag>{p.etag}</ETag></Part>" for p in parts[::-1]
    )
    status, _, payload = oss.handle(
        "POST",
        "/runs/p.bin",
        {"uploadId": upload_id},
        {},
        f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode(),
    )
    assert status == 400 and b"<Code>InvalidPartOrder</Code>" in payload
    small_id, small = upload([50_000, 10])
    with pytest.raises(oss2.exceptions.ServerError) as err:
        bucket.complete_multipart_upload("p.bin", small_id, small)
    assert err.value.code == "EntityTooSmall"
    bucket.complete_multipart_upload("p.bin", upload_id, parts)  # the valid list still completes
    with pytest.raises(oss2.exceptions.ServerError) as err:
        bucket.put_object("x.bin", b"payload", headers={"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="})
    assert err.value.code == "InvalidDigest" and "x.bin" not in oss.keys("runs")
