"""Launchers: run a training stage elsewhere than in this process and return the result it wrote.

- ``torchrun``: on this node, one process per GPU (the stage starts itself under torchrun);
- ``trainjob``: on many nodes, a Kubeflow Trainer ``TrainJob`` (the ``kubeflow`` SDK);
- ``dlc``: on many nodes, an Alibaba Cloud PAI-DLC job; ``aliyun`` holds the Alibaba Cloud API
  settings it shares with the deploy stage's PAI-EAS target.

Each ``launch(stage, config)`` returns the result the stage wrote to ``config.output_uri``;
``dispatch`` picks the job launcher a config's ``launcher`` names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distilflow.training.fields import LauncherFields


def dispatch(stage: str, config: LauncherFields) -> dict[str, Any] | None:
    """The stage's result when ``config.launcher`` runs it elsewhere (trainjob, dlc), else None.

    The launcher module is imported only when used; it submits a job whose nodes run the same stage
    with ``launcher: local`` and returns the result the job wrote to ``config.output_uri``.
    """
    launcher = config.launcher
    if launcher == "trainjob":  # many nodes: a Kubeflow TrainJob trains, this process waits
        from distilflow.launch import trainjob

        return trainjob.launch(stage, config)
    if launcher == "dlc":  # many nodes on Alibaba Cloud PAI-DLC
        from distilflow.launch import dlc

        return dlc.launch(stage, config)
    return None
