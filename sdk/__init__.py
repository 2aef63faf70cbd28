"""distilflow: DistilQwen-style reasoning distillation as Kubeflow Pipelines stages.

Importing this package is cheap: it never imports torch, transformers, trl, vllm or
deepspeed. Those load inside the stages' ``run`` functions.
"""

from distilflow import noise as _noise

__version__ = "0.1.0"

__all__ = ["__version__"]

_noise.install()  # third-party warnings that do not matter here stay off the terminal
