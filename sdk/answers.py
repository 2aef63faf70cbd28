"""Final-answer extraction and checking, shared by curate, rl and evaluate.

Math answers are compared with math-verify (Hugging Face), which understands boxed answers,
fractions, intervals and LaTeX; multiple-choice answers by their final letter; code is pulled out
of the last fenced block (``extract_code``) and run against tests by ``distilflow.sandbox``;
anything else by a normalised string. Without math-verify installed, math falls back to the
normalised string and ``checker()`` says so.
"""

from __future__ import annotations

import re
import threading

THINK_END = "</think>"
BOXED = "\\boxed"
# "answer is (c)", "answer: D", "answer: b" -- but not the article in "the answer is a prime":
# a bare lower-case letter counts only when punctuation or the end of the text follows it.
CHOICE_RE = re.compile(
    r"(?i:answer|choice|option)[*_\s]*(?i:is|:)?[*_\s:]*(?:\$|\\text\{|\\mathrm\{)?\s*"
    r"(?:\(([A-Ja-j])\)|([A-J])\b|([a-j])(?=\s*(?:[.,;:!?)*}$]|$)))"
)
# A whole reply that is just a letter: "B", "(B)", "B."
BARE_CHOICE_RE = re.compile(r"^\s*\(?([A-Ja-j])\)?\s*\.?\s*$")
# The last line is only a letter, e.g. "**(C)**" after the reasoning.
LAST_LINE_CHOICE_RE = re.compile(r"^[\s*_]*\(?([A-J])\)?[\s*_.]*$")
CODE_BLOCK_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
NUMBER_RE = re.compile(r"-?\d+(?:[.,/]\d+)*")
FRAC_RE = re.compile(r"-?\\[dt]?frac\{[^{}]*\}\{[^{}]*\}")


def strip_thinking(text: str) -> str:
    """Drop a leading ``<think>...</think>`` block (the answer is what follows it)."""
    if THINK_END in text:
        return text.rsplit(THINK_END, 1)[1]
    return text


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    start = text.rfind(BOXED + "{")
    if start < 0:
        return None
    i = start + len(BOXED) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def extract_answer(text: str, domain: str | None = None) -> str | None:
    """The final answer a response states: boxed, else a chosen letter (multiple choice), else the last number."""
    body = strip_thinking(text)
    boxed = last_boxed(body)
    if boxed is not None:
        return boxed
    if domain == "multiple_choice":
        bare = BARE_CHOICE_RE.match(body)
        if bare:
            return bare.group(1).upper()
        found = CHOICE_RE.findall(body)
        if found:
            return "".join(found[-1]).upper()
        lines = [ln for ln in body.strip().splitlines() if ln.strip()]
        last = LAST_LINE_CHOICE_RE.match(lines[-1]) if lines else None
        return last.group(1) if last else None
    numbers = list(NUMBER_RE.finditer(body))
    fractions = list(FRAC_RE.finditer(body))
    # An unboxed LaTeX fraction is one answer, not its last digit: take it when it ends last.
    if fractions and (not numbers or fractions[-1].end() >= numbers[-1].end()):
        return fractions[-1].group(0)
    return numbers[-1].group(0) if numbers else None


def normalise(answer: str) -> str:
    text = answer.strip().strip("$").strip()
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = text.replace("\\!", "").replace(" ", "").rstrip(".").lower()
    return text


def math_verify_available() -> bool:
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return False
    return True


def is_correct(response: str, reference: str, domain: str | None = None) -> bool:
    """Whether ``response`` (a full reply or an answer) states ``reference``."""
    predicted = extract_answer(response, domain)
    if predicted is None:
        return False
    if domain == "multiple_choice":
        return predicted.upper() == reference.strip().upper()
    if normalise(predicted) == normalise(reference):
        return True
    if not math_verify_available():
        return False
    from math_verify import parse, verify

    # math-verify's timeouts use SIGALRM, which only works in the main thread; off it (a thread
    # pool, a server handler) parse/verify raise, so they run without a timeout there.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse("$" + reference + "$", parsing_timeout=timeout)
        pred = parse("$" + predicted + "$", parsing_timeout=timeout)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=timeout))
    except Exception:  # math-verify raises on exotic inputs; an unverifiable answer is not correct
        return False


def checker() -> str:
    return "math-verify" if math_verify_available() else "normalised-string"


def extract_code(text: str, language: str = "python") -> str | None:
    """The program a response gives: its last fenced block in ``language`` (or untagged), thinking stripped.

    A block tagged with another language is taken only when no block fits; an unclosed final
    fence (the answer hit max tokens) yields nothing.
    """
    body = strip_thinking(text)
    blocks = CODE_BLOCK_RE.findall(body)
    if not blocks:
        return None
    lang = language.lower()
    preferred = [code for tag, code in blocks if tag.lower() in (lang, "py" if lang == "python" else lang)]
    untagged = [code for tag, code in blocks if not tag]
    chosen = (preferred or untagged or [code for _, code in blocks])[-1]
    return chosen.strip("\n") or None
