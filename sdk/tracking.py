"""Experiment tracking of the training stages and evaluate: MLflow, TensorBoard or W&B.

A stage's ``tracking: {backend: mlflow | tensorboard | wandb | none, ...}`` turns it on. The training
stages hand the backend to TRL/transformers as ``report_to`` (its callbacks log the loss, learning
rate, ... every ``logging_steps``); around that, ``training_run`` opens one run per stage named
``<pipeline run>/<stage>`` (the KFP run's name, which the recipes' ``configure`` step fills in as
``tracking.pipeline_run``; the run folder's name when a stage runs alone), logs the stage's resolved
config as params (``config.<field>``) and its result's counts and metrics at the end, and tags it
with the stage, the pipeline run and the output folder. With ``tensorboard`` the event files are
written to ``<output_uri>/tensorboard`` (the components expose that folder as a KFP artifact).
``evaluate`` logs its scores to the same experiment (``log_evaluation``) and can register the model
in the MLflow model registry (``components/evaluate/registry.py``).

The tracking block never changes what is trained: it is left out of a stage's fingerprint and of
its checkpoints' (a rerun with another pipeline run name still resumes). MLflow's server comes from
``tracking.uri`` or ``MLFLOW_TRACKING_URI``; credentials (``MLFLOW_TRACKING_TOKEN``,
``WANDB_API_KEY``) only from the environment. Only the main process (``RANK`` 0) talks to MLflow.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from distilflow.config import BaseConfig

MAX_PARAM_CHARS = 6000
"""Longest parameter value MLflow 3 stores; longer ones are cut (ending with ``CUT``)."""
CUT = "...(truncated)"

METRIC_NAME = re.compile(r"[^0-9A-Za-z_\-. /:]")
"""Characters MLflow refuses in a metric name (replaced by ``_``)."""

TENSORBOARD = "tensorboard"
"""The folder of a stage output that holds its TensorBoard event files."""


class TrackingConfig(BaseConfig):
    """Where a stage's run is tracked (MLflow, TensorBoard, Weights & Biases) and under which names."""

    backend: Literal["none", "mlflow", "tensorboard", "wandb"] = Field(
        "none",
        description="none, mlflow (a tracking server), tensorboard (event files in <output_uri>/tensorboard) "
        "or wandb (needs the wandb package and WANDB_API_KEY); the training stages pass it to TRL's report_to",
    )
    uri: str | None = Field(
        None,
        description="mlflow: the tracking server, e.g. http://mlflow.mlflow:5000; null: MLFLOW_TRACKING_URI",
    )
    experiment: str = Field("distilflow", description="MLflow experiment (W&B project) the runs go to")
    run_name: str | None = Field(None, description="The run's name; null: <pipeline_run>/<stage>")
    pipeline_run: str | None = Field(
        None,
        description="The pipeline run's name (the recipes' configure step fills it in); null: the name of the "
        "run folder (the parent of the stage's output_uri)",
    )
    entity: str | None = Field(None, description="wandb: the team or user the project belongs to")
    tags: dict[str, str] = Field(default_factory=dict, description="More tags on every run (MLflow, W&B)")

    @model_validator(mode="after")
    def _check(self) -> TrackingConfig:
        if self.uri and self.backend != "mlflow":
            raise ValueError(f"tracking.uri={self.uri!r} is an MLflow server, but backend={self.backend!r}")
        if self.entity and self.backend != "wandb":
            raise ValueError(
                f"tracking.entity={self.entity!r} is a W&B setting, but backend={self.backend!r}"
            )
        return self


TRACKING_FIELD = {"resume_neutral": True, "fingerprint": False}
"""``json_schema_extra`` of a stage's ``tracking`` field: it changes neither what is trained nor the output."""


def run_name(tracking: TrackingConfig, stage: str, output_uri: str) -> str:
    """``tracking.run_name``, else ``<pipeline run>/<stage>``."""
    if tracking.run_name:
        return tracking.run_name
    parent = output_uri.rstrip("/").rsplit("/", 2)
    pipeline_run = tracking.pipeline_run or (parent[-2] if len(parent) > 1 else "distilflow")
    return f"{pipeline_run}/{stage}"


def flat_params(data: dict[str, Any], prefix: str = "config.") -> dict[str, str]:
    """A resolved config as MLflow params: nested keys dotted, lists and None as JSON, long values cut."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        out[name] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - len(CUT)] + CUT
    return out


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


@dataclass
class Tracked:
    """The tracking of one stage run: its backend, run name, MLflow run id and TensorBoard folder."""

    backend: str = "none"
    run_name: str = ""
    output_uri: str = ""
    run_id: str | None = None
    experiment_id: str | None = None
    tensorboard_dir: str | None = None
    env: dict[str, str | None] = field(default_factory=dict)

    @property
    def report_to(self) -> list[str] | str:
        """TRL/transformers' ``report_to`` for this backend."""
        return "none" if self.backend == "none" else [self.backend]

    def publish(self, result: Any) -> dict[str, str]:
        """Log the result's counts and metrics to the run; upload the TensorBoard event files to
        ``<output_uri>/tensorboard``. Returns the outputs to list in the manifest (before its marker)."""
        from distilflow import uri as uris
        from distilflow.outputs import COUNT, METRIC, declared

        if self.run_id and is_main_process():
            numbers = {**declared(result, COUNT), **declared(result, METRIC)}
            log_numbers(self.run_id, numbers)
        if self.tensorboard_dir and is_main_process() and os.listdir(self.tensorboard_dir):
            target = uris.join(self.output_uri, TENSORBOARD)
            uris.upload_dir(self.tensorboard_dir, target)
            return {TENSORBOARD: target}
        return {}


def published(result: Any) -> dict[str, str]:
    """In a stage's ``training_run``: record the MLflow run id on ``result`` (``tracking_run``), log the
    result to the run and upload the TensorBoard logs; the outputs to add to the manifest. Outside one
    (tests calling ``train`` directly): nothing."""
    tracked = current()
    if tracked is None:
        return {}
    if hasattr(result, "tracking_run"):
        result.tracking_run = tracked.run_id
    return tracked.publish(result)


_CURRENT: contextvars.ContextVar[Tracked | None] = contextvars.ContextVar("distilflow_tracked", default=None)


def current() -> Tracked | None:
    """The tracking of the stage run in progress (``training_arguments`` reads ``report_to`` from it)."""
    return _CURRENT.get()


def log_numbers(run_id: str, numbers: dict[str, Any]) -> None:
    """Numbers (true/false as 1/0) as metrics of an MLflow run, in one batch."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(key=METRIC_NAME.sub("_", name), value=float(value), timestamp=now, step=0)
        for name, value in numbers.items()
        if isinstance(value, (bool, int, float))
    ]
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        MlflowClient().log_batch(run_id, metrics=metrics[start : start + 1000])


def start_mlflow_run(
    tracking: TrackingConfig, name: str, tags: dict[str, str], params: dict[str, str]
) -> tuple:
    """Start (and make active) an MLflow run in the experiment; log its params and tags. Returns
    ``(run_id, experiment_id)``."""
    import mlflow

    if tracking.uri:
        mlflow.set_tracking_uri(tracking.uri)
    experiment = mlflow.set_experiment(tracking.experiment)
    run = mlflow.start_run(run_name=name, tags={**tags, **tracking.tags})
    items = list(params.items())
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow.log_params(dict(items[start : start + 100]))
    return run.info.run_id, experiment.experiment_id


def _tags(tracking: TrackingConfig, stage: str, output_uri: str, name: str) -> dict[str, str]:
    return {
        "distilflow.stage": stage,
        "distilflow.pipeline_run": name.rsplit("/", 1)[0],
        "distilflow.output_uri": output_uri,
    }


def _set_env(tracked: Tracked, values: dict[str, str | None]) -> None:
    for key, value in values.items():
        tracked.env.setdefault(key, os.environ.get(key))
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _restore_env(tracked: Tracked) -> None:
    for key, value in tracked.env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def training_run(config: Any, stage: str, output_uri: str) -> Iterator[Tracked]:
    """One tracked run of a training stage around building and running its trainer.

    Sets what TRL's callbacks read (``report_to`` through ``current()``, the run's name, TensorBoard's
    ``TENSORBOARD_LOGGING_DIR``, W&B's project), starts the MLflow run with the resolved config as
    params (the callback then logs into it), and ends it FINISHED, or FAILED on an error.
    """
    tracking: TrackingConfig = config.tracking
    tracked = Tracked(tracking.backend, run_name(tracking, stage, output_uri), output_uri)
    token = _CURRENT.set(tracked)
    try:
        if tracking.backend == "tensorboard":
            tracked.tensorboard_dir = tempfile.mkdtemp(prefix=f"distilflow-{stage}-tb-")
            _set_env(tracked, {"TENSORBOARD_LOGGING_DIR": tracked.tensorboard_dir})
        elif tracking.backend == "wandb":
            _check_wandb()
            _set_env(tracked, {"WANDB_PROJECT": tracking.experiment, "WANDB_ENTITY": tracking.entity})
        elif tracking.backend == "mlflow" and is_main_process():
            # the transformers callback reads these; it logs into the run started here
            _set_env(tracked, {"MLFLOW_EXPERIMENT_NAME": tracking.experiment, "MLFLOW_RUN_ID": None})
            params = flat_params(config.to_dict())
            tags = _tags(tracking, stage, output_uri, tracked.run_name)
            tracked.run_id, tracked.experiment_id = start_mlflow_run(tracking, tracked.run_name, tags, params)
            print(f"[{stage}] tracking in MLflow: run {tracked.run_name} ({tracked.run_id})", flush=True)
        yield tracked
    except BaseException:
        _end_mlflow(tracked, "FAILED")
        raise
    else:
        _end_mlflow(tracked, "FINISHED")
    finally:
        _CURRENT.reset(token)
        _restore_env(tracked)
        if tracked.tensorboard_dir:
            shutil.rmtree(tracked.tensorboard_dir, ignore_errors=True)


def _end_mlflow(tracked: Tracked, status: str) -> None:
    if tracked.run_id is None:
        return
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == tracked.run_id:
        mlflow.end_run(status=status)


def _check_wandb() -> None:
    try:
        import wandb  # noqa: F401
    except ImportError:
        from distilflow.errors import ConfigError

        raise ConfigError("tracking.backend=wandb needs the wandb package: pip install wandb") from None


def log_evaluation(
    tracking: TrackingConfig, output_uri: str, config: Any, metrics: dict[str, float], tags: dict[str, str]
) -> str | None:
    """evaluate's scores as one run of the experiment (``<pipeline run>/evaluate``): the resolved
    config as params, ``metrics`` and ``tags``. Returns the run id (None unless the backend is mlflow)."""
    if tracking.backend != "mlflow" or not is_main_process():
        return None
    import mlflow

    name = run_name(tracking, "evaluate", output_uri)
    all_tags = {**_tags(tracking, "evaluate", output_uri, name), **tags}
    run_id, _ = start_mlflow_run(tracking, name, all_tags, flat_params(config.to_dict()))
    try:
        log_numbers(run_id, metrics)
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")
    print(f"[evaluate] scores logged to MLflow: run {name} ({run_id})", flush=True)
    return run_id
