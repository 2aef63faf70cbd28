#!/usr/bin/env python
"""Build every tiny model fixture offline, in seconds: Qwen2 and Qwen3 causal LMs and a Qwen3
reward model (sequence classification, one label), each with a locally trained tokenizer and a
chat template that renders <think> blocks.

    python scripts/build_tiny_models.py OUT_DIR
"""

import sys

from distilflow.tiny import build_tiny


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "tiny-models"
    for arch, kind in (("qwen2", "causal"), ("qwen3", "causal"), ("qwen3", "reward")):
        print(build_tiny(f"{out}/{arch}-{kind}", arch=arch, kind=kind))


if __name__ == "__main__":
    main()
