"""The tiny student of the learning benchmark: a Qwen3-architecture model with random weights and a
tokenizer trained on the synthetic task's texts (``distilflow.tiny``)."""

from __future__ import annotations

from distilflow.prompts import STUDENT_INSTRUCTION
from distilflow.synthetic.tasks import student_corpus

# 2 layers of width 128 with 4 heads and an MLP of 512: wide enough that the single-digit arithmetic
# tables are learnt within the benchmark's budget (width 64 or an MLP of 256 learnt them far slower).
SHAPE = {"hidden": 128, "layers": 2, "heads": 4, "intermediate": 512}


def build_student(out_dir: str, seed: int = 0) -> str:
    """Write the student's folder (weights drawn with ``seed``, tokenizer, chat template) and return it.

    The tokenizer splits digits like Qwen2's and learns the task's words from ``tasks.student_corpus``
    plus the student instruction, so operators and digits are tokens of their own.
    """
    from distilflow.tiny import build_tiny

    corpus = student_corpus() + [STUDENT_INSTRUCTION, "system user assistant"] * 20
    return build_tiny(
        out_dir, arch="qwen3", seed=seed, corpus=corpus, split_digits=True, vocab_size=1024, **SHAPE
    )
