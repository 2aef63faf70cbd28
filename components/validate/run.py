"""The ``validate`` stage: every problem with a pipeline config, found before any work starts."""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import BaseModel, Field

from distilflow import uri as uris
from distilflow.components import load_config_class
from distilflow.components.validate.config import ValidateConfig
from distilflow.config import BaseConfig
from distilflow.errors import ConfigError, DistilflowError
from distilflow.outputs import StageOutput

# Input fields whose content can be checked up front (wired inputs are produced by upstream stages).
DATA_FIELDS = ("problems_uri",)
MODEL_FIELDS = ("model",)


class ValidateResult(BaseModel):
    report_uri: str = Field(description="JSON report of what was checked")
    checked: list[str] = Field(description="What was checked, one line each")
    configs: dict[str, dict[str, Any]] = Field(description="The resolved config of each stage")


def stage_config(stage: str, section: dict[str, Any], run_uri: str) -> BaseConfig:
    """Build a stage's config from its section, filling wired fields as the pipeline would."""
    cls = load_config_class(stage)
    module = __import__(f"distilflow.components.{stage}.config", fromlist=["WIRED"])
    data = dict(section)
    for name in getattr(module, "WIRED", ("output_uri",)):
        if stage == "curate" and name == "data_uri" and section.get("corpus"):
            continue  # a scored corpus replaces distill's output: nothing upstream is wired in
        # Wired inputs are produced upstream; any well-formed URI stands in for them here.
        data[name] = uris.join(run_uri, stage) if name == "output_uri" else uris.join(run_uri, f"<{name}>")
    return cls.from_dict(data, where=f"config section {stage!r}")


def _teachers(config: BaseModel) -> list[tuple[str, Any]]:
    """Every model a stage generates with: teacher configs, and model entries of the same shape
    (``backend``, ``model``, ``base_url``, ...) such as evaluate's ``models``, named by field[index]."""
    from distilflow.teachers.config import TeacherConfig

    def generates(value: Any) -> bool:
        if isinstance(value, TeacherConfig):
            return True
        return isinstance(value, BaseModel) and {"backend", "model", "base_url"} <= set(
            type(value).model_fields
        )

    found = []
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, list):
            found.extend((f"{name}[{i}]", v) for i, v in enumerate(value) if generates(v))
        elif generates(value):
            found.append((name, value))
        elif isinstance(value, BaseConfig):  # a teacher inside a settings block, e.g. sft.gkd.teacher
            found.extend((f"{name}.{inner}", v) for inner, v in _teachers(value))
    return found


def check_model(where: str, model: str, gguf_file: str | None = None) -> None:
    from distilflow.models import resolve_model, smollm2_dir

    if model == "smollm2":
        smollm2_dir()  # installed? (converting it needs torch, which this image lacks)
        return
    path = resolve_model(model, gguf_file)
    if gguf_file or model == "smollm2" or not uris.is_local(model):
        return
    has_template = os.path.exists(os.path.join(path, "chat_template.jinja"))
    tok_cfg = os.path.join(path, "tokenizer_config.json")
    if not has_template and os.path.exists(tok_cfg):
        with open(tok_cfg) as f:
            has_template = bool(json.load(f).get("chat_template"))
    if not has_template:
        raise DistilflowError(
            f"{where}: model {model!r} has no tokenizer chat template; add one (chat_template.jinja, or "
            "chat_template in tokenizer_config.json) or use an instruct/chat model"
        )


def context_length(model: str) -> int | None:
    """The longest sequence a local model folder takes (``max_position_embeddings``), if it says."""
    if model == "smollm2" or not uris.is_local(model):
        return None
    path = os.path.join(uris.local_path(model), "config.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


# (field holding a length in tokens, what it measures): checked against the model's context
LENGTH_FIELDS = (("max_length", "longest example"), ("max_new_tokens", "longest answer"))


def check_lengths(where: str, model: str, cfg: Any) -> list[str]:
    """Lengths in tokens that the config sets for a model beyond the model's context.

    Only values the config sets are checked: a default (``sft.max_length`` 8192) is an upper bound
    for rows, not a statement about the student, while a value written in the config is.
    """
    limit = context_length(model)
    if limit is None:
        return []
    problems = []
    for name, what in LENGTH_FIELDS:
        value = getattr(cfg, name, None)
        if name in cfg.model_fields_set and isinstance(value, int) and value > limit:
            problems.append(
                f"{where}.{name}={value} ({what}, in tokens) exceeds the context of model {model!r} "
                f"(max_position_embeddings={limit}); lower {where}.{name} to at most {limit} or use a larger model"
            )
    return problems


def check_endpoint(where: str, teacher: Any, timeout_s: float) -> None:
    import httpx

    url = teacher.base_url.rstrip("/") + "/models"
    key = os.environ.get(teacher.api_key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        resp = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise DistilflowError(
            f"{where}: endpoint {url} unreachable ({type(exc).__name__}); check base_url"
        ) from None
    if resp.status_code in (401, 403):
        fix = (
            f"the key in ${teacher.api_key_env} was refused: check it"
            if key
            else f"{teacher.api_key_env} is not set: export the key in it"
        )
        raise DistilflowError(f"{where}: endpoint {url} answered HTTP {resp.status_code}; {fix}")
    if resp.status_code != 200:
        raise DistilflowError(f"{where}: endpoint {url} answered HTTP {resp.status_code}")
    served = [m.get("id") for m in resp.json().get("data", [])]
    if served and teacher.model not in served:
        raise DistilflowError(f"{where}: endpoint serves {served}, not model {teacher.model!r}")


def run(config: ValidateConfig) -> ValidateResult:
    """Validate every stage section, input file, model folder and endpoint; raise listing all problems.

    It does not start servers, load weights or claim accelerators.
    """
    checked, configs = check_all(config)
    out = StageOutput(config.output_uri, "validate")
    out.begin(config)
    report_uri = out.path("report.json")
    uris.write_text(report_uri, json.dumps({"checked": checked, "configs": configs}, indent=2))
    result = ValidateResult(report_uri=report_uri, checked=checked, configs=configs)
    out.finish(result, counts={"checks": len(checked)})
    for line in checked:
        print(f"[validate] ok: {line}", flush=True)
    return result


def check_all(config: ValidateConfig) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Every check of ``run``, writing nothing: ``(what was checked, one line each; the resolved config
    of each stage)``, or a ConfigError listing every problem."""
    problems: list[str] = []
    checked: list[str] = []
    configs: dict[str, dict[str, Any]] = {}
    extra = sorted(set(config.pipeline_config) - set(config.stages))
    if extra:
        problems.append(
            f"config sections {extra} name no stage of this pipeline (stages: {', '.join(config.stages)})"
        )
    for stage in config.stages:
        if stage == "validate":
            continue
        try:
            cfg = stage_config(stage, config.pipeline_config.get(stage) or {}, config.run_uri)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        configs[stage] = cfg.to_dict()
        checked.append(f"{stage}: config")
        problems.extend(_check_inputs(stage, cfg, config, checked))
    if problems:
        raise ConfigError(f"validate found {len(problems)} problem(s):\n- " + "\n- ".join(problems))
    return checked, configs


def _check_corpus(where: str, corpus: Any, checked: list[str]) -> list[str]:
    """A scored corpus is listed (its files exist) and its mapping can fill Scored records; its rows
    are read by curate (a released corpus can hold millions)."""
    from distilflow.records import Scored
    from distilflow.sources import as_spec, check_mapping, describe, expand

    spec = as_spec(corpus)
    try:
        files = expand(spec)
        missing = [f for f in files[:1] if not uris.exists(f)]
        if missing:
            return [f"{where}: {missing[0]}: no such file"]
        if spec.mapped():
            check_mapping(spec, Scored)
    except (DistilflowError, OSError) as exc:
        return [f"{where}: {exc}"]
    checked.append(f"{where}: {len(files)} file(s) of scored traces in {describe(spec)}")
    return []


def _check_inputs(stage: str, cfg: BaseConfig, config: ValidateConfig, checked: list[str]) -> list[str]:
    from distilflow.records import Problem
    from distilflow.sources import describe, read_records

    problems = []
    wired = getattr(__import__(f"distilflow.components.{stage}.config", fromlist=["WIRED"]), "WIRED", ())
    for name in DATA_FIELDS:
        value = getattr(cfg, name, None)
        if value is None or name in wired or not config.check_data:
            continue
        try:
            rows = read_records(value, Problem)
            checked.append(f"{stage}.{name}: {len(rows)} problems in {describe(value)}")
        except (DistilflowError, OSError) as exc:
            problems.append(f"{stage}.{name}: {exc}")
    corpus = getattr(cfg, "corpus", None)
    if corpus is not None and config.check_data:
        problems.extend(_check_corpus(f"{stage}.corpus", corpus, checked))
    for name in MODEL_FIELDS:
        value = getattr(cfg, name, None)
        if isinstance(value, str) and name not in wired and config.check_models:
            if value in config.pending_models:
                checked.append(f"{stage}.{name}: {value} (made when the run starts; not checked now)")
                continue
            try:
                check_model(f"{stage}.{name}", value)
                checked.append(f"{stage}.{name}: {value}")
            except (DistilflowError, OSError) as exc:
                problems.append(f"{stage}.{name}: {exc}")
                continue
            problems.extend(check_lengths(stage, value, cfg))
    from distilflow.secrets import unset_keys

    unset = unset_keys(cfg, stage)
    problems.extend(unset)
    for name, teacher in _teachers(cfg):
        where = f"{stage}.{name}"
        if any(line.startswith(f"{teacher.api_key_env} ") for line in unset):
            continue  # its key is missing (reported above): calling the endpoint would only say 401
        if teacher.backend == "transformers" and teacher.model in config.pending_models:
            checked.append(f"{where}: model {teacher.model} (made when the run starts; not checked now)")
            continue
        try:
            if teacher.backend == "transformers" and config.check_models:
                check_model(where, teacher.model, teacher.gguf_file)
                checked.append(f"{where}: model {teacher.model}")
                problems.extend(check_lengths(where, teacher.model, teacher))
            elif teacher.backend == "openai" and config.check_endpoints:
                check_endpoint(where, teacher, config.endpoint_timeout_s)
                checked.append(f"{where}: endpoint {teacher.base_url}")
        except (DistilflowError, OSError) as exc:
            problems.append(str(exc) if str(exc).startswith(where) else f"{where}: {exc}")
    if config.check_models:
        problems.extend(_check_logits_tokenizers(stage, cfg, checked))
    if config.check_endpoints and config.probe_judges and not problems:
        problems.extend(_probe_judge(stage, cfg, checked))
    return problems


def _check_logits_tokenizers(stage: str, cfg: BaseConfig, checked: list[str]) -> list[str]:
    """A stage storing teacher logits from an endpoint needs the served model's tokenizer here (to read
    and check the token ids it returns): a folder or URI with tokenizer files."""
    if getattr(cfg, "logits", None) is None:
        return []
    problems = []
    for name, teacher in _teachers(cfg):
        if teacher.backend != "openai":
            continue
        source = teacher.tokenizer or teacher.model
        where = f"{stage}.{name}.tokenizer"
        try:
            found = uris.exists(uris.join(source, "tokenizer_config.json"))
        except (OSError, ValueError):
            found = False
        if found:
            checked.append(f"{where}: {source}")
        else:
            problems.append(
                f"{where}: no tokenizer at {source!r} (no tokenizer_config.json); logits from an endpoint need "
                "the served model's tokenizer: set it to a folder or URI holding its tokenizer files"
            )
    return problems


def _probe_judge(stage: str, cfg: BaseConfig, checked: list[str]) -> list[str]:
    """The calibration probe of the stage's logprobs judge on an endpoint (``judge_probe``), if any."""
    from distilflow.components.validate import judge_probe

    found = judge_probe.probed_judge(stage, cfg)
    if found is None:
        return []
    problem = judge_probe.probe(stage, found[1])
    if problem is None:
        checked.append(f"{stage}.{found[0]}: calibration probe (an obviously low and an obviously high case)")
        return []
    return [problem]
