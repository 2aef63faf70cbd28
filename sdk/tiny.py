"""Build tiny Qwen2/Qwen3-architecture models offline, in seconds, for tests and the quickstart.

Random weights, a byte-level BPE tokenizer trained on a small built-in corpus, and a Qwen-style
chat template that renders ``reasoning_content`` inside ``<think>...</think>``, honours
``enable_thinking`` and marks assistant tokens with ``{% generation %}`` (for assistant-only loss).

    python -m distilflow.tiny OUT_DIR [--arch qwen3|qwen2] [--kind causal|reward]
"""

from __future__ import annotations

import argparse
import json
import os

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK = ["<think>", "</think>"]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}"
    "{%- if message.get('reasoning_content') -%}"
    "{{- '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' -}}"
    "{%- elif enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{{- message['content'] + '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

CORPUS = [
    "Solve the problem step by step. Put the final answer in \\boxed{}.",
    "Let us think. First compute the sum, then the product. The answer is \\boxed{42}.",
    "What is 3 + 4? We add 3 and 4 to get 7. Final answer: 7",
    "If x + 2 = 5 then x = 3. Therefore the answer is 3.",
    "A train travels 60 miles in 1.5 hours. Its speed is 40 miles per hour.",
    "The derivative of x^2 is 2x. The integral of 2x is x^2 + C.",
    "Reasoning verbosity and cognitive difficulty are scored from 0 to 9.",
    "system user assistant The quick brown fox jumps over the lazy dog.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \"",
    "def solve(n):\n    return sum(range(n))\n",
] * 20

# Qwen2's pre-tokenizer pattern (tokenizer.json of Qwen/Qwen2.5-*): words, single digits, punctuation runs,
# newlines and spaces. Digits never merge, so every number is a sequence of digit tokens.
QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
    r"""\s+(?!\S)|\s+"""
)


def train_tokenizer(
    out_dir: str, vocab_size: int = 512, corpus: list[str] | None = None, split_digits: bool = False
):
    """Train and save a byte-level BPE tokenizer with Qwen's special tokens and chat template.

    ``corpus`` replaces the built-in texts (e.g. a synthetic task's, so its words are single tokens);
    ``split_digits`` pre-splits text the way Qwen2's tokenizer does, one token per digit.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS if corpus is None else corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    fast.add_tokens(THINK)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_tiny(
    out_dir: str,
    arch: str = "qwen3",
    kind: str = "causal",
    seed: int = 0,
    hidden: int = 64,
    *,
    layers: int = 2,
    heads: int = 2,
    intermediate: int | None = None,
    corpus: list[str] | None = None,
    split_digits: bool = False,
    vocab_size: int = 512,
    sharpness: float = 1.0,
) -> str:
    """Write a tiny model folder (config, safetensors, tokenizer, chat template) and return its path.

    The defaults make the fixture the tests use (2 layers, 2 heads of 32, MLP 2 x hidden, the built-in
    corpus). ``heads`` attention heads of 32 dimensions share ``heads // 2`` key/value heads (at least
    one); ``intermediate`` is the MLP width (default 2 x hidden); ``corpus``, ``split_digits`` and
    ``vocab_size`` go to ``train_tokenizer``. ``sharpness`` scales the (tied) embedding matrix: random
    weights give a nearly uniform next-token distribution, and a factor of 10-30 makes it peaked like a
    trained model's (a teacher with something to distil: most mass on a few tokens, a long tail).
    """
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        Qwen2Config,
        Qwen3Config,
    )

    if arch not in ("qwen2", "qwen3") or kind not in ("causal", "reward"):
        raise ValueError(f"arch must be qwen2|qwen3 and kind causal|reward, got {arch!r}/{kind!r}")
    os.makedirs(out_dir, exist_ok=True)
    tok = train_tokenizer(out_dir, vocab_size, corpus, split_digits)
    torch.manual_seed(seed)
    cls = Qwen3Config if arch == "qwen3" else Qwen2Config
    config = cls(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=32,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        num_labels=1,
    )
    auto = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    model = auto.from_config(config)
    if sharpness != 1.0:
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(sharpness)
    model.save_pretrained(out_dir)
    if kind == "causal":
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "distilflow_tiny.json"), "w") as f:
        meta = {"arch": arch, "kind": kind, "seed": seed, "hidden": hidden, "layers": layers, "heads": heads}
        json.dump(meta | {"sharpness": sharpness}, f)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--arch", default="qwen3", choices=["qwen2", "qwen3"])
    parser.add_argument("--kind", default="causal", choices=["causal", "reward"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny(args.out_dir, args.arch, args.kind, args.seed))


if __name__ == "__main__":
    main()
