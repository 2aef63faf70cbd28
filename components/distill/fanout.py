"""Teacher generation fanned out over shards: ``dsl.ParallelFor`` over ``distill``, then ``distill_merge``.

``sharded(num_shards)`` builds a pipeline (or a sub-pipeline to call inside a larger one) whose
shards run side by side, each resuming on its own and sharing one teacher cache, and whose merge
refuses to run on an incomplete shard. The shard count is fixed when the pipeline is built, as
``ParallelFor`` needs a list of items at compile time.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's types at decoration time.
from typing import Any

from kfp import dsl

from distilflow.components.distill.component import distill, distill_merge


def sharded(num_shards: int, parallelism: int = 0) -> Any:
    """A pipeline ``(output_uri, config) -> traces`` answering ``num_shards`` shards at most
    ``parallelism`` at a time (0: all at once)."""
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be at least 1")

    @dsl.pipeline(
        name=f"distill-{num_shards}-shards",
        description=f"Teacher generation over {num_shards} shards of the problems, merged.",
    )
    def pipeline(output_uri: str, config: dict) -> dsl.Dataset:
        # One distill per shard, side by side; each resumes from its own shards and the shared cache.
        with dsl.ParallelFor(items=list(range(num_shards)), parallelism=parallelism) as index:
            shard_task = distill(
                config=config, output_uri=output_uri, shard_index=index, num_shards=num_shards
            )
            shard_task.set_display_name("distill shard")
            shard_task.set_caching_options(False)
        # Join the shards in order; fails naming any shard without its completion marker.
        merge_task = distill_merge(output_uri=output_uri, num_shards=num_shards).after(shard_task)
        merge_task.set_display_name("distill merge")
        merge_task.set_caching_options(False)
        return merge_task.outputs["traces"]

    return pipeline
