"""Workarounds that let kfp 2.17's local runner (``kfp.local``) run distilflow's pipelines: both patch
kfp.local in this process only, once, and leave a KFP cluster's behaviour alone."""

from __future__ import annotations

from typing import Any


def keep_executor_args_intact() -> None:
    """Work around kfp 2.17's SubprocessRunner rewriting 'python3' inside executor arguments.

    ``replace_python_executable`` substitutes ``sys.executable`` for every 'python3' in the whole
    command line, including the executor input JSON, so a path such as
    ``.../lib/python3.11/site-packages/...`` or ``runs/python3-test`` reaches the component
    corrupted (kubeflow/pipelines PR #14459, open). Keep the substitution in the bootstrap
    commands only.
    """
    from kfp.local import subprocess_task_handler as handler

    original = handler.replace_python_executable
    if getattr(original, "_distilflow_patched", False):
        return

    def replace(full_command: list[str], new_executable: str) -> list[str]:
        replaced = original(full_command, new_executable)
        boundary = next(
            (
                i
                for i, el in enumerate(full_command)
                if '"$program_path/ephemeral_component.py"' in el and '"$@"' in el
            ),
            None,
        )
        if boundary is None:
            return replaced
        # The component source and every executor argument after it stay exactly as compiled.
        return replaced[: boundary + 1] + list(full_command[boundary + 1 :])

    replace._distilflow_patched = True  # type: ignore[attr-defined]
    handler.replace_python_executable = replace


def resolve_oneof_artifacts() -> None:
    """Let kfp 2.17's local orchestrator resolve ``dsl.OneOf`` over artifacts, as it already does over
    parameters: a DAG output fed by several conditional branches takes the one branch that produced it
    (``lifecycle``'s model after its optional dpo / rl). kfp.local otherwise stops with "Expected 1
    artifact in ArtifactSelectorSpec"; a KFP cluster resolves it itself."""
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils
    from kfp.pipeline_spec import pipeline_spec_pb2

    original = OrchestratorUtils.get_dag_output_artifacts
    if getattr(original, "_distilflow_patched", False):
        return

    def get_dag_output_artifacts(dag_outputs_spec: Any, io_store: Any) -> dict[str, Any]:
        plain = pipeline_spec_pb2.DagOutputsSpec()
        chosen = {}
        for key, spec in dag_outputs_spec.artifacts.items():
            if len(spec.artifact_selectors) <= 1:
                plain.artifacts[key].CopyFrom(spec)
                continue
            produced = []
            for selector in spec.artifact_selectors:
                try:
                    produced.append(
                        io_store.get_task_output(selector.producer_subtask, selector.output_artifact_key)
                    )
                except (KeyError, ValueError):  # that branch did not run
                    continue
            if len(produced) != 1:
                raise ValueError(
                    f"dsl.OneOf output {key!r}: {len(produced)} branches produced it, expected 1"
                )
            chosen[key] = produced[0]
        return {**original(plain, io_store), **chosen}

    get_dag_output_artifacts._distilflow_patched = True  # type: ignore[attr-defined]
    OrchestratorUtils.get_dag_output_artifacts = staticmethod(get_dag_output_artifacts)


def install() -> None:
    """Apply both workarounds (idempotent)."""
    keep_executor_args_intact()
    resolve_oneof_artifacts()
