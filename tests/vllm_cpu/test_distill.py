"""distill's offline vLLM teacher (``backend: vllm``) on vLLM's CPU build."""

from __future__ import annotations

import pytest

from tests.vllm_cpu.conftest import job_result

pytestmark = pytest.mark.vllm_cpu


def test_distill_vllm_backend_writes_every_sample(offline):
    from distilflow.records import Trace, read_jsonl

    result = job_result(offline, "distill")
    rows = read_jsonl(result["traces_uri"], Trace)
    assert result["traces"] == len(rows) == 8 and all(0 < r.tokens <= 8 for r in rows)
    assert {(r.problem_id, r.sample) for r in rows} == {(f"p{i}", s) for i in range(1, 5) for s in (0, 1)}
    assert all(
        r.teacher == offline["distill"]["job"]["config"]["teacher"]["model"].rsplit("/", 1)[-1] for r in rows
    )
    # n=2 at temperature 1: the two samples of a problem are two draws, not one answer twice.
    texts = {}
    for r in rows:
        texts.setdefault(r.problem_id, set()).add(r.reasoning + r.content)
    assert sum(len(t) == 2 for t in texts.values()) >= 3
