"""Teachers and judges: who answers chats and how.

- ``config``: ``TeacherConfig`` (backend, model, sampling, endpoint limits);
- ``protocol``: the ``Teacher`` contract, ``Completion``, reasoning splitting, request bodies;
- backends, one module each: ``openai`` (an OpenAI-compatible endpoint through ``endpoint``, the
  async client), ``transformers`` (in-process), ``vllm`` (vLLM offline batch inference in-process);
- ``cache``: the content-addressed cache of answers; ``cached``: ``CachedTeacher``, every call
  through that cache (judges, critics, rewriters).

``make_teacher`` builds the backend a config names (each imported only when used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distilflow.teachers.config import TeacherConfig
    from distilflow.teachers.protocol import Teacher


def make_teacher(config: TeacherConfig) -> Teacher:
    """Build the backend a config names."""
    if config.backend == "openai":
        from distilflow.teachers.openai import OpenAITeacher

        return OpenAITeacher(config)
    if config.backend == "vllm":
        from distilflow.teachers.vllm import VllmTeacher

        return VllmTeacher(config)
    from distilflow.teachers.transformers import TransformersTeacher

    return TransformersTeacher(config)
