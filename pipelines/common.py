"""What the recipes share: the console parameters' documentation and defaults, the ``configure``
step, and where each kind of step runs (GPU steps, steps that call the teacher)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from distilflow.pipelines.params import TEACHER_KEY_ENV, TEACHER_KEY_SECRET_KEY
from distilflow.placement import Placement, SecretEnv, apply

TEACHER_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
TEACHER_KEY_SECRET = "teacher-api-key"
PROBLEMS_URI = "s3://distilflow/problems/math.jsonl"
GPU_TYPE = "nvidia.com/gpu"
SHM_SIZE = "32Gi"

ARGS = """
    Args:
        output_uri: Where the run writes, one folder per stage, e.g. s3://my-bucket/runs/r1 (also oss://, gs://).
            Rerunning with the same output_uri resumes: finished stages are not redone.
        teacher_base_url: OpenAI-compatible endpoint of the teacher (its /v1 root): vLLM, SGLang, DashScope, PAI-EAS.
        teacher_model: Model name(s) the endpoint serves; several, comma-separated, make several teachers.
            The first is also the judge.
        teacher_key_secret: Name of the Kubernetes Secret whose key 'api-key' holds the teacher's API key
            (exposed to the steps that call the teacher as TEACHER_API_KEY; no key if the Secret is absent).
        student_model: The student to train: a Hugging Face model id or a model folder in object storage.
        problems_uri: JSONL of training problems, one {"id", "problem", "answer"} object per line.
        gpu_type: Kubernetes resource name of one GPU, e.g. nvidia.com/gpu or nvidia.com/mig-3g.40gb.
        gpu_count: GPUs of each training step's pod (evaluation and serving take one; none for a stage
            whose launcher is trainjob or dlc: its job's nodes request theirs).
        gpu_node_selector: Node labels GPU steps need, e.g. {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}.
        preset: Settings for the student's size: 1.5b-1node, 7b-1node or 32b-4nodes (empty: none).
        overrides: JSON object of config sections for everything else, e.g. {"sft": {"max_steps": 200}}.
            It wins over every other setting.
        config: The whole config as the distilflow SDK and CLI pass it (a config file plus --set); leave empty
            in the console."""


CORPUS_ARG = """
        corpus_uri: A corpus already scored in OmniThought's layout (RV, CD and logic per chain of thought),
            e.g. hf://datasets/alibaba-pai/OmniThought/data/*.parquet: curate selects from its released
            annotations and distill and the judge do not run. Empty: distill and judge."""


def data_file(name: str) -> str:
    """Path of a file shipped with the pipelines package (default configs, presets, problems)."""
    return str(resources.files("distilflow.pipelines").joinpath(name))


def docstring(summary: str, extra_args: str = "") -> str:
    """A recipe's docstring: KFP reads each parameter's description from its ``Args:`` section."""
    return f"{summary}\n{ARGS}{extra_args}\n    "


def on_cpu(task: Any, teacher_key_secret: Any = None) -> Any:
    """A step without GPUs; with ``teacher_key_secret``, one that calls the teacher (validate, distill,
    curate): the Secret's ``api-key`` becomes ``TEACHER_API_KEY`` in its environment."""
    secrets = []
    if teacher_key_secret is not None:
        secrets.append(SecretEnv(teacher_key_secret, TEACHER_KEY_SECRET_KEY, TEACHER_KEY_ENV, optional=True))
    return apply(task, Placement(secret_env=secrets))


def on_gpus(task: Any, gpu_type: Any, gpus: Any, node_selector: Any) -> Any:
    """Run a step on GPU nodes: ``gpus`` of ``gpu_type``, the node selector, the GPU taint tolerated
    and a memory-backed ``/dev/shm`` for NCCL and dataloader workers."""
    return apply(
        task, Placement(gpus=gpus, accelerator_type=gpu_type, node_selector=node_selector, shm_size=SHM_SIZE)
    )


def cpu_step(task: Any, name: str, teacher_key_secret: Any = None, cache: bool = False) -> Any:
    """Name a step without GPUs and set its caching explicitly: stages resume from their own complete
    outputs (distill's teacher calls have their own request cache), so KFP's cache is off for them;
    pure helper steps (``configure``, ``variant``) turn it on."""
    task.set_display_name(name)
    task.set_caching_options(cache)
    return on_cpu(task, teacher_key_secret)


def gpu_step(task: Any, name: str, gpu_type: Any, gpus: Any, node_selector: Any) -> Any:
    """Name a stage on GPU nodes (``on_gpus``); KFP's cache is off (stages resume from their outputs)."""
    task.set_display_name(name)
    task.set_caching_options(False)
    return on_gpus(task, gpu_type, gpus, node_selector)


# The recipe parameters ``configure`` reads (with ``lifecycle``'s switches, where a recipe has them).
CONFIGURE_PARAMETERS = (
    "preset",
    "config",
    "overrides",
    "teacher_base_url",
    "teacher_model",
    "student_model",
    "problems_uri",
    "gpu_count",
)


def prepare_data(
    recipe: str,
    stages: list[str],
    parameters: dict[str, Any],
    distill_name: str = "distill",
    curate_name: str = "curate",
) -> tuple[Any, Any, dict[str, Any]]:
    """The start every recipe shares, called first in its pipeline function with ``locals()`` (its
    console parameters): configure -> validate -> distill -> curate. Returns the run's config (the
    ``configure`` output every stage reads), curate's ``curated`` output (it feeds the training
    stages) and the GPUs of each training stage's pod by stage name (``gpu_count``, or 0 where the
    stage's launcher is trainjob or dlc). ``lifecycle``'s switches (``with_dpo``, ...) leave the stages
    they turn off out of the config and out of validate's checks. A recipe with a ``corpus_uri``
    parameter (thoughtx, thoughty) runs distill and the judge only when it is empty; otherwise curate
    selects from that scored corpus (``curate.corpus``) and no teacher is called."""
    from distilflow.components.curate.component import curate
    from distilflow.components.distill.component import distill

    output_uri, teacher_key_secret = parameters["output_uri"], parameters["teacher_key_secret"]
    cfg, validate_task, pod_gpus = configure_and_validate(recipe, stages, parameters)
    if "corpus_uri" in parameters:
        return cfg, judged_or_corpus(cfg, parameters, validate_task), pod_gpus
    # Teacher chains of thought; distill's own request cache makes reruns free, KFP's would skip new data.
    distill_task = distill(config=cfg, output_uri=output_uri).after(validate_task)
    cpu_step(distill_task, distill_name, teacher_key_secret)
    # Judge RV/CD/logic, verify answers (CRV when configured), select, build preference pairs.
    curate_task = curate(config=cfg, output_uri=output_uri, traces=distill_task.outputs["traces"])
    cpu_step(curate_task, curate_name, teacher_key_secret)
    return cfg, curate_task.outputs["curated"], pod_gpus


def prepare_teacher(
    recipe: str, stages: list[str], parameters: dict[str, Any], distill_name: str = "distill"
) -> tuple[Any, Any, dict[str, Any]]:
    """configure -> validate -> distill, from a recipe's console parameters (``locals()``), for a recipe
    that trains on distill's output itself (``whitebox``: the teacher logits). Returns the run's config,
    the distill task (its ``traces`` output: the distill folder) and the GPUs of each training stage's
    pod."""
    from distilflow.components.distill.component import distill

    cfg, validate_task, pod_gpus = configure_and_validate(recipe, stages, parameters)
    # Teacher chains of thought; distill's own request cache makes reruns free, KFP's would skip new data.
    distill_task = distill(config=cfg, output_uri=parameters["output_uri"]).after(validate_task)
    cpu_step(distill_task, distill_name, parameters["teacher_key_secret"])
    return cfg, distill_task, pod_gpus


def configure_and_validate(
    recipe: str, stages: list[str], parameters: dict[str, Any]
) -> tuple[Any, Any, dict]:
    """The ``configure`` step (the run's config and each training pod's GPUs) and ``validate`` after it."""
    from distilflow.components.validate.component import validate
    from distilflow.pipelines.params import SWITCHES
    from distilflow.pipelines.steps import configure

    output_uri, teacher_key_secret = parameters["output_uri"], parameters["teacher_key_secret"]
    # The run's whole config: recipe defaults < preset < parameters < config < overrides.
    optional = (*SWITCHES, "corpus_uri")
    wanted = (*CONFIGURE_PARAMETERS, *(name for name in optional if name in parameters))
    from kfp import dsl

    config_task = configure(
        recipe=recipe,
        stages=stages,
        pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,  # names the tracked runs <pipeline run>/<stage>
        **{name: parameters[name] for name in wanted},
    )
    cpu_step(config_task, "configure", cache=True)  # a pure function of its inputs and the image
    cfg = config_task.outputs["config"]
    # GPUs of each training stage's pod: gpu_count, or none when its launcher runs the job elsewhere.
    pod_gpus = {stage: config_task.outputs[f"{stage}_gpus"] for stage in ("sft", "dpo", "reward", "rl")}
    # Fail fast on bad configs, data, models and endpoints, before any GPU is claimed (no cache: it
    # checks the world as it is now).
    validate_task = cpu_step(
        validate(config=cfg, output_uri=output_uri, stages=config_task.outputs["stages"]),
        "validate",
        teacher_key_secret,
    )
    return cfg, validate_task, pod_gpus


def judged_or_corpus(cfg: Any, parameters: dict[str, Any], validate_task: Any) -> Any:
    """Without ``corpus_uri``: distill -> curate with the judge (a sub-pipeline); with it: curate on the
    scored corpus. Returns curate's ``curated`` output of the branch that ran."""
    from kfp import dsl

    from distilflow.components.curate.component import curate

    # imported by the recipe's module first: a sub-pipeline cannot be defined while a pipeline is built
    from distilflow.pipelines.branches import distill_and_judge

    output_uri = parameters["output_uri"]
    with dsl.If(parameters["corpus_uri"] == "", name="distill and judge"):
        judged_task = distill_and_judge(
            config=cfg, output_uri=output_uri, teacher_key_secret=parameters["teacher_key_secret"]
        ).after(validate_task)
        judged_task.set_display_name("distill -> curate (RV/CD)")
    with dsl.Else(name="scored corpus"):
        # The released RV/CD/logic annotations (OmniThought): selection only, no teacher is called.
        corpus_task = cpu_step(
            curate(config=cfg, output_uri=output_uri).after(validate_task), "curate (corpus)"
        )
    return dsl.OneOf(judged_task.output, corpus_task.outputs["curated"])
