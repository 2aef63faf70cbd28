"""The recipes' config resolution (recipe defaults < preset < parameters < config < overrides), the
placement helper, and a scaled-down ``thoughtx`` end to end under kfp.local on tiny models."""

# No `from __future__ import annotations`: KFP reads the component signature in a test below.

import json
import os

import pytest

from distilflow.errors import ConfigError
from distilflow.pipelines.params import parse_overrides_json, resolve_config

THOUGHTX = ["validate", "distill", "curate", "sft", "evaluate"]


@pytest.mark.unit
def test_precedence_defaults_preset_parameters_config_overrides():
    config = resolve_config(
        "thoughtx",
        THOUGHTX,
        preset="1.5b-1node",
        config={"sft": {"learning_rate": 2e-5, "model": "s3://b/from-config"}},
        overrides='{"sft": {"max_length": 4096}}',
        teacher_base_url="http://vllm:8000/v1",
        teacher_model="r1",
        student_model="Qwen/Qwen2.5-1.5B-Instruct",
        problems_uri="s3://b/p.jsonl",
    )
    sft = config["sft"]
    assert sft["curriculum"] is True  # recipe default
    assert sft["deepspeed"] == "zero2" and sft["num_train_epochs"] == 3  # preset
    assert sft["learning_rate"] == 2e-5 and sft["model"] == "s3://b/from-config"  # config beats parameters
    assert sft["max_length"] == 4096  # overrides beat everything
    teacher = config["distill"]["teacher"]
    assert teacher["base_url"] == "http://vllm:8000/v1" and teacher["model"] == "r1"
    assert teacher["api_key_env"] == "TEACHER_API_KEY" and "api_key" not in teacher
    assert config["distill"]["problems_uri"] == "s3://b/p.jsonl"
    assert config["curate"]["judge"]["model"] == "r1" and config["curate"]["preset"] == "1.5b"
    # Sections of stages thoughtx does not run (the preset's dpo, reward, rl, deploy) are dropped.
    assert set(config) == {"distill", "curate", "sft", "evaluate"}


@pytest.mark.unit
def test_several_teacher_models_make_several_teachers_and_a_named_teacher_replaces_them():
    two = resolve_config("thoughtx", THOUGHTX, teacher_model="r1, qwq", teacher_base_url="http://t/v1")
    assert [t["model"] for t in two["distill"]["teachers"]] == ["r1", "qwq"]
    assert "teacher" not in two["distill"]
    local = {"backend": "transformers", "model": "/models/tiny", "max_new_tokens": 8}
    one = resolve_config(
        "thoughtx",
        THOUGHTX,
        teacher_model="r1,qwq",
        teacher_base_url="http://t/v1",
        config={"distill": {"teacher": local}},
    )
    # A teacher named with its model replaces the parameters' teachers, without inheriting their endpoint.
    assert one["distill"]["teacher"] == local and "teachers" not in one["distill"]
    tweak = resolve_config(
        "thoughtx", THOUGHTX, teacher_model="r1", overrides='{"distill": {"teacher": {"max_new_tokens": 99}}}'
    )
    assert (
        tweak["distill"]["teacher"]["model"] == "r1" and tweak["distill"]["teacher"]["max_new_tokens"] == 99
    )


@pytest.mark.unit
def test_a_corpus_uri_replaces_distill_and_the_judge():
    from distilflow.pipelines.params import running_stages

    uri = "hf://datasets/alibaba-pai/OmniThought/data/*.parquet"
    stages = running_stages(THOUGHTX, corpus_uri=uri)
    assert stages == [s for s in THOUGHTX if s != "distill"] and running_stages(THOUGHTX) == THOUGHTX
    cfg = resolve_config(
        "thoughtx", stages, teacher_model="r1", teacher_base_url="http://t/v1", corpus_uri=uri
    )
    assert cfg["curate"]["corpus"] == {"uri": uri, "preset": "omnithought"}
    assert "judge" not in cfg["curate"] and "distill" not in cfg
    judged = resolve_config("thoughtx", THOUGHTX, teacher_model="r1", teacher_base_url="http://t/v1")
    assert "corpus" not in judged["curate"] and judged["curate"]["judge"]["model"] == "r1"


@pytest.mark.unit
def test_the_pipeline_run_names_every_tracked_stage():
    from distilflow.pipelines.params import with_pipeline_run

    resolved = {
        "curate": {"preset": "7b"},
        "sft": {"tracking": {"backend": "mlflow"}},
        "dpo": {"tracking": {"backend": "none"}},
        "evaluate": {"tracking": {"backend": "mlflow", "pipeline_run": "mine"}},
    }
    named = with_pipeline_run(resolved, "thoughtx-abc")
    assert named["sft"]["tracking"] == {"backend": "mlflow", "pipeline_run": "thoughtx-abc"}
    assert named["evaluate"]["tracking"]["pipeline_run"] == "mine"  # given: kept
    assert named["dpo"] == resolved["dpo"] and named["curate"] == resolved["curate"]
    assert with_pipeline_run(resolved, "") == resolved


def test_bad_overrides_and_presets_are_named():
    with pytest.raises(ConfigError, match="overrides: not valid JSON at line 1"):
        parse_overrides_json('{"sft": ')
    with pytest.raises(ConfigError, match="expected a JSON object"):
        parse_overrides_json("[1]")
    with pytest.raises(ConfigError, match="preset '3b' is not one of 1.5b-1node, 7b-1node, 32b-4nodes"):
        resolve_config("thoughtx", THOUGHTX, preset="3b")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['sfft'\]"):
        resolve_config("thoughtx", THOUGHTX, overrides='{"sfft": {}}')
    with pytest.raises(ConfigError, match="teacher_model is empty"):
        resolve_config("thoughtx", THOUGHTX, teacher_base_url="http://t/v1")


def _stage(root, name: str, result: dict) -> str:
    from distilflow.outputs import StageOutput

    out = StageOutput(os.path.join(root, name), name)
    out.finish(result=result)
    return out.uri


@pytest.mark.unit
@pytest.mark.parametrize("layout", ["shards", "single_file"])
def test_both_modes_writes_every_example_with_thinking_on_and_off(tmp_path, layout):
    """curate's SFT shards (listed in its manifest) are read in order; an older or hand-made curate
    output holding one sft.jsonl is read too."""
    from kfp import dsl

    from distilflow.outputs import MARKER
    from distilflow.pipelines.steps import both_modes
    from distilflow.records import SftExample, read_jsonl, write_jsonl

    chat = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2", "reasoning_content": "one and one"},
    ]
    rows = [SftExample(id=f"t{i}", messages=chat, curriculum_stage=i) for i in range(3)]
    folder = os.path.join(str(tmp_path), "curate")
    if layout == "shards":
        names = ["sft-00000-of-00002.jsonl", "sft-00001-of-00002.jsonl"]
        write_jsonl(os.path.join(folder, names[0]), rows[:2])
        write_jsonl(os.path.join(folder, names[1]), rows[2:])
        curate = _stage(str(tmp_path), "curate", {"shards": {"sft": names}})
    else:
        curate = _stage(str(tmp_path), "curate", {})
        write_jsonl(os.path.join(curate, "sft.jsonl"), rows)
    curated = dsl.Dataset(name="curated", uri=curate, metadata={"uri": curate, "stage_uri": curate})
    out = dsl.Dataset(name="examples", uri=str(tmp_path / "a"), metadata={})
    both_modes.python_func(output_uri=str(tmp_path), curated=curated, examples=out)
    assert out.metadata["uri"] == str(tmp_path / "modes") and os.path.exists(tmp_path / "modes" / MARKER)
    written = read_jsonl(str(tmp_path / "modes" / "sft.jsonl"), SftExample)
    assert [(r.id, r.enable_thinking, r.curriculum_stage) for r in written] == [
        (f"t{i}{suffix}", thinking, i)
        for i in range(3)
        for suffix, thinking in (("", True), ("#no_think", False))
    ]


@pytest.mark.unit
def test_placement_literal_values(tmp_path):
    """Fixed values (not pipeline parameters) compile too: GPU count, node selector, tolerations."""
    import yaml
    from kfp import compiler, dsl

    from distilflow.placement import Placement, SecretEnv, apply

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def step() -> str:
        return "ok"

    @dsl.pipeline(name="placed")
    def placed():
        task = step()
        apply(
            task,
            Placement(
                gpus=4,
                node_selector={"nvidia.com/gpu.product": "H100"},
                shm_size="8Gi",
                image_pull_secrets=["regcred"],
                secret_env=[SecretEnv("s3-creds", "access-key", "AWS_ACCESS_KEY_ID")],
            ),
        )
        apply(step(), Placement())  # no GPUs: nothing set

    path = str(tmp_path / "p.yaml")
    compiler.Compiler().compile(placed, path)
    with open(path) as f:
        spec, platform = yaml.safe_load_all(f)
    accel = spec["deploymentSpec"]["executors"]["exec-step"]["container"]["resources"]["accelerator"]
    assert accel["resourceCount"] == "4" and accel["resourceType"] == "nvidia.com/gpu"
    ex = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-step"]
    assert ex["nodeSelector"]["nodeSelectorJson"]["runtimeValue"]["constant"] == {
        "nvidia.com/gpu.product": "H100"
    }
    assert ex["emptyDirMounts"][0]["medium"] == "Memory"
    assert [s["secretName"] for s in ex["imagePullSecret"]] == ["regcred"]
    assert ex["secretAsEnv"][0]["keyToEnv"] == [{"envVar": "AWS_ACCESS_KEY_ID", "secretKey": "access-key"}]
    assert "exec-step-2" not in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize(
    "recipe", ["slow_thinking", "thoughtx", "thoughty", "reward_rl", "lifecycle", "whitebox"]
)
def test_recipe_uploads_and_submits_with_console_parameters(recipe):
    """Against the loopback KFP API: the recipe uploads (its spec parses as a PipelineSpec with
    described parameters) and a run gets parameters by name, the rest in ``config``."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    from distilflow.client.remote import Client
    from tests.fakes.kfp_api_server import KfpApiServer

    with KfpApiServer() as server:
        client = Client(server.url)
        client.upload(recipe)
        client.submit(
            recipe,
            overrides=["preset=1.5b-1node", "gpu_count=4", "teacher_model=qwq-32b", "sft.max_steps=200"],
            output_uri="s3://bucket/runs/r1",
        )
    import yaml

    (uploaded,) = server.uploads
    spec, platform = yaml.safe_load_all(uploaded["content"])
    parsed = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    assert "kubernetes" in platform["platforms"]
    assert parsed.root.input_definitions.parameters["teacher_key_secret"].description
    (run,) = server.runs.values()
    params = run["runtime_config"]["parameters"]
    assert (
        params["preset"] == "1.5b-1node" and params["gpu_count"] == 4 and params["teacher_model"] == "qwq-32b"
    )
    assert params["output_uri"] == "s3://bucket/runs/r1"
    assert params["config"]["sft"]["max_steps"] == 200


def tiny_thoughtx_overrides(model: str) -> list[str]:
    """A CPU-sized thoughtx: two tiny teachers, a tiny judge and student, the quickstart problems. The
    recipe's default preset (7b-1node) applies; these settings, as config, win over it."""
    from distilflow.pipelines.common import data_file

    def teacher(name: str, seed: int) -> str:
        return f"{{backend: transformers, model: {model}, name: {name}, max_new_tokens: 24, batch_size: 8, seed: {seed}}}"

    return [
        f"distill.teachers=[{teacher('teacher-a', 0)}, {teacher('teacher-b', 1)}]",
        f"distill.problems_uri={data_file('quickstart_problems.jsonl')}",
        "distill.limit=4",
        f"curate.judge={{backend: transformers, model: {model}, batch_size: 8, min_digit_mass: 0}}",
        # A random tiny judge (its digits carry scraps, read anyway): keep the selection wide so there are
        # rows to train on.
        "curate.require_correct=false",
        "curate.min_logic=0",
        f"sft.model={model}",
        "sft.max_steps=8",
        "sft.learning_rate=0.005",
        "sft.logging_steps=1",
        "sft.max_length=1024",
        "sft.deepspeed=none",
        "sft.gradient_checkpointing=false",
        "sft.gradient_accumulation_steps=1",
        "evaluate.source=sample",  # the recipe's four benchmarks, on the rows shipped with distilflow
        "evaluate.samples=1",
        "evaluate.max_problems=2",
        "evaluate.max_new_tokens=16",
        "evaluate.temperature=0.0",
    ]


def test_thoughtx_end_to_end_on_tiny_models(tmp_path, tiny_qwen2):
    """Two teachers, RV/CD judging, a curriculum mix, curriculum SFT and evaluation under kfp.local
    (about 45 s on two idle cores)."""
    from distilflow.client.local import run_local
    from distilflow.records import Scored, SftExample, Trace, iter_output_rows, read_jsonl

    # "python3" in the path: kfp.local would corrupt it without distilflow's workaround (client.py).
    root = str(tmp_path / "python3-thoughtx")
    summary = run_local("thoughtx", overrides=tiny_thoughtx_overrides(tiny_qwen2), output_uri=root)
    assert list(summary.stages) == THOUGHTX
    traces = read_jsonl(os.path.join(root, "distill", "traces.jsonl"), Trace)
    assert {t.teacher for t in traces} == {"teacher-a", "teacher-b"}  # both teachers answered
    curate = os.path.join(root, "curate")
    scored = list(iter_output_rows(curate, "scored", Scored))
    assert len(scored) == len(traces) == 4 * 2  # 4 problems, 2 samples each, shared by the teachers
    assert all(0 <= r.rv <= 9 and 0 <= r.cd <= 9 for r in scored)
    rows = list(iter_output_rows(curate, "sft", SftExample))
    stages = [r.curriculum_stage for r in rows]
    assert rows and stages == sorted(stages), "curate's sft rows are not in curriculum order"
    with open(os.path.join(root, "sft", "manifest.json")) as f:
        sft = json.load(f)["result"]
    assert sft["steps"] == 8 and sft["final_loss"] < sft["first_loss"]
    with open(os.path.join(root, "sft", "config.resolved.yaml")) as f:
        resolved = f.read()
    assert "curriculum: true" in resolved and "deepspeed: none" in resolved
    with open(os.path.join(root, "evaluate", "metrics.json")) as f:
        metrics = json.load(f)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["mean_tokens"] > 0
    runs = {r["benchmark"]: r["protocol"] for r in metrics["runs"]}
    assert set(runs) == set(PAPER_BENCHMARKS)
    assert all(p["data_source"] == "sample" and p["n_problems"] == 2 for p in runs.values())


PAPER_BENCHMARKS = ("aime2024", "math500", "gpqa_diamond", "livecodebench")


@pytest.mark.unit
@pytest.mark.parametrize("recipe", ["slow_thinking", "thoughtx", "thoughty", "reward_rl", "lifecycle"])
def test_recipes_evaluate_what_the_paper_reports(recipe):
    """Every recipe evaluates AIME24, MATH500, GPQA-Diamond and LiveCodeBench by default with the pinned
    protocol (from the hub; evaluate.source picks sample rows or a folder of mirrors)."""
    from distilflow.components.evaluate.benchmarks import benchmark_configs, effective_samples
    from distilflow.components.evaluate.config import EvaluateConfig
    from distilflow.pipelines import load_pipeline

    stages = load_pipeline(recipe).STAGES
    section = resolve_config(recipe, stages)["evaluate"]
    cfg = EvaluateConfig.from_dict({**section, "output_uri": "/o", "model": "/m"})
    assert [b.name for b in cfg.benchmarks] == list(PAPER_BENCHMARKS) and cfg.problems_uri is None
    assert (cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed) == (0.6, 0.95, 32768, 0)
    samples = {b.name: effective_samples(b, cfg) for b in benchmark_configs(cfg)}
    assert samples == {"aime2024": 8, "math500": 1, "gpqa_diamond": 1, "livecodebench": 1}
    assert {b.source for b in benchmark_configs(cfg)} == {"hub"}
    local = cfg.model_copy(update={"source": "sample"})
    assert {b.source for b in benchmark_configs(local)} == {"sample"}


def test_lifecycle_runs_locally_and_its_switches_pick_the_newest_model(tmp_path, tiny_qwen3):
    """lifecycle under kfp.local with dpo on and rl off: evaluate gets the dpo model through one
    dsl.OneOf (the branch that ran) and the sft model handed on through the other (the skip branch);
    kfp 2.17's local runner needs distilflow's OneOf-over-artifacts fix (client.py)."""
    from distilflow.client.local import run_local

    root = str(tmp_path / "lifecycle")
    overrides = tiny_thoughtx_overrides(tiny_qwen3) + [
        "with_rl=false",
        "with_deploy=false",
        "curate.crv=false",  # CRV rewrites need a teacher that can write; the tiny judge cannot
        "dpo.max_steps=2",
        "dpo.max_length=1024",
        "dpo.deepspeed=none",
        "dpo.gradient_checkpointing=false",
        "dpo.gradient_accumulation_steps=1",
        "dpo.per_device_train_batch_size=2",
    ]
    summary = run_local("lifecycle", overrides=overrides, output_uri=root)
    assert list(summary.stages) == ["validate", "distill", "curate", "sft", "dpo", "evaluate"]
    for skipped in ("reward", "rl", "deploy"):
        assert not os.path.exists(os.path.join(root, skipped))
    with open(os.path.join(root, "dpo", "manifest.json")) as f:
        assert json.load(f)["result"]["steps"] == 2
    with open(os.path.join(root, "evaluate", "manifest.json")) as f:
        evaluated = json.dumps(json.load(f)["inputs"])
    assert os.path.join(root, "dpo") in evaluated and os.path.join(root, "sft") not in evaluated


def test_example_notebook_runs(tmp_path, monkeypatch):
    """examples/recipes.ipynb executes top to bottom with nbclient: it builds tiny models, runs thoughtx
    locally, shows every stage's report, compiles, and skips submission without KF_PIPELINES_ENDPOINT
    (a second local thoughtx run: about a minute on two idle cores)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    monkeypatch.setenv("DISTILFLOW_NOTEBOOK_DIR", str(tmp_path))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    notebook = nbformat.read(os.path.join(root, "examples", "recipes.ipynb"), as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit the notebook without outputs"
    )
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "\n".join(
        out.get("text", "") + json.dumps(out.get("data", {}))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )
    assert "pipeline thoughtx finished" in text
    assert "reports shown: distill, curate, sft, evaluate" in text
    assert "<iframe srcdoc=" in text  # reports rendered inline as HTML
    assert "submission skipped" in text
    assert os.path.exists(tmp_path / "thoughtx.yaml") and os.path.exists(
        tmp_path / "run" / "sft" / "_COMPLETE"
    )


@pytest.mark.slow
def test_thoughty_end_to_end_in_both_modes(tmp_path, tiny_qwen3):
    """thoughty on tiny models: every curated example in both modes, evaluation with thinking on and off
    in separate folders (about 70 s on two idle cores)."""
    from distilflow.client.local import run_local
    from distilflow.records import SftExample, iter_output_rows, read_jsonl

    root = str(tmp_path / "thoughty")
    run_local("thoughty", overrides=tiny_thoughtx_overrides(tiny_qwen3), output_uri=root)
    curated = list(iter_output_rows(os.path.join(root, "curate"), "sft", SftExample))
    both = read_jsonl(os.path.join(root, "modes", "sft.jsonl"), SftExample)
    assert len(both) == 2 * len(curated) and {r.enable_thinking for r in both} == {True, False}
    with open(os.path.join(root, "sft", "manifest.json")) as f:
        assert json.load(f)["result"]["rows_used"] == len(both)
    for folder, thinking in (("evaluate", True), ("no-thinking/evaluate", False)):
        with open(os.path.join(root, folder, "metrics.json")) as f:
            assert json.load(f)["protocol"]["enable_thinking"] is thinking


def test_reward_rl_end_to_end(tmp_path, tiny_qwen3, tiny_reward):
    """reward_rl on tiny models: the reward model (gate opened for a random tiny judge) feeds GRPO's
    reward_model term, with curate's CD for the length term (about 75 s on two cores)."""
    from distilflow.client.local import run_local
    from distilflow.pipelines.common import data_file

    root = str(tmp_path / "reward_rl")
    overrides = tiny_thoughtx_overrides(tiny_qwen3) + [
        f"reward.model={tiny_reward}",
        "reward.max_steps=4",
        "reward.max_length=1024",
        "reward.min_heldout_accuracy=0",  # a random tiny judge: open the calibration gate
        f"rl.problems_uri={data_file('quickstart_problems.jsonl')}",
        "rl.max_steps=2",
        "rl.num_generations=2",
        "rl.per_device_train_batch_size=2",
        "rl.max_completion_length=16",
        "rl.length_budget_min=4",
    ]
    run_local("reward_rl", overrides=overrides, output_uri=root)
    with open(os.path.join(root, "rl", "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["result"]["steps"] == 2
    with open(os.path.join(root, "rl", "config.resolved.yaml")) as f:
        resolved = f.read()
    assert "reward_model: 0.5" in resolved and os.path.join(root, "reward") in resolved


def corpus_overrides(model: str, corpus_uri: str) -> list[str]:
    """thoughtx from a scored corpus: no teacher, no judge; the tiny student trains on the selected mix."""
    keep = ("sft.", "evaluate.")
    return [f"corpus_uri={corpus_uri}"] + [o for o in tiny_thoughtx_overrides(model) if o.startswith(keep)]


def test_thoughtx_starts_from_a_scored_corpus_and_tracks_it_in_mlflow(
    tmp_path, tiny_qwen2, hf_hub, mlflow_server
):
    """corpus_uri: curate selects from OmniThought-layout Parquet on a (loopback) hub; distill and the judge
    never run; sft trains on the released annotations' mix in curriculum order and logs to a real MLflow
    server; evaluate logs its scores to the same experiment and registers the student, whose KFP Model
    artifact carries the same metadata."""
    import glob

    from mlflow import MlflowClient

    from distilflow.client.local import run_local
    from distilflow.records import SftExample, iter_output_rows
    from tests.corpora import omnithought_rows, parquet_bytes

    rows = omnithought_rows(problems=6)
    hf_hub.add("alibaba-pai/OmniThought", {"data/train-00000-of-00001.parquet": parquet_bytes(rows)})
    root = str(tmp_path / "thoughtx-corpus")
    corpus = "hf://datasets/alibaba-pai/OmniThought@main/data/train-00000-of-00001.parquet"
    tracking = f"{{backend: mlflow, uri: '{mlflow_server}', experiment: thoughtx-corpus}}"
    overrides = corpus_overrides(tiny_qwen2, corpus) + [
        f"sft.tracking={tracking}",
        f"evaluate.tracking={tracking}",
        "evaluate.registry={model_name: thoughtx-student}",
    ]
    summary = run_local("thoughtx", overrides=overrides, output_uri=root)
    assert list(summary.stages) == ["validate", "curate", "sft", "evaluate"]
    assert not os.path.exists(os.path.join(root, "distill"))
    with open(os.path.join(root, "curate", "manifest.json")) as f:
        curate = json.load(f)
    assert curate["counts"]["judge_requests"] == 0 and curate["counts"]["traces"] == 18
    examples = list(iter_output_rows(os.path.join(root, "curate"), "sft", SftExample))
    # the 7b-1node preset keeps two chains per question, closest to the bin's RV target, easiest bin first
    stages = [e.curriculum_stage for e in examples]
    assert len(examples) == 12 and stages == sorted(stages)
    with open(os.path.join(root, "sft", "manifest.json")) as f:
        sft = json.load(f)["result"]
    assert sft["rows_used"] == 12
    with open(os.path.join(root, "evaluate", "manifest.json")) as f:
        evaluate = json.load(f)["result"]

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("thoughtx-corpus").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment])}
    (job,) = os.listdir(os.path.join(root, "kfp"))  # kfp.local's folder is named after the pipeline run
    assert set(runs) == {f"{job}/sft", f"{job}/evaluate"}  # <pipeline run>/<stage>, not the run folder's
    pipeline_run = job
    assert runs[f"{pipeline_run}/sft"].info.run_id == sft["tracking_run"]
    assert runs[f"{pipeline_run}/sft"].data.params["config.curriculum"] == "true"
    assert runs[f"{pipeline_run}/evaluate"].data.metrics["accuracy"] == pytest.approx(evaluate["accuracy"])
    version = client.get_model_version("thoughtx-student", evaluate["registered_version"])
    assert version.tags["distilflow.accuracy"] == str(evaluate["accuracy"])
    assert version.tags["distilflow.protocol_sha256"] == evaluate["protocol_sha256"]
    assert version.tags["distilflow.training_run"] == sft["tracking_run"]
    (executed,) = glob.glob(os.path.join(root, "kfp", "*", "evaluate", "executor_output.json"))
    with open(executed) as f:
        (student,) = json.load(f)["artifacts"]["student"]["artifacts"]
    meta = student["metadata"]
    assert (meta["registered_version"], meta["protocol_sha256"]) == (
        version.version,
        evaluate["protocol_sha256"],
    )
    assert meta["accuracy"] == evaluate["accuracy"] and meta["uri"] == sft["model_uri"]
