"""Benchmarks as data adapters: rows in the hub's own format -> ``Item``s the stage can ask and check.

Each built-in benchmark knows its Hugging Face dataset id, split and field names:

=============== =========================================== ========== =====================================
benchmark        hub dataset (subset)                         split      fields used
=============== =========================================== ========== =====================================
aime2024         HuggingFaceH4/aime_2024                      train      id, problem, answer, url
math500          HuggingFaceH4/MATH-500                       test       unique_id, problem, answer, level
gpqa_diamond     Idavidrein/gpqa (gpqa_diamond; gated)        train      Record ID, Question, Correct Answer,
                                                                         Incorrect Answer 1-3, Writer's
                                                                         Difficulty Estimate
livecodebench    livecodebench/code_generation_lite           (files)    question_id, question_content,
                 (test.jsonl .. test6.jsonl by release)                  starter_code, difficulty,
                                                                         public/private_test_cases, metadata
=============== =========================================== ========== =====================================

``source: hub`` loads them with ``datasets.load_dataset`` (LiveCodeBench's loading script no longer
runs under datasets >= 4, so its release files are read as JSON from the hub directly);
``source: <uri>`` reads a .jsonl/.parquet copy in the same format from a path or object storage;
``source: sample`` reads the few rows shipped in ``samples/`` (tests and the quickstart: no download).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distilflow import uri as uris
from distilflow.components.evaluate.config import BenchmarkConfig, EvaluateConfig
from distilflow.errors import RecordError
from distilflow.records import describe
from distilflow.sandbox import TestCase

SAMPLES_DIR = os.path.join(os.path.dirname(__file__), "samples")

HUB = {
    "aime2024": {"hub_id": "HuggingFaceH4/aime_2024", "subset": None, "split": "train"},
    "math500": {"hub_id": "HuggingFaceH4/MATH-500", "subset": None, "split": "test"},
    "gpqa_diamond": {"hub_id": "Idavidrein/gpqa", "subset": "gpqa_diamond", "split": "train"},
    "livecodebench": {"hub_id": "livecodebench/code_generation_lite", "subset": None, "split": "train"},
}
# LiveCodeBench release -> the files of code_generation_lite it spans (each release adds one).
LCB_FILES = ["test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl"]
DEFAULT_SAMPLES = {"aime2024": 8}

# simple-evals / lighteval GPQA prompt: reasoning, then "Answer: LETTER" on the last line.
GPQA_PROMPT = (
    "Answer the following multiple choice question. The last line of your response should be of the "
    "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by "
    "step before answering.\n\n{{problem}}"
)
# LiveCodeBench's code-generation instruction (the question section is built per problem).
CODE_PROMPT = (
    "You will be given a question (problem specification) and will generate a correct Python program "
    "that matches the specification and passes all tests.\n\n{{problem}}"
)
LCB_FORMAT_STDIN = (
    "### Format: Read the inputs from stdin solve the problem and write the answer to stdout (do not "
    "directly test on the sample inputs). Enclose your code within delimiters as follows. Ensure that "
    "when the python program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.\n"
    "```python\n# YOUR CODE HERE\n```\n\n"
)
LCB_FORMAT_STARTER = (
    "### Format: You will use the following starter code to write the solution to the problem and "
    "enclose your code within delimiters.\n```python\n{starter}\n```\n\n"
)
LCB_ANSWER = "### Answer: (use the provided format with backticks)\n\n"


@dataclass
class Item:
    """One problem as the stage asks and checks it."""

    id: str
    problem: str
    answer: str | None
    domain: str  # math | multiple_choice | code | other
    difficulty: str | None = None
    tests: list[TestCase] = field(default_factory=list)
    func_name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Benchmark:
    """A loaded benchmark: its items, where they came from, and the template they are asked with."""

    name: str
    kind: str
    items: list[Item]
    source: dict[str, Any]
    sha256: str
    prompt_template: str
    samples: int


def _get(row: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    lowered = {k.lower(): v for k, v in row.items()}
    for name in names:
        if name.lower() in lowered and lowered[name.lower()] is not None:
            return lowered[name.lower()]
    return default


def _aime_difficulty(row: dict[str, Any]) -> str | None:
    """AIME problems get harder with their number: 1-5, 6-10, 11-15."""
    text = str(_get(row, "url", "id", "ID", "problem_idx", default=""))
    found = re.findall(r"(\d+)\s*$", text.rstrip("/"))
    if not found:
        return None
    number = int(found[-1])
    if not 1 <= number <= 15:
        return None
    return "problems 1-5" if number <= 5 else "problems 6-10" if number <= 10 else "problems 11-15"


def adapt_aime(row: dict[str, Any], _cfg: BenchmarkConfig, _seed: int) -> Item:
    return Item(
        id=str(_get(row, "id", "ID", "problem_idx")),
        problem=str(_get(row, "problem", "Problem")),
        answer=str(_get(row, "answer", "Answer")).strip(),
        domain="math",
        difficulty=_aime_difficulty(row),
    )


def adapt_math500(row: dict[str, Any], _cfg: BenchmarkConfig, _seed: int) -> Item:
    level = _get(row, "level")
    return Item(
        id=str(_get(row, "unique_id", "id")),
        problem=str(row["problem"]),
        answer=str(row["answer"]).strip(),
        domain="math",
        difficulty=f"level {level}" if level is not None else None,
        meta={"subject": _get(row, "subject")},
    )


def adapt_gpqa(row: dict[str, Any], cfg: BenchmarkConfig, seed: int) -> Item:
    """Four options in a seeded order per question (the correct one is not always A)."""
    rid = str(_get(row, "Record ID", "id"))
    options = [str(row["Correct Answer"]).strip()] + [
        str(row[f"Incorrect Answer {i}"]).strip() for i in (1, 2, 3)
    ]
    order = list(range(4))
    if cfg.shuffle_choices:
        random.Random(f"{seed}:{rid}").shuffle(order)
    letters = "ABCD"
    shown = [options[i] for i in order]
    question = str(row["Question"]).strip()
    text = question + "\n\n" + "\n".join(f"{letters[j]}) {opt}" for j, opt in enumerate(shown))
    estimate = _get(row, "Writer's Difficulty Estimate")
    return Item(
        id=rid,
        problem=text,
        answer=letters[order.index(0)],
        domain="multiple_choice",
        difficulty=str(estimate).split(" (")[0] if estimate else None,
        meta={"choices": shown, "domain": _get(row, "High-level domain")},
    )


def _lcb_tests(value: Any) -> list[dict[str, Any]]:
    """LiveCodeBench test lists: JSON, or (private tests) base64(zlib(pickle(JSON)))."""
    if not value:
        return []
    if isinstance(value, list):
        return value
    try:
        return json.loads(value)
    except ValueError:
        pass
    import pickle

    # The official encoding of code_generation_lite's private tests; only hub/mirror data reaches here.
    decoded = pickle.loads(zlib.decompress(base64.b64decode(value.encode("utf-8"))))  # noqa: S301
    return json.loads(decoded) if isinstance(decoded, (str, bytes)) else decoded


def adapt_lcb(row: dict[str, Any], _cfg: BenchmarkConfig, _seed: int) -> Item:
    starter = (_get(row, "starter_code") or "").strip()
    meta = _get(row, "metadata") or "{}"
    meta = json.loads(meta) if isinstance(meta, str) else meta
    fmt = LCB_FORMAT_STARTER.format(starter=starter) if starter else LCB_FORMAT_STDIN
    text = f"### Question:\n{row['question_content']}\n\n{fmt}{LCB_ANSWER}"
    tests = []
    for t in _lcb_tests(_get(row, "public_test_cases")) + _lcb_tests(_get(row, "private_test_cases")):
        kind = "call" if t.get("testtype") == "functional" else "stdin"
        tests.append(TestCase(input=t["input"], output=t["output"], kind=kind))
    return Item(
        id=str(_get(row, "question_id", "id")),
        problem=text,
        answer=None,
        domain="code",
        difficulty=_get(row, "difficulty"),
        tests=tests,
        func_name=meta.get("func_name"),
        meta={"platform": _get(row, "platform"), "title": _get(row, "question_title")},
    )


class EvalTest(BaseModel):
    """One test of a code problem in your own evaluation file."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field("", description="Standard input, or the call's arguments (kind call)")
    output: str = Field("", description="Expected standard output, or the call's result")
    kind: Literal["stdin", "call"] = Field("stdin", description="stdin: a program; call: a function")


class EvalProblem(BaseModel):
    """A line of your own evaluation file (benchmark ``jsonl``); read strictly, like ``records.Problem``:
    ids, answers and difficulties are text (``"answer": "42"``, not ``42``). Extra keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, description="Unique id of the problem")
    problem: str = Field(min_length=1, description="The question text")
    answer: str | None = Field(None, description="Reference final answer (or the correct choice's text)")
    domain: str | None = Field(None, description="math (default), code, multiple_choice, ...")
    difficulty: str | None = Field(None, description="A label to break accuracy down by")
    choices: list[str] | None = Field(None, description="Options of a multiple-choice question")
    tests: list[EvalTest] | None = Field(None, description="Tests of a code problem")
    func_name: str | None = Field(None, description="Function the tests call (kind call)")


def adapt_jsonl(row: dict[str, Any], _cfg: BenchmarkConfig, _seed: int) -> Item:
    """Your own problems: {id, problem, answer?, domain?, difficulty?, choices?, tests?, func_name?}."""
    try:
        rec = EvalProblem.model_validate(row, strict=True)
    except ValidationError as exc:
        raise ValueError(f"EvalProblem {describe(exc)}") from None
    problem, answer, domain = rec.problem, rec.answer, rec.domain or "math"
    if rec.choices:
        letters = "ABCDEFGHIJ"
        problem = problem + "\n\n" + "\n".join(f"{letters[i]}) {c}" for i, c in enumerate(rec.choices))
        if answer is not None and answer in rec.choices:
            answer = letters[rec.choices.index(answer)]
        domain = "multiple_choice"
    tests = [TestCase(input=t.input, output=t.output, kind=t.kind) for t in rec.tests or []]
    if tests:
        domain = "code"
    return Item(
        id=rec.id,
        problem=problem,
        answer=answer,
        domain=domain,
        difficulty=rec.difficulty,
        tests=tests,
        func_name=rec.func_name,
    )


ADAPTERS = {
    "aime2024": adapt_aime,
    "math500": adapt_math500,
    "gpqa_diamond": adapt_gpqa,
    "livecodebench": adapt_lcb,
    "jsonl": adapt_jsonl,
}


def sample_path(name: str) -> str:
    return os.path.join(SAMPLES_DIR, f"{name}.jsonl")


def _read_rows(uri: str) -> tuple[list[dict[str, Any]], str]:
    """Rows of a .jsonl/.json (JSON lines) or .parquet file, local or in object storage, and the
    sha256 of the file's bytes (what ``sha256sum`` prints for it)."""
    data = uris.read_bytes(uri)
    file_sha256 = hashlib.sha256(data).hexdigest()
    if uri.endswith(".parquet"):
        import datasets

        ds = datasets.load_dataset(
            "parquet", data_files=uri, split="train", storage_options=uris.storage_options(uri) or None
        )
        return [dict(r) for r in ds], file_sha256
    rows = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise RecordError(f"{uri}:{n}: not JSON ({exc.msg}); each line must be one JSON object") from None
        if not isinstance(value, dict):
            raise RecordError(f"{uri}:{n}: expected a JSON object, got {type(value).__name__}")
        rows.append(value)
    return rows, file_sha256


def _from_hub(cfg: BenchmarkConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import datasets

    defaults = HUB[cfg.name]
    hub_id = cfg.hub_id or defaults["hub_id"]
    subset = cfg.subset or defaults["subset"]
    split = cfg.split or defaults["split"]
    where = {"hub_id": hub_id, "subset": subset, "split": split, "revision": cfg.revision}
    if cfg.name == "livecodebench":
        try:
            upto = int(cfg.version.rsplit("v", 1)[1])
        except (IndexError, ValueError):
            raise RecordError(
                f"livecodebench version {cfg.version!r}: use release_v1 .. release_v6"
            ) from None
        rev = cfg.revision or "main"
        files = [f"hf://datasets/{hub_id}@{rev}/{f}" for f in LCB_FILES[:upto]]
        ds = datasets.load_dataset("json", data_files=files, split="train")
        where.update(version=cfg.version, files=LCB_FILES[:upto])
    else:
        ds = datasets.load_dataset(hub_id, subset, split=split, revision=cfg.revision)
    return [dict(r) for r in ds], where


def load_benchmark(cfg: BenchmarkConfig, config: EvaluateConfig) -> Benchmark:
    """Load, adapt and hash one benchmark; an unusable row is reported as file:line."""
    if cfg.source == "hub":
        rows, where = _from_hub(cfg)
        where = {"source": "hub", **where}
    else:
        path = sample_path(cfg.name) if cfg.source == "sample" else cfg.source
        rows, file_sha256 = _read_rows(path)
        where = {"source": cfg.source, "uri": path, "file_sha256": file_sha256}
    if cfg.name == "gpqa_diamond":
        where["shuffle_choices"] = cfg.shuffle_choices
    adapter = ADAPTERS[cfg.name]
    items, bad = [], []
    for n, row in enumerate(rows, 1):
        try:
            items.append(adapter(row, cfg, config.seed))
        except (KeyError, TypeError, ValueError) as exc:
            bad.append(f"row {n}: {type(exc).__name__}: {exc}")
    if bad:
        raise RecordError(
            f"benchmark {cfg.display} ({where.get('uri') or where.get('hub_id')}): {len(bad)} unusable row(s): "
            + "; ".join(bad[:5])
        )
    missing = [i.id for i in items if not i.answer and not i.tests]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise RecordError(
            f"{where.get('uri') or where.get('hub_id')}: {len(missing)} problem(s) have no reference answer "
            f"({shown}); evaluate needs an 'answer' (or 'tests') on every problem: add them or drop those lines"
        )
    limit = cfg.max_problems or config.max_problems
    if limit is not None:
        items = items[:limit]
    return Benchmark(
        name=cfg.display,
        kind=cfg.name,
        items=items,
        source=where,
        sha256=rows_sha256(rows),
        prompt_template=prompt_template(cfg, config),
        samples=effective_samples(cfg, config),
    )


def rows_sha256(rows: list[dict[str, Any]]) -> str:
    """The data's identity in the protocol (``problems_sha256``): sha256 over every row as canonical JSON
    (keys sorted, UTF-8, ``ensure_ascii=False``) followed by a newline, in file order, all rows before
    ``max_problems`` is applied. A mirror of the hub data (.jsonl or .parquet) hashes alike."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def prompt_template(cfg: BenchmarkConfig, config: EvaluateConfig) -> str:
    if cfg.prompt_template:
        return cfg.prompt_template
    if cfg.name == "gpqa_diamond":
        return GPQA_PROMPT
    if cfg.name == "livecodebench":
        return CODE_PROMPT
    return config.prompt_template


def effective_samples(cfg: BenchmarkConfig, config: EvaluateConfig) -> int:
    """Benchmark setting, else the stage's, else the benchmark's default; 1 when decoding greedily."""
    if config.temperature == 0:
        return 1
    return cfg.samples or config.samples or DEFAULT_SAMPLES.get(cfg.name, 1)


def mirror_source(source: str, name: str) -> str:
    """A benchmark's source under the stage's ``source``: hub and sample as they are; a folder, the
    benchmark's mirror in it (``<name>.parquet`` when there is one, else ``<name>.jsonl``)."""
    if source in ("hub", "sample"):
        return source
    parquet = uris.join(source, f"{name}.parquet")
    return parquet if uris.exists(parquet) else uris.join(source, f"{name}.jsonl")


def benchmark_configs(config: EvaluateConfig) -> list[BenchmarkConfig]:
    """The configured benchmarks (those without a source of their own take the stage's ``source``), with
    ``problems_uri`` as a ``jsonl`` benchmark named 'problems'."""
    found = [
        b.model_copy(update={"source": mirror_source(config.source, b.name)})
        if config.source and "source" not in b.model_fields_set and b.name != "jsonl"
        else b
        for b in config.benchmarks
    ]
    if config.problems_uri:
        found.insert(0, BenchmarkConfig(name="jsonl", source=config.problems_uri, label="problems"))
    return found
