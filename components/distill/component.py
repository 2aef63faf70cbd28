"""The ``distill`` KFP component: a shell around ``distilflow.components.distill.run.run``."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.
from kfp import dsl

from distilflow.images import stage_image


@dsl.component(base_image=stage_image("distill"), install_kfp_package=False)
def distill(config: dict, output_uri: str, traces: dsl.Output[dsl.Dataset]):
    """Have the teacher answer every problem with chains of thought.

    Args:
        config: The whole pipeline config; this stage reads its ``distill`` section
            (problems_uri, teacher, n, prompt, ...).
        output_uri: Root folder or URI of the run; this stage writes under ``<output_uri>/distill``.
        traces: Output dataset; its metadata carries the URI of the distill output folder.
    """
    from distilflow import artifacts, uri
    from distilflow.components.distill.config import DistillConfig
    from distilflow.components.distill.run import run

    section = artifacts.section(config, "distill")
    section["output_uri"] = uri.join(output_uri, "distill")
    result = run(DistillConfig.from_dict(section, where="config section 'distill'"))
    artifacts.publish(
        traces, uri=section["output_uri"], stage_uri=section["output_uri"], traces=result.traces
    )
