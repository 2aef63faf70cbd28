"""BaseConfig: files, dicts, --set overrides, precedence, error messages, round trips, fingerprints."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import yaml
from pydantic import Field

from distilflow.components import iter_config_classes
from distilflow.config import BaseConfig, deep_merge, merge_layers, parse_overrides
from distilflow.errors import ConfigError, DistilflowError
from distilflow.uri import Uri

pytestmark = pytest.mark.unit


class Optim(BaseConfig):
    lr: float = Field(1e-4, gt=0, le=1, description="Learning rate")
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], description="Adam betas")


class Toy(BaseConfig):
    name: str = Field("toy", description="Run name")
    steps: int = Field(10, ge=1, le=1000, description="Training steps")
    mode: Literal["fast", "slow"] = Field("fast", description="Speed")
    output_uri: Uri = Field("/tmp/out", description="Where outputs go")
    tags: list[str] = Field(default_factory=list, description="Free-form tags")
    optim: Optim = Field(default_factory=Optim, description="Optimiser settings")


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def problem_lines(err: ConfigError) -> list[str]:
    return [line.strip() for line in str(err).splitlines()[1:]]


# --- loading ---------------------------------------------------------------------------------


def test_defaults_when_no_source():
    cfg = Toy.load()
    assert cfg.steps == 10 and cfg.optim.lr == 1e-4 and cfg.tags == []


def test_load_yaml_file(tmp_path):
    path = write(tmp_path, "c.yaml", "name: a\nsteps: 20\noptim:\n  lr: 0.01\ntags: [x, y]\n")
    cfg = Toy.load(path)
    assert (cfg.name, cfg.steps, cfg.optim.lr, cfg.tags) == ("a", 20, 0.01, ["x", "y"])
    assert cfg.optim.betas == [0.9, 0.999]  # nested default kept


def test_load_json_file(tmp_path):
    path = write(tmp_path, "c.json", json.dumps({"steps": 7, "mode": "slow", "optim": {"betas": [0.5, 0.6]}}))
    cfg = Toy.load(path)
    assert (cfg.steps, cfg.mode, cfg.optim.betas) == (7, "slow", [0.5, 0.6])


def test_load_dict_does_not_mutate_the_caller():
    source = {"optim": {"lr": 0.5}, "tags": ("a",)}
    cfg = Toy.load(source, ["optim.lr=0.25"])
    assert cfg.optim.lr == 0.25 and cfg.tags == ["a"]
    assert source == {"optim": {"lr": 0.5}, "tags": ("a",)}


def test_non_json_value_in_dict_is_a_config_error(tmp_path):
    # used to crash with "Object of type PosixPath is not JSON serializable"
    with pytest.raises(ConfigError, match=r"Toy\.output_uri: Input should be a valid string"):
        Toy.load({"output_uri": tmp_path})


def test_empty_file_gives_defaults(tmp_path):
    assert Toy.load(write(tmp_path, "empty.yaml", "")) == Toy()


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        Toy.load(str(tmp_path / "nope.yaml"))


def test_file_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"list\.yaml: a config must be a mapping.*got list"):
        Toy.load(write(tmp_path, "list.yaml", "- 1\n- 2\n"))


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "name: a\nsteps: 3\noptim: {lr: 0.1\nmode: fast\n")
    with pytest.raises(ConfigError) as info:
        Toy.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:")
    line = int(msg[len(path) + 1 :].split(":", 1)[0])
    assert 3 <= line <= 5, msg  # the unclosed flow mapping opens on line 3
    assert "not valid YAML/JSON" in msg


def test_malformed_json_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.json", '{\n  "steps": 3,\n  "name": "x"\n  "mode": "fast"\n}\n')
    with pytest.raises(ConfigError, match=rf"{path}:4: not valid JSON: Expecting ',' delimiter"):
        Toy.load(path)


def test_tab_indented_json(tmp_path):
    # json.dump(indent="\t") output; YAML refuses tabs, JSON does not
    path = write(tmp_path, "tabs.json", json.dumps({"steps": 4, "optim": {"lr": 1e-5}}, indent="\t"))
    cfg = Toy.load(path)
    assert cfg.steps == 4 and cfg.optim.lr == 1e-5


def test_exponent_floats_are_numbers(tmp_path):
    # PyYAML alone reads 1e-5 (no dot) as a string; a field typed Any would keep it as text
    class Loose(BaseConfig):
        extra: dict = Field(default_factory=dict, description="Passed through untouched")

    cfg = Loose.load(write(tmp_path, "c.yaml", "extra:\n  lr: 1e-5\n  n: 1E3\n  s: 1e\n"), ["extra.wd=2e-2"])
    assert cfg.extra == {"lr": 1e-5, "n": 1000.0, "s": "1e", "wd": 0.02}


# --- overrides -------------------------------------------------------------------------------


def test_overrides_nested_typed_and_lists():
    cfg = Toy.load(None, ["steps=42", "optim.lr=0.5", "optim.betas=[0.1, 0.2]", "tags=[a, b]", "mode=slow"])
    assert cfg.steps == 42 and isinstance(cfg.steps, int)
    assert cfg.optim.lr == 0.5
    assert cfg.optim.betas == [0.1, 0.2]
    assert cfg.tags == ["a", "b"]
    assert cfg.mode == "slow"


def test_override_of_a_text_field_keeps_the_text():
    # YAML would read these as int, bool and float; the fields want text, so the text is kept
    cfg = Toy.load(None, ["name=2024", "tags=[a]", "output_uri=on", "optim.lr=0.5"])
    assert cfg.name == "2024" and cfg.output_uri == "on"
    assert Toy.load(None, ["name=1.10"]).name == "1.10"
    # a typed field still gets a typed value, and a bad one is still an error
    assert Toy.load(None, ["steps=7"]).steps == 7
    with pytest.raises(ConfigError, match=r"--set steps: Toy\.steps: Input should be a valid integer"):
        Toy.load(None, ["steps=many", "name=yes"])


def test_override_value_with_equals_and_empty_value():
    tree = parse_overrides(["a.b=x=y", "c="])
    assert tree == {"a": {"b": "x=y"}, "c": ""}


def test_override_without_equals_is_refused():
    with pytest.raises(ConfigError, match=r"--set 'steps': expected KEY=VALUE"):
        Toy.load(None, ["steps"])


@pytest.mark.parametrize("item", ["=3", "a..b=1", "a.=1", ".a=1"])
def test_override_with_empty_key_segment_is_refused(item):
    with pytest.raises(ConfigError, match="empty key segment"):
        parse_overrides([item])


def test_override_value_and_section_conflict():
    with pytest.raises(ConfigError, match="set to a value and also used as a section"):
        parse_overrides(["optim=1", "optim.lr=2"])


def test_precedence_defaults_file_overrides(tmp_path):
    path = write(tmp_path, "c.yaml", "steps: 20\nname: from-file\noptim:\n  lr: 0.01\n")
    cfg = Toy.load(path, ["steps=30", "optim.betas=[0.1, 0.2]"])
    assert cfg.steps == 30  # override beats file
    assert cfg.name == "from-file"  # file beats default
    assert cfg.optim.lr == 0.01  # nested file value survives a sibling override
    assert cfg.optim.betas == [0.1, 0.2]
    assert cfg.mode == "fast"  # default where nobody spoke


def test_deep_merge_does_not_touch_inputs():
    base = {"a": {"b": 1, "c": 2}, "d": 1}
    out = deep_merge(base, {"a": {"b": 9}, "d": {"x": 1}})
    assert out == {"a": {"b": 9, "c": 2}, "d": {"x": 1}}
    assert base == {"a": {"b": 1, "c": 2}, "d": 1}


def test_merge_layers_lowest_first_and_the_replace_rule():
    defaults = {"sft": {"max_steps": 10, "lr": 1.0}, "distill": {"teacher": {"model": "a", "url": "u"}}}
    preset = {"sft": {"max_steps": 20}}
    overrides = {"sft": {"lr": 3.0}, "distill": {"teacher": {"model": "b"}}}
    assert merge_layers(defaults, preset, overrides) == {
        "sft": {"max_steps": 20, "lr": 3.0},
        "distill": {"teacher": {"model": "b", "url": "u"}},
    }
    assert merge_layers() == {} and merge_layers(preset) == preset

    def drop_teacher(merged, layer):  # a teacher that names its model replaces the one below
        named = "model" in layer.get("distill", {}).get("teacher", {})
        return {**merged, "distill": {}} if named else merged

    seen = []
    merged = merge_layers(
        defaults, preset, overrides, replace=lambda m, layer: seen.append(layer) or drop_teacher(m, layer)
    )
    assert merged["distill"] == {"teacher": {"model": "b"}} and seen == [defaults, preset, overrides]
    assert defaults["distill"]["teacher"] == {"model": "a", "url": "u"}  # inputs untouched


# --- error messages --------------------------------------------------------------------------


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "c.yaml", "stepz: 3\noptim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        Toy.load(path)
    lines = problem_lines(info.value)
    assert f"{path}: Toy.stepz: unknown key; remove it or fix its spelling" in lines
    assert f"{path}: Toy.optim.lrr: unknown key; remove it or fix its spelling" in lines


def test_bad_override_is_attributed_to_set_not_to_the_file(tmp_path):
    path = write(tmp_path, "c.yaml", "steps: 3\n")
    with pytest.raises(ConfigError) as info:
        Toy.load(path, ["optim.lrr=0.1"])
    assert problem_lines(info.value) == [
        "--set optim.lrr: Toy.optim.lrr: unknown key; remove it or fix its spelling"
    ]


def test_out_of_range_names_field_and_value():
    with pytest.raises(ConfigError) as info:
        Toy.load({"steps": 5000})
    (line,) = problem_lines(info.value)
    assert line.startswith("<dict>: Toy.steps:")
    assert "less than or equal to 1000" in line
    assert "(got 5000)" in line


def test_all_errors_reported_together(tmp_path):
    path = write(tmp_path, "c.yaml", "steps: 0\nmode: medium\nbogus: 1\noptim:\n  lr: -1\n")
    with pytest.raises(ConfigError) as info:
        Toy.load(path)
    msg = str(info.value)
    assert msg.startswith("4 problem(s) in config:")
    for field in ("Toy.steps", "Toy.mode", "Toy.bogus", "Toy.optim.lr"):
        assert f"{path}: {field}:" in msg
    assert "'medium'" in msg and "(got -1)" in msg


def test_bad_uri_field_lists_schemes():
    with pytest.raises(ConfigError) as info:
        Toy.load({"output_uri": "http://example.com/x"})
    msg = str(info.value)
    assert "Toy.output_uri" in msg and "'http://'" in msg and "s3://" in msg


def test_config_error_is_a_distilflow_error():
    assert issubclass(ConfigError, DistilflowError)


def test_validate_assignment():
    cfg = Toy()
    with pytest.raises(ValueError):
        cfg.steps = 0


# --- round trip and fingerprint --------------------------------------------------------------


def test_to_yaml_round_trip(tmp_path):
    cfg = Toy.load(None, ["name=run-1", "steps=33", "tags=[a]", "optim.lr=0.002"])
    text = cfg.to_yaml()
    assert yaml.safe_load(text)["optim"]["lr"] == 0.002
    again = Toy.load(write(tmp_path, "resolved.yaml", text))
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_fingerprint_stable_and_sensitive():
    a = Toy.load(None, ["steps=5"])
    b = Toy.load({"steps": 5})
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    assert a.fingerprint() == Toy.load(None, ["steps=5"]).fingerprint()  # deterministic across objects
    assert Toy.load(None, ["steps=6"]).fingerprint() != a.fingerprint()
    assert Toy.load(None, ["steps=5", "optim.lr=0.3"]).fingerprint() != a.fingerprint()


def test_fingerprint_ignores_key_order():
    a = Toy.load({"steps": 5, "name": "n", "optim": {"lr": 0.1, "betas": [0.1]}})
    b = Toy.load({"optim": {"betas": [0.1], "lr": 0.1}, "name": "n", "steps": 5})
    assert a.fingerprint() == b.fingerprint()


# --- every config field of the project is documented -----------------------------------------


def _undocumented(classes) -> list[str]:
    return [
        f"{cls.__module__}.{cls.__name__}.{name}"
        for cls in classes
        for name, field in cls.model_fields.items()
        if not (field.description or "").strip()
    ]


def test_undocumented_field_is_detected():
    class Sloppy(BaseConfig):
        documented: int = Field(1, description="fine")
        bare: int = 2

    assert _undocumented([Sloppy]) == [f"{__name__}.Sloppy.bare"]


def test_every_config_field_is_documented():
    """Walks every shipped config class (and the configs nested in them)."""
    from distilflow.components import STAGES, load_config_class
    from distilflow.teachers.config import TeacherConfig

    present, missing = [TeacherConfig], []
    for stage in STAGES:
        try:
            present.append(load_config_class(stage))
        except ModuleNotFoundError as exc:
            if exc.name != f"distilflow.components.{stage}.config":
                raise  # a broken import inside an existing config module is a failure, not a skip
            missing.append(stage)
    # the configs that exist are checked even while others are still being written
    assert _undocumented(present) == []
    if missing:
        pytest.skip(f"stage config modules not written yet: {', '.join(missing)} (other stages checked)")
    classes = iter_config_classes()
    assert set(present) <= set(classes)
    assert _undocumented(classes) == []
