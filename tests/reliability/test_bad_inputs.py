"""Promise 3: bad input never runs far. Each case of the corpus goes through the CLI
(``distilflow stage NAME --config`` or ``distilflow validate``) and must end with exit 1, no
traceback, one line that names the place at fault and the fix, and no output marked complete.

The CLI runs in-process (click's ``CliRunner``) so that the corpus costs seconds, not a Python
start per case; ``test_kill_resume`` and ``test_faults`` run it as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from distilflow.client.cli import main
from distilflow.outputs import MANIFEST, MARKER
from distilflow.records import MAX_LINE_BYTES
from tests.reliability.conftest import figure

pytestmark = pytest.mark.reliability

GOOD = b'{"id": "p1", "problem": "What is 1 + 1?", "answer": "2"}\n{"id": "p2", "problem": "What is 2 + 2?", "answer": "4"}\n'
DOWN = "http://127.0.0.1:9/v1"  # nothing listens on port 9


@dataclass
class Ctx:
    dir: str
    tiny: str
    no_template: str
    bucket: str

    def file(self, name: str, data: bytes | str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        return path

    def cfg(self, data: Any, name: str = "config.yaml") -> str:
        return self.file(name, yaml.safe_dump(data, sort_keys=False))

    def out(self, stage: str) -> str:
        return os.path.join(self.dir, "out", stage)


def teacher(**kw: Any) -> dict[str, Any]:
    return {"backend": "openai", "base_url": DOWN, "model": "teacher", "max_retries": 0} | kw


def distill(ctx: Ctx, data: bytes | str | None = GOOD, **kw: Any) -> list[str]:
    """``distilflow stage distill`` with problems ``data`` and the config overridden by ``kw``."""
    problems_uri = ctx.file("problems.jsonl", data) if data is not None else None
    section = {"output_uri": ctx.out("distill"), "problems_uri": problems_uri, "teacher": teacher()}
    section.update(kw)
    section = {k: v for k, v in section.items() if v is not None}
    return ["stage", "distill", "--config", ctx.cfg(section)]


def incomplete(ctx: Ctx, stage: str, files: dict[str, str]) -> str:
    """An output folder of ``stage`` that was killed before its marker: files, config, no marker."""
    path = ctx.out(f"upstream-{stage}")
    os.makedirs(path, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    with open(os.path.join(path, "config.resolved.yaml"), "w") as f:
        f.write("{}\n")
    return path


def complete(ctx: Ctx, stage: str, files: dict[str, str]) -> str:
    path = incomplete(ctx, stage, files)
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump({"stage": stage, "result": {}}, f)
    with open(os.path.join(path, MARKER), "w") as f:
        f.write("done\n")
    return path


def partial_model(ctx: Ctx) -> str:
    """``<killed sft>/model``: whole-looking weights in an output that never got its marker."""
    model = os.path.join(incomplete(ctx, "sft", {}), "model")
    shutil.copytree(ctx.tiny, model)
    return model


def sft(ctx: Ctx, data_uri: str | None = None, **kw: Any) -> list[str]:
    if data_uri is None:
        row = {
            "id": "e1",
            "messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}],
        }
        data_uri = ctx.file("sft.jsonl", json.dumps(row) + "\n")
    section = {"output_uri": ctx.out("sft"), "data_uri": data_uri, "model": ctx.tiny, "max_steps": 1}
    section.update(kw)
    return ["stage", "sft", "--config", ctx.cfg(section)]


def validate(ctx: Ctx, **sections: Any) -> list[str]:
    """``distilflow validate`` of a quickstart config whose models are the tiny local ones."""
    base: dict[str, Any] = {
        "distill": {"teacher": {"backend": "transformers", "model": ctx.tiny}},
        "curate": {"judge": {"backend": "transformers", "model": ctx.tiny}},
        "sft": {"model": ctx.tiny},
    }
    for name, section in sections.items():
        base[name] = {**base.get(name, {}), **section}
    return ["validate", ctx.cfg(base, "pipeline.yaml")]


@dataclass
class Case:
    id: str
    args: Callable[[Ctx], list[str]]
    expect: list[str]  # fragments that must all appear on one line of the error
    extra: list[str] = field(default_factory=list)  # extra CLI arguments


CASES = [
    # --- problems JSONL ---
    Case(
        "malformed-json",
        lambda c: distill(c, GOOD + b'{"id": "p3", "problem": \n'),
        ["problems.jsonl:3", "invalid JSON"],
    ),
    Case(
        "json-array-line",
        lambda c: distill(c, b'["p1", "What?"]\n'),
        ["problems.jsonl:1", "expected a JSON object"],
    ),
    Case(
        "json-scalar-line",
        lambda c: distill(c, b"42\n"),
        ["problems.jsonl:1", "expected a JSON object, got int"],
    ),
    Case(
        "missing-problem",
        lambda c: distill(c, b'{"id": "p1", "answer": "2"}\n'),
        ["problems.jsonl:1", "'problem'", "Field required"],
    ),
    Case("missing-id", lambda c: distill(c, b'{"problem": "1+1?"}\n'), ["problems.jsonl:1", "'id'"]),
    Case(
        "wrong-type-problem",
        lambda c: distill(c, b'{"id": "p1", "problem": ["a", "b"]}\n'),
        ["problems.jsonl:1", "'problem'", "string"],
    ),
    Case(
        "wrong-type-id",
        lambda c: distill(c, b'{"id": {"x": 1}, "problem": "1+1?"}\n'),
        ["problems.jsonl:1", "'id'"],
    ),
    Case(
        "null-problem",
        lambda c: distill(c, b'{"id": "p1", "problem": null}\n'),
        ["problems.jsonl:1", "'problem'"],
    ),
    Case(
        "empty-problem",
        lambda c: distill(c, b'{"id": "p1", "problem": ""}\n'),
        ["problems.jsonl:1", "'problem'", "at least 1"],
    ),
    Case("empty-file", lambda c: distill(c, b""), ["problems.jsonl", "no records", "empty"]),
    Case("blank-lines-only", lambda c: distill(c, b"\n  \n\n"), ["problems.jsonl", "no records"]),
    Case(
        "huge-truncated-line",
        lambda c: distill(c, GOOD + b'{"id": "p3", "problem": "' + b"x" * 3_000_000),
        ["problems.jsonl:3", "invalid JSON"],
    ),
    Case(
        "huge-line",
        lambda c: distill(c, GOOD + b'{"id": "p3", "problem": "' + b"y" * (MAX_LINE_BYTES + 1) + b'"}\n'),
        ["problems.jsonl:3", "bytes", "shorten"],
    ),
    Case(
        "non-utf8",
        lambda c: distill(c, GOOD + b'{"id": "p3", "problem": "caf\xe9"}\n'),
        ["problems.jsonl:3", "not UTF-8", "re-encode"],
    ),
    Case(
        "utf16-file", lambda c: distill(c, GOOD.decode().encode("utf-16")), ["problems.jsonl:1", "not UTF-8"]
    ),
    Case(
        "duplicate-ids",
        lambda c: distill(c, GOOD + b'{"id": "p1", "problem": "again"}\n'),
        ["problems.jsonl:3", "duplicate id 'p1'"],
    ),
    Case(
        "problems-not-found",
        lambda c: [
            "stage",
            "distill",
            "--config",
            c.cfg(
                {
                    "output_uri": c.out("distill"),
                    "problems_uri": os.path.join(c.dir, "nope.jsonl"),
                    "teacher": teacher(),
                }
            ),
        ],
        ["nope.jsonl", "file not found"],
    ),
    Case(
        "problems-is-a-folder", lambda c: distill(c, None, problems_uri=c.dir), ["is a folder", "JSONL file"]
    ),
    # --- URIs and buckets ---
    Case(
        "http-scheme",
        lambda c: distill(c, problems_uri="http://example.com/p.jsonl"),
        ["problems_uri", "unsupported URI scheme 'http://'", "s3://"],
    ),
    Case(
        "scheme-typo",
        lambda c: distill(c, problems_uri="s3:/bucket/p.jsonl"),
        ["problems_uri", "missing a '/'", "s3://"],
    ),
    Case(
        "no-bucket",
        lambda c: distill(c, problems_uri="s3:///p.jsonl"),
        ["problems_uri", "names no bucket", "s3://BUCKET"],
    ),
    Case(
        "missing-bucket",
        lambda c: distill(c, problems_uri="s3://no-such-bucket-df/p.jsonl"),
        ["no-such-bucket-df", "does not exist", "create it"],
    ),
    Case(
        "missing-object",
        lambda c: distill(c, problems_uri=f"s3://{c.bucket}/nope.jsonl"),
        ["s3://", "/nope.jsonl", "file not found"],
    ),
    Case("empty-output-uri", lambda c: distill(c, output_uri=""), ["output_uri", "empty URI"]),
    Case("file-uri-no-path", lambda c: distill(c, output_uri="file://"), ["output_uri", "names no path"]),
    # --- config files and keys ---
    Case(
        "unknown-key",
        lambda c: distill(c, teacherr={"model": "x"}),
        ["DistillConfig.teacherr", "unknown key", "spelling"],
    ),
    Case(
        "unknown-nested-key",
        lambda c: distill(c, teacher=teacher(temprature=0.5)),
        ["DistillConfig.teacher.temprature", "unknown key"],
    ),
    Case("n-zero", lambda c: distill(c, n=0), ["DistillConfig.n", "greater than or equal to 1", "got 0"]),
    Case("n-wrong-type", lambda c: distill(c, n="two"), ["DistillConfig.n", "integer", "'two'"]),
    Case(
        "temperature-out-of-range",
        lambda c: distill(c, teacher=teacher(temperature=5)),
        ["teacher.temperature", "less than or equal to 2"],
    ),
    Case(
        "ratio-out-of-range",
        lambda c: distill(c, min_success_ratio=1.5),
        ["min_success_ratio", "less than or equal to 1"],
    ),
    Case("shard-index", lambda c: distill(c, num_shards=2, shard_index=2), ["shard_index=2", "num_shards=2"]),
    Case(
        "missing-problems-uri", lambda c: distill(c, None), ["DistillConfig.problems_uri", "Field required"]
    ),
    Case(
        "openai-without-base-url",
        lambda c: distill(c, teacher={"backend": "openai", "model": "m"}),
        ["needs base_url", "http://127.0.0.1:8000/v1"],
    ),
    Case(
        "teacher-and-teachers", lambda c: distill(c, teachers=[teacher(name="b")]), ["exactly one of teacher"]
    ),
    Case(
        "unknown-backend",
        lambda c: distill(c, teacher=teacher(backend="ollama")),
        ["teacher.backend", "'openai'"],
    ),
    Case(
        "config-not-yaml",
        lambda c: ["stage", "distill", "--config", c.file("bad.yaml", "a: [1, 2\nb: 3\n")],
        ["bad.yaml", "not valid YAML"],
    ),
    Case(
        "config-not-json",
        lambda c: ["stage", "distill", "--config", c.file("bad.json", '{"n": 1,}')],
        ["bad.json:1", "not valid JSON"],
    ),
    Case(
        "config-is-a-list",
        lambda c: ["stage", "distill", "--config", c.file("list.yaml", "- 1\n- 2\n")],
        ["list.yaml", "must be a mapping"],
    ),
    Case(
        "config-missing",
        lambda c: ["stage", "distill", "--config", os.path.join(c.dir, "none.yaml")],
        ["none.yaml", "config file not found"],
    ),
    Case("set-without-equals", lambda c: distill(c), ["--set 'n'", "KEY=VALUE"], extra=["--set", "n"]),
    Case(
        "set-out-of-range",
        lambda c: distill(c),
        ["--set n", "greater than or equal to 1"],
        extra=["--set", "n=-1"],
    ),
    Case(
        "unknown-stage",
        lambda c: ["stage", "distil", "--config", c.cfg({})],
        ["unknown stage 'distil'", "distill"],
    ),
    # --- models ---
    Case(
        "nonexistent-model",
        lambda c: distill(c, teacher={"backend": "transformers", "model": os.path.join(c.dir, "no-model")}),
        ["no-model", "no such folder", "model folder"],
    ),
    Case(
        "model-without-weights",
        lambda c: distill(c, teacher={"backend": "transformers", "model": c.dir}),
        ["folder has no config.json and weights"],
    ),
    Case(
        "hub-id-model",
        lambda c: sft(c, model="Qwen/Qwen3-0.6B"),
        ["Qwen/Qwen3-0.6B", "no such folder", "never downloads"],
    ),
    Case(
        "no-chat-template",
        lambda c: validate(c, sft={"model": c.no_template}),
        ["sft.model", "no tokenizer chat template", "chat_template"],
    ),
    Case(
        "student-too-small",
        lambda c: validate(c, sft={"model": c.tiny, "max_length": 8192}),
        ["sft.max_length=8192", "max_position_embeddings=4096", "lower"],
    ),
    # --- upstream outputs and stage-specific checks ---
    Case(
        "partial-distill-output",
        lambda c: [
            "stage",
            "curate",
            "--config",
            c.cfg(
                {
                    "output_uri": c.out("curate"),
                    "data_uri": incomplete(c, "distill", {"traces.jsonl": ""}),
                    "judge": teacher(),
                }
            ),
        ],
        ["upstream-distill", "no completion marker", "Rerun"],
    ),
    Case(
        "partial-curate-output",
        lambda c: sft(c, incomplete(c, "curate", {"sft.jsonl": ""})),
        ["upstream-curate", "no completion marker"],
    ),
    Case(
        "complete-output-without-file",
        lambda c: sft(c, complete(c, "curate", {})),
        [
            "upstream-curate",
            "data_uri",
            "neither sft shards in its manifest nor sft.jsonl",
            "point at the output",
        ],
    ),
    Case(
        "bad-trace-line",
        lambda c: [
            "stage",
            "curate",
            "--config",
            c.cfg(
                {
                    "output_uri": c.out("curate"),
                    "data_uri": complete(c, "distill", {"traces.jsonl": '{"id": "t1"}\n'}),
                    "judge": teacher(),
                }
            ),
        ],
        ["traces.jsonl:1", "not a valid Trace"],
    ),
    Case(
        "sft-row-one-message",
        lambda c: sft(
            c, c.file("one.jsonl", '{"id": "e1", "messages": [{"role": "user", "content": "hi"}]}\n')
        ),
        ["one.jsonl:1", "'messages'", "at least 2"],
    ),
    Case(
        "sft-row-bad-role",
        lambda c: sft(
            c,
            c.file(
                "role.jsonl",
                '{"id": "e1", "messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]}\n',
            ),
        ),
        ["role.jsonl:1", "role"],
    ),
    Case(
        "evaluate-no-answers",
        lambda c: [
            "stage",
            "evaluate",
            "--config",
            c.cfg(
                {
                    "output_uri": c.out("evaluate"),
                    "model": c.tiny,
                    "problems_uri": c.file("noans.jsonl", '{"id": "q1", "problem": "1+1?"}\n'),
                }
            ),
        ],
        ["noans.jsonl", "no reference answer", "add them"],
    ),
    Case(
        "evaluate-greedy-samples",
        lambda c: [
            "stage",
            "evaluate",
            "--config",
            c.cfg(
                {
                    "output_uri": c.out("evaluate"),
                    "model": c.tiny,
                    "problems_uri": c.file("p.jsonl", GOOD),
                    "temperature": 0,
                    "samples": 4,
                }
            ),
        ],
        ["samples=4", "temperature=0", "set temperature"],
    ),
    Case(
        "rl-group-size",
        lambda c: [
            "stage",
            "rl",
            "--config",
            c.cfg(
                {
                    "output_uri": c.out("rl"),
                    "model": c.tiny,
                    "problems_uri": c.file("p.jsonl", GOOD),
                    "num_generations": 3,
                    "per_device_train_batch_size": 4,
                }
            ),
        ],
        ["multiple of num_generations"],
    ),
    Case(
        "partial-sft-model",
        lambda c: [
            "stage",
            "evaluate",
            "--config",
            c.cfg(
                {
                    "output_uri": c.out("evaluate"),
                    "model": partial_model(c),
                    "problems_uri": c.file("p.jsonl", GOOD),
                }
            ),
        ],
        ["upstream-sft", "no completion marker", "Rerun"],
    ),
    # --- validate ---
    Case(
        "validate-unknown-section",
        lambda c: validate(c, distil={"n": 2}),
        ["unknown section(s) ['distil']", "sections are"],
    ),
    Case(
        "validate-endpoint-down",
        lambda c: validate(c, distill={"teacher": teacher()}),
        ["distill.teacher", "unreachable", "check base_url"],
    ),
    Case(
        "validate-bad-problems",
        lambda c: validate(c, distill={"problems_uri": c.file("bad.jsonl", b'{"id": 1}\n')}),
        ["bad.jsonl:1", "'problem'"],
    ),
]


@pytest.fixture(scope="module")
def corpus_models(tiny_qwen3, tmp_path_factory) -> tuple[str, str]:
    """The tiny model and a copy whose tokenizer has no chat template."""
    bare = str(tmp_path_factory.mktemp("no-template"))
    shutil.copytree(tiny_qwen3, bare, dirs_exist_ok=True)
    os.remove(os.path.join(bare, "chat_template.jinja"))
    tok_cfg = os.path.join(bare, "tokenizer_config.json")
    with open(tok_cfg) as f:
        data = json.load(f)
    data.pop("chat_template", None)
    with open(tok_cfg, "w") as f:
        json.dump(data, f)
    return tiny_qwen3, bare


def test_the_corpus_baseline_is_valid(corpus_models, work):
    """The validate baseline every validate case changes one thing of passes: the cases fail for
    their own reason."""
    ctx = Ctx(dir=work, tiny=corpus_models[0], no_template=corpus_models[1], bucket="unused")
    result = CliRunner().invoke(main, validate(ctx))
    assert result.exit_code == 0, result.output


def test_corpus_is_large_enough():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, corpus_models, s3_env, work, monkeypatch):
    bucket, moto = s3_env
    monkeypatch.setenv("DISTILFLOW_S3_ENDPOINT_URL", moto)
    ctx = Ctx(dir=work, tiny=corpus_models[0], no_template=corpus_models[1], bucket=bucket)
    args = case.args(ctx) + case.extra
    result = CliRunner().invoke(main, args)
    text = result.stderr
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert "Traceback" not in result.output
    lines = [line for line in text.splitlines() if all(f in line for f in case.expect)]
    assert lines, f"no line of the error has all of {case.expect}:\n{text}"
    assert len(lines[0]) < 600, lines[0]  # one readable line, not a dump of the input
    marked = [root for root, _, files in os.walk(work) if MARKER in files and "upstream-" not in root]
    assert not marked, marked
    figure(f"bad-input/{case.id}", exit=result.exit_code, error=lines[0].strip()[:160])
