"""Every pipeline compiles; the spec parses with KFP's own PipelineSpec, names the stage images,
keeps caching off, and carries no secret values."""

from __future__ import annotations

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from distilflow import __version__
from distilflow.client import compile_pipeline, pipeline_config
from distilflow.images import stage_image
from distilflow.pipelines import PIPELINES, load_pipeline

SECRET = "sk-distilflow-test-secret-0123456789"


@pytest.fixture(scope="module", params=sorted(PIPELINES))
def compiled(request, tmp_path_factory):
    import os

    os.environ["OPENAI_API_KEY"] = SECRET
    try:
        path = compile_pipeline(request.param, str(tmp_path_factory.mktemp("c") / f"{request.param}.yaml"))
    finally:
        del os.environ["OPENAI_API_KEY"]
    with open(path) as f:
        text = f.read()
    return request.param, text, yaml.safe_load(text)


def test_spec_parses_with_kfp_pipeline_spec(compiled):
    name, _, spec = compiled
    parsed = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    assert parsed.pipeline_info.name == name
    assert set(parsed.root.input_definitions.parameters) == {"output_uri", "config"}


def test_spec_uses_stage_images_and_no_caching(compiled):
    name, _, spec = compiled
    module = load_pipeline(name)
    executors = spec["deploymentSpec"]["executors"]
    images = {ex["container"]["image"] for ex in executors.values()}
    assert images == {stage_image(stage) for stage in module.STAGES}
    assert all(img.endswith(":" + __version__) for img in images)
    tasks = spec["root"]["dag"]["tasks"]
    assert {t["componentRef"]["name"].removeprefix("comp-") for t in tasks.values()} == set(module.STAGES)
    assert all(t.get("cachingOptions", {}).get("enableCache", False) is False for t in tasks.values())
    # Thin components: no pip install at run time, the code comes from the image.
    for ex in executors.values():
        assert "pip install" not in " ".join(ex["container"].get("command", []))


def test_spec_has_no_secret_values(compiled):
    _, text, _ = compiled
    assert SECRET not in text
    assert "api_key:" not in text.replace("api_key_env", "")


def test_default_config_sections_match_stages():
    for name in PIPELINES:
        module = load_pipeline(name)
        config = pipeline_config(name)
        assert set(config) <= set(module.STAGES)


def test_shipped_example_configs_load(tmp_path):
    """Every shipped config file validates: a stage config (stage-*.yaml) whole; a pipeline config as
    the CLI uses it, merged over the quickstart defaults and completed by prepare()."""
    import glob
    import os

    from distilflow.components import STAGES, load_config_class
    from distilflow.components.validate.run import stage_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = glob.glob(os.path.join(root, "examples", "*.yaml")) + glob.glob(
        os.path.join(root, "pipelines", "*.yaml")
    )
    assert len(files) >= 4
    module = load_pipeline("quickstart")
    for path in files:
        name = os.path.basename(path)
        if name.startswith("stage-"):
            stage = name.removeprefix("stage-").removesuffix(".yaml").split("-")[0]  # stage-sft-s3 -> sft
            assert stage in STAGES
            load_config_class(stage).load(path)
            continue
        data = module.prepare(pipeline_config("quickstart", path), str(tmp_path))
        # Cluster deploy targets read the model from object storage, so the run lives there too.
        target = (data.get("deploy") or {}).get("target")
        run_uri = {"kserve": "s3://bucket/runs/example", "pai-eas": "oss://bucket/runs/example"}.get(
            target, "runs/example"
        )
        for stage, section in data.items():
            stage_config(stage, section, run_uri)
