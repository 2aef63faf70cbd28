"""Run a training stage on many nodes as a Kubeflow Trainer ``TrainJob`` (the ``kubeflow`` SDK).

The launcher does not train: it writes the stage's config with ``launcher: local`` next to the
output, submits a TrainJob (trainer.kubeflow.org/v1alpha1) that references a (Cluster)TrainingRuntime
(``torch-distributed`` by default) and runs the train image on every node with
``torchrun --no-python distilflow stage STAGE --config <uri>`` (torchrun takes the node count, rank
and rendezvous from the ``PET_*`` variables the Trainer's torch plugin sets), streams node-0's log,
waits for the job to complete or fail, and reads the result back from the finished output's manifest.
Secrets travel as ``secretKeyRef`` references only, never as values.

The same function serves every stage with ``launcher``/``nodes``/``gpus_per_node`` fields (sft, dpo,
reward, rl). It imports neither torch nor the stage's training code.
"""

from __future__ import annotations

import os
import time
from typing import Any

from distilflow import uri as uris
from distilflow.errors import ConfigError, DistilflowError
from distilflow.outputs import StageOutput, require_complete

CONFIG_FILE = "trainjob-config.yaml"
"""The config the job's nodes run with, written to ``<output_uri>/trainjob-config.yaml``."""

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
NODE_CONTAINER = "node"


def job_config(config: Any) -> Any:
    """The config the job's nodes run: the same, with ``launcher: local`` (same ``output_uri``)."""
    return type(config).model_validate({**config.to_dict(), "launcher": "local"})


def stage_job(stage: str, config: Any) -> tuple[Any, str, dict[str, Any] | None]:
    """What a launcher submits: the nodes' config (``job_config``), its URI in the stage output (written
    there for the nodes to read), and the stored result when a finished output of the same config
    already stands there (then nothing is written and nothing is to be submitted)."""
    local = job_config(config)
    out = StageOutput(local.output_uri, stage)
    stored = out.reusable(local)
    if stored is not None:
        print(f"[{stage}] reusing finished output {out.uri}", flush=True)
        return local, out.path(CONFIG_FILE), stored["result"]
    config_uri = out.path(CONFIG_FILE)
    uris.write_text(config_uri, local.to_yaml())
    return local, config_uri, None


def job_result(stage: str, local: Any, job: str) -> dict[str, Any]:
    """The result of a job that ended well (``job`` names it): its output must be complete and of
    this config, or the step fails saying which."""
    manifest = require_complete(local.output_uri, f"{stage} output of {job}")
    if manifest.get("config_fingerprint") != local.fingerprint():
        raise DistilflowError(
            f"{stage}: {job} succeeded, but {local.output_uri} holds the output of another config "
            f"(fingerprint {manifest.get('config_fingerprint')}, expected {local.fingerprint()})"
        )
    print(f"[{stage}] {job} succeeded: {local.output_uri}", flush=True)
    return manifest["result"]


def job_command(stage: str, config_uri: str) -> list[str]:
    """The container command of every node."""
    return ["torchrun", "--no-python", "distilflow", "stage", stage, "--config", config_uri]


def node_env(names: list[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """Plain environment variables copied by name from this process's environment."""
    environ = os.environ if environ is None else environ
    missing = [n for n in names if n not in environ]
    if missing:
        raise ConfigError(
            f"env lists {', '.join(missing)}, which this process's environment does not set; set them or "
            "remove them from env"
        )
    return {n: environ[n] for n in names}


def secret_refs(secret_env: dict[str, str]) -> list[dict[str, Any]]:
    """``secretKeyRef`` env entries from ``NAME: secret-name/key`` (values are never read)."""
    refs = []
    for name, ref in sorted(secret_env.items()):
        secret, _, key = ref.partition("/")
        refs.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return refs


def _client(namespace: str | None, config_file: str | None) -> Any:
    """A TrainerClient for ``config_file`` (default: ``$KUBECONFIG`` as set now, else the SDK's default).

    The kubernetes client reads ``KUBECONFIG`` once, at import; a path set later (a test, a
    wrapper script) is passed explicitly, and the namespace comes from that file's current context.
    """
    from kubeflow.common.types import KubernetesBackendConfig
    from kubeflow.trainer import TrainerClient

    env_file = os.environ.get("KUBECONFIG", "")
    if config_file is None and env_file and os.pathsep not in env_file:
        config_file = env_file
    if namespace is None and config_file:
        from kubernetes import config as kube_config

        _, current = kube_config.list_kube_config_contexts(config_file=config_file)
        namespace = (current.get("context") or {}).get("namespace") or "default"
    return TrainerClient(KubernetesBackendConfig(namespace=namespace, config_file=config_file))


def _conditions(client: Any, name: str) -> list[dict[str, Any]]:
    """The TrainJob's status conditions as the API server returns them (reason and message included)."""
    backend = client.backend
    obj = backend.custom_api.get_namespaced_custom_object(GROUP, VERSION, backend.namespace, PLURAL, name)
    return list((obj.get("status") or {}).get("conditions") or [])


def failure_reason(conditions: list[dict[str, Any]]) -> str:
    """``reason: message`` of the Failed condition (or of the last condition that says anything)."""
    failed = [c for c in conditions if c.get("type") == "Failed" and c.get("status") == "True"]
    for c in failed or conditions[::-1]:
        text = ": ".join(str(c[k]) for k in ("reason", "message") if c.get(k))
        if text:
            return text
    return "no reason given"


def launch(
    stage: str,
    config: Any,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
    *,
    runtime: str | None = None,
    namespace: str | None = None,
    image: str | None = None,
    env: list[str] | None = None,
    secret_env: dict[str, str] | None = None,
    kubeconfig: str | None = None,
    poll_interval: float = 10.0,
    timeout: float = 14 * 24 * 3600.0,
) -> dict[str, Any]:
    """Train ``stage`` with ``config`` as a TrainJob and return the stage's result from its manifest.

    ``nodes``, ``gpus_per_node``, ``runtime``, ``namespace``, ``env`` and ``secret_env`` default to the
    config's fields of the same names; ``image`` to the stage's image (distilflow.images). The cluster is
    reached through ``kubeconfig`` (else ``KUBECONFIG``/``~/.kube/config`` outside a pod, in-cluster
    credentials inside one). A finished output of the same config is returned without submitting.

    Raises:
        ConfigError: An ``env`` name is not set here.
        DistilflowError: The TrainJob failed (its reason), timed out, or finished without a complete output.
    """
    from distilflow.images import stage_image

    nodes = nodes if nodes is not None else getattr(config, "nodes", 1)
    gpus = gpus_per_node if gpus_per_node is not None else getattr(config, "gpus_per_node", 0)
    runtime = runtime or getattr(config, "runtime", None) or "torch-distributed"
    namespace = namespace if namespace is not None else getattr(config, "namespace", None)
    plain = node_env(env if env is not None else list(getattr(config, "env", []) or []))
    secrets = secret_env if secret_env is not None else dict(getattr(config, "secret_env", {}) or {})
    clash = sorted(set(plain) & set(secrets))
    if clash:
        raise ConfigError(
            f"{', '.join(clash)} is in both env and secret_env; a secret goes in secret_env only"
        )

    local, config_uri, stored = stage_job(stage, config)
    if stored is not None:
        return stored

    from kubeflow.trainer import CustomTrainerContainer

    client = _client(namespace, kubeconfig)
    options = job_options(stage, config_uri, secrets)
    trainer = CustomTrainerContainer(
        image=image or stage_image(stage),
        num_nodes=nodes,
        resources_per_node={"gpu": gpus} if gpus else None,
        env=plain or None,
    )
    name = client.train(runtime=runtime, trainer=trainer, options=options)
    where = f"{client.backend.namespace}/{name}"
    print(
        f"[{stage}] submitted TrainJob {where}: {nodes} node(s) x {gpus} GPU(s), runtime {runtime}, "
        f"config {config_uri}",
        flush=True,
    )

    follow(stage, client, name, poll_interval, timeout)
    return job_result(stage, local, f"TrainJob {where}")


def job_options(stage: str, config_uri: str, secrets: dict[str, str]) -> list[Any]:
    """The TrainJob's options: every node's command, the stage label, and the secret references
    patched into the node container of the runtime's job template."""
    from kubeflow.trainer.options import (
        ContainerPatch,
        JobSetSpecPatch,
        JobSetTemplatePatch,
        JobSpecPatch,
        JobTemplatePatch,
        Labels,
        PodSpecPatch,
        PodTemplatePatch,
        ReplicatedJobPatch,
        RuntimePatch,
        TrainerCommand,
        TrainingRuntimeSpecPatch,
    )

    options: list[Any] = [
        TrainerCommand(command=job_command(stage, config_uri)),
        Labels(labels={"distilflow.io/stage": stage}),
    ]
    if secrets:
        container = ContainerPatch(name=NODE_CONTAINER, env=secret_refs(secrets))
        pod = PodTemplatePatch(spec=PodSpecPatch(containers=[container]))
        rjob = ReplicatedJobPatch(
            name=NODE_CONTAINER, template=JobTemplatePatch(spec=JobSpecPatch(template=pod))
        )
        spec = TrainingRuntimeSpecPatch(
            template=JobSetTemplatePatch(spec=JobSetSpecPatch(replicated_jobs=[rjob]))
        )
        options.append(RuntimePatch(training_runtime_spec=spec))
    return options


def follow(stage: str, client: Any, name: str, poll_interval: float, timeout: float) -> None:
    """Stream node-0's log once it runs, and wait for the TrainJob to complete.

    Raises:
        DistilflowError: The job failed (its reason) or did not finish within ``timeout`` seconds.
    """
    where = f"{client.backend.namespace}/{name}"
    deadline = time.monotonic() + timeout
    streamed = False
    while True:
        job = client.get_job(name)
        if not streamed and job.status in ("Running", "Complete", "Failed"):
            streamed = True
            try:
                for line in client.get_job_logs(name, step="node-0", follow=job.status == "Running"):
                    print(f"[{stage}][node-0] {line}", flush=True)
            except RuntimeError as exc:  # a broken log stream does not decide the job's outcome
                print(f"[{stage}] node-0's log stream ended early ({exc}); waiting for the job", flush=True)
            continue  # the log ends when node-0 does: read the status again at once
        if job.status == "Complete":
            break
        if job.status == "Failed":
            raise DistilflowError(
                f"{stage}: TrainJob {where} failed: {failure_reason(_conditions(client, name))}. The nodes' logs "
                f"say why (kubectl logs -n {client.backend.namespace} -l jobset.sigs.k8s.io/jobset-name={name}); "
                "a rerun resumes from the newest complete checkpoint"
            )
        if time.monotonic() > deadline:
            raise DistilflowError(
                f"{stage}: TrainJob {where} did not finish within {timeout:.0f} s (status {job.status})"
            )
        time.sleep(poll_interval)
