"""Every pipeline compiles; the spec parses with KFP's own PipelineSpec, documents its parameters, names
only images that have a Dockerfile, sets caching per task, places GPU steps, carries no secret values,
and matches its golden spec (pipelines/golden/)."""

from __future__ import annotations

import glob
import os

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from distilflow import __version__
from distilflow.client.pipelines import compile_pipeline, pipeline_config
from distilflow.components import STAGES as ALL_STAGES
from distilflow.images import FAMILIES, image, stage_image
from distilflow.pipelines import PIPELINES, load_pipeline

SECRET = "sk-distilflow-test-secret-0123456789"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = sorted(set(PIPELINES) - {"quickstart"})
HELPERS = {"configure", "variant", "both-modes", "same-model"}
SUB_PIPELINES = {"dpo-on-gpus", "reward-rl-on-gpus", "deploy-on-gpu", "distill-and-judge"}
TRAINING = {"sft", "dpo", "reward", "rl"}
CONSOLE_PARAMETERS = [
    "output_uri",
    "teacher_base_url",
    "teacher_model",
    "teacher_key_secret",
    "student_model",
    "problems_uri",
    "gpu_type",
    "gpu_count",
    "gpu_node_selector",
    "preset",
    "overrides",
    "config",
]


@pytest.fixture(scope="module", params=sorted(PIPELINES))
def compiled(request, tmp_path_factory):
    """(name, text, spec, platform spec) of a pipeline compiled with secrets in the environment."""
    saved = {k: os.environ.get(k) for k in ("OPENAI_API_KEY", "TEACHER_API_KEY")}
    os.environ["OPENAI_API_KEY"] = os.environ["TEACHER_API_KEY"] = SECRET
    try:
        path = compile_pipeline(request.param, str(tmp_path_factory.mktemp("c") / f"{request.param}.yaml"))
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    with open(path) as f:
        text = f.read()
    docs = list(yaml.safe_load_all(text))
    platform = docs[1]["platforms"]["kubernetes"] if len(docs) > 1 else {}
    return request.param, text, docs[0], platform


def all_tasks(spec: dict) -> list[tuple[str, dict]]:
    """Every task of the root DAG and of every sub-DAG (conditions, for-loops): (name, task)."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return [item for dag in dags for item in dag["tasks"].items()]


def component_name(task: dict) -> str:
    return task["componentRef"]["name"].removeprefix("comp-")


def base_name(component: str) -> str:
    """``evaluate-2`` -> ``evaluate``: KFP numbers a component used twice."""
    head, _, tail = component.rpartition("-")
    return head if tail.isdigit() and head else component


def test_spec_parses_with_kfp_pipeline_spec(compiled):
    name, _, spec, _ = compiled
    parsed = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    assert parsed.pipeline_info.name == name.replace("_", "-")
    assert {"output_uri", "config"} <= set(parsed.root.input_definitions.parameters)


def test_parameters_have_descriptions_and_defaults(compiled):
    name, _, spec, _ = compiled
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    for key, value in parameters.items():
        assert len(value.get("description", "")) > 20, f"{name}: parameter {key!r} has no description"
    if name == "quickstart":
        return
    assert set(CONSOLE_PARAMETERS) <= set(parameters)
    for key, value in parameters.items():
        assert "defaultValue" in value, f"{name}: parameter {key!r} has no default"
    assert len(parameters) <= len(CONSOLE_PARAMETERS) + 4, f"{name}: too many top-level parameters"
    # The pipeline function's signature keeps the meaningful order (the compiled spec sorts by name).
    import inspect

    order = list(inspect.signature(load_pipeline(name).pipeline.pipeline_func).parameters)
    assert order[: len(CONSOLE_PARAMETERS)] == CONSOLE_PARAMETERS


def test_spec_uses_stage_images_with_dockerfiles(compiled):
    name, _, spec, _ = compiled
    module = load_pipeline(name)
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert {stage_image(stage) for stage in module.STAGES} <= images
    assert images <= {image(family) for family in FAMILIES}
    assert all(img.endswith(":" + __version__) for img in images)
    for family in FAMILIES:
        if image(family) in images:
            assert os.path.exists(os.path.join(ROOT, "containers", family, "Dockerfile")), family
    # Thin components: no pip install at run time, the code comes from the image.
    for ex in spec["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(ex["container"].get("command", []))


def test_tasks_are_stages_helpers_or_control_flow(compiled):
    """Every task runs a stage or a pipeline helper, or groups tasks (a condition or a for-loop);
    every stage of STAGES runs; stages never use KFP's cache (they resume from their own outputs)."""
    name, _, spec, _ = compiled
    module = load_pipeline(name)
    used = set()
    for task_name, task in all_tasks(spec):
        if (
            component_name(task).startswith(("condition-", "for-loop-"))
            or component_name(task) in SUB_PIPELINES
        ):
            continue
        component = base_name(component_name(task))
        caching = task.get("cachingOptions", {}).get("enableCache", False)
        if component in HELPERS:
            assert caching is (component in ("configure", "variant")), f"{name}: {task_name} caching"
            continue
        assert component in ALL_STAGES, f"{name}: task {task_name} runs {component}, neither stage nor helper"
        assert caching is False, f"{name}: stage task {task_name} has KFP caching on"
        used.add(component)
    assert used == set(module.STAGES)


def test_every_dag_defines_the_parameters_its_tasks_read(compiled):
    """Each task input read from the enclosing DAG names a parameter that DAG defines (kfp 2.17 drops
    accelerator parameters from dsl.If branches; the recipes route them through sub-pipelines)."""
    name, _, spec, _ = compiled
    dags = {"root": spec["root"]} | {k: c for k, c in spec["components"].items() if "dag" in c}
    for dag_name, component in dags.items():
        defined = set(component.get("inputDefinitions", {}).get("parameters", {}))
        for task_name, task in component["dag"]["tasks"].items():
            for key, value in task.get("inputs", {}).get("parameters", {}).items():
                source = value.get("componentInputParameter")
                assert source is None or source in defined, (
                    f"{name}: {dag_name}/{task_name} reads {source!r} ({key}), which {dag_name} does not define"
                )


def test_gpu_placement_in_platform_spec(compiled):
    name, _, spec, platform = compiled
    if name == "quickstart":
        pytest.skip("quickstart is the laptop pipeline: no placement")
    executors = platform["deploymentSpec"]["executors"]
    resources = {
        label: ex["container"].get("resources", {})
        for label, ex in spec["deploymentSpec"]["executors"].items()
    }
    placed = 0
    for label, ex in executors.items():
        stage = base_name(label.removeprefix("exec-"))
        if stage not in TRAINING | {"evaluate", "deploy"}:
            assert "nodeSelector" not in ex and "emptyDirMounts" not in ex, f"{name}: {label} placed on GPUs"
            continue
        placed += 1
        accel = resources[label]["accelerator"]
        assert "gpu_type" in accel["resourceType"]
        # A training stage's pod takes configure's <stage>_gpus: gpu_count, or 0 with launcher trainjob/dlc.
        expected = f"{stage}_gpus" if stage in TRAINING else "1"
        assert expected in accel["resourceCount"], f"{name}: {label} GPUs {accel}"
        # Inside a condition the parameter reaches the task as "pipelinechannel--gpu_node_selector".
        selector = ex["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
        assert selector.removeprefix("pipelinechannel--") == "gpu_node_selector"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in ex["tolerations"]
        assert ex["emptyDirMounts"] == [
            {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "32Gi", "volumeName": "dshm"}
        ]
    assert placed >= 2
    # The teacher's key reaches the steps that call the teacher, by Secret name only.
    for stage in ("validate", "distill", "curate"):
        if stage not in load_pipeline(name).STAGES:  # whitebox has no judge
            continue
        secret = executors[f"exec-{stage}"]["secretAsEnv"][0]
        assert secret["secretNameParameter"] == {"componentInputParameter": "teacher_key_secret"}
        assert secret["keyToEnv"] == [{"envVar": "TEACHER_API_KEY", "secretKey": "api-key"}]


def test_spec_has_no_secret_values(compiled):
    _, text, _, _ = compiled
    assert SECRET not in text
    assert "api_key:" not in text.replace("api_key_env", "")


def test_golden_spec_is_current(compiled):
    from distilflow.pipelines.compile_all import REGENERATE, compile_text, golden_path

    name = compiled[0]
    path = golden_path(name)
    assert os.path.exists(path), f"no golden spec {path}; write it with: {REGENERATE}"
    with open(path, encoding="utf-8") as f:
        golden = f.read()
    fresh = compile_text(name)
    assert fresh == compile_text(name), f"{name}: compiling twice gave different specs"
    if fresh != golden:
        import difflib

        diff = list(
            difflib.unified_diff(golden.splitlines(), fresh.splitlines(), "golden", "compiled", lineterm="")
        )
        shown = "\n".join(diff[:40]) + (f"\n... ({len(diff) - 40} more diff lines)" if len(diff) > 40 else "")
        pytest.fail(
            f"pipelines/golden/{name}.yaml is stale: the compiled {name} pipeline changed. Review the change "
            f"and regenerate with: {REGENERATE}\n{shown}",
            pytrace=False,
        )


def test_pull_secrets_from_the_environment_reach_every_task(tmp_path):
    """DISTILFLOW_IMAGE_PULL_SECRETS is read when the recipes are built (imported), like the image
    registry: compile in a fresh interpreter."""
    import subprocess
    import sys

    path = str(tmp_path / "t.yaml")
    code = f"from distilflow.client.pipelines import compile_pipeline; compile_pipeline('thoughtx', {path!r})"
    env = {**os.environ, "DISTILFLOW_IMAGE_PULL_SECRETS": "regcred, other"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    with open(path) as f:
        platform = list(yaml.safe_load_all(f))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(platform) == 7  # configure, the five stages and curate on a scored corpus (corpus_uri)
    for ex in platform.values():
        assert [s["secretName"] for s in ex["imagePullSecret"]] == ["regcred", "other"]


def test_default_config_sections_match_stages():
    for name in PIPELINES:
        module = load_pipeline(name)
        config = pipeline_config(name)
        assert set(config) <= set(module.STAGES)


def test_shipped_example_configs_load(tmp_path):
    """Every shipped config file validates: a stage config (stage-*.yaml) whole; a recipe's defaults
    resolved with every preset; any other pipeline config as the CLI uses it, merged over the quickstart
    defaults and completed by prepare()."""
    from distilflow.components import load_config_class
    from distilflow.components.validate.run import stage_config

    files = glob.glob(os.path.join(ROOT, "examples", "*.yaml")) + glob.glob(
        os.path.join(ROOT, "pipelines", "*.yaml")
    )
    assert len(files) >= 4
    module = load_pipeline("quickstart")
    for path in files:
        name = os.path.basename(path)
        if name.startswith("stage-"):
            stage = name.removeprefix("stage-").removesuffix(".yaml").split("-")[0]  # stage-sft-s3 -> sft
            assert stage in ALL_STAGES
            load_config_class(stage).load(path)
            continue
        if name.removesuffix(".yaml") in RECIPES:
            continue  # test_recipe_defaults_and_presets_validate
        data = module.prepare(pipeline_config("quickstart", path), str(tmp_path))
        # Cluster deploy targets read the model from object storage, so the run lives there too.
        target = (data.get("deploy") or {}).get("target")
        run_uri = {"kserve": "s3://bucket/runs/example", "pai-eas": "oss://bucket/runs/example"}.get(
            target, "runs/example"
        )
        for stage, section in data.items():
            stage_config(stage, section, run_uri)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_defaults_and_presets_validate(recipe):
    """With the console defaults and each preset, every stage's config validates."""
    import inspect

    from distilflow.components.validate.run import stage_config
    from distilflow.pipelines.params import PRESETS, resolve_config

    module = load_pipeline(recipe)
    defaults = {k: p.default for k, p in inspect.signature(module.pipeline.pipeline_func).parameters.items()}
    assert defaults["preset"] in PRESETS
    for preset in ("", *PRESETS):
        config = resolve_config(
            recipe,
            module.STAGES,
            preset=preset,
            config=defaults["config"],
            overrides=defaults["overrides"],
            teacher_base_url=defaults["teacher_base_url"],
            teacher_model=defaults["teacher_model"],
            student_model=defaults["student_model"],
            problems_uri=defaults["problems_uri"],
        )
        assert set(config) <= set(module.STAGES)
        for stage, section in config.items():
            stage_config(stage, section, "s3://bucket/runs/r1")


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in tree.items():
        out |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return out


@pytest.mark.unit
def test_presets_and_recipe_defaults_set_different_keys():
    """The SDK folds a recipe's defaults into ``config``, which ranks above the preset: a preset must not
    set what the recipe defaults set, or the defaults would silently undo it."""
    from distilflow.pipelines.params import PRESETS, load_preset, recipe_defaults

    for preset in PRESETS:
        for recipe in RECIPES:
            both = _leaves(load_preset(preset)) & _leaves(recipe_defaults(recipe))
            assert not both, f"preset {preset} and {recipe}.yaml both set {sorted(both)}"


def test_a_stage_that_launches_a_multi_node_job_takes_no_gpus_in_its_own_pod():
    """configure hands each training stage's pod gpu_count GPUs, or none when its launcher only
    submits and follows a TrainJob / PAI-DLC job (32b-4nodes: sft), so the follower holds no GPU the
    job's nodes may be waiting for."""
    import json

    from distilflow.pipelines.steps import configure

    module = load_pipeline("lifecycle")
    common = {
        "recipe": "lifecycle",
        "stages": module.STAGES,
        "config": {},
        "teacher_base_url": "http://127.0.0.1:9/v1",
        "teacher_model": "teacher",
        "student_model": "Qwen/Qwen2.5-32B-Instruct",
        "problems_uri": "s3://b/problems.jsonl",
        "gpu_count": 8,
    }
    config, _, *gpus = configure.python_func(preset="32b-4nodes", overrides="{}", **common)
    assert config["sft"]["launcher"] == "trainjob" and config["sft"]["nodes"] == 4
    assert gpus == [0, 8, 8, 8]  # sft, dpo, reward, rl
    overrides = json.dumps({"sft": {"launcher": "local"}, "rl": {"launcher": "dlc"}})
    _, _, *gpus = configure.python_func(preset="32b-4nodes", overrides=overrides, **common)
    assert gpus == [8, 8, 8, 0]
    _, _, *gpus = configure.python_func(preset="7b-1node", overrides="{}", **common)
    assert gpus == [8, 8, 8, 8]


@pytest.mark.unit
def test_lifecycle_switches_leave_their_stages_out_of_config_and_validate():
    from distilflow.errors import ConfigError
    from distilflow.pipelines.params import running_stages
    from distilflow.pipelines.steps import configure

    stages = load_pipeline("lifecycle").STAGES
    config, running, *_ = configure.python_func(
        recipe="lifecycle",
        stages=stages,
        preset="7b-1node",
        config={},
        overrides="{}",
        teacher_base_url="http://127.0.0.1:9/v1",
        teacher_model="teacher",
        student_model="Qwen/Qwen2.5-7B-Instruct",
        problems_uri="s3://b/problems.jsonl",
        with_rl=False,
        with_deploy=False,
    )
    assert running == ["validate", "distill", "curate", "sft", "dpo", "evaluate"]
    assert set(config) <= set(running) and "rl" not in config and "dpo" in config
    assert running_stages(stages) == stages
    with pytest.raises(ConfigError, match="unknown switch.*with_rm"):
        running_stages(stages, with_rm=False)
