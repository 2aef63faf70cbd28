"""Final-answer extraction and checking (math-verify for math, letters for multiple choice)."""

from __future__ import annotations

import pytest

from distilflow.answers import checker, extract_answer, is_correct, last_boxed, normalise, strip_thinking

pytestmark = pytest.mark.unit

# --- extraction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"first \boxed{1}, then \boxed{\frac{\sqrt{2}}{2}} at last", r"\frac{\sqrt{2}}{2}"),
        (r"\boxed{ \{1, 2\} }", r"\{1, 2\}"),
        (r"\boxed{x^{2^{3}}}", "x^{2^{3}}"),
        ("The total is 12 apples.", "12"),
        ("x = -3.5 or x = 7/2", "7/2"),
        ("no number here", None),
        (r"unbalanced \boxed{3", "3"),  # no balanced box: falls back to the last number
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_thinking_is_stripped_before_extraction():
    assert strip_thinking("<think>try 5</think>The answer is 12.") == "The answer is 12."
    assert extract_answer(r"<think>maybe \boxed{3}? or 9</think>The total is 12.") == "12"
    assert extract_answer(r"<think>\boxed{3}</think>\boxed{4}") == "4"
    # a thinking block with nothing after it states no answer
    assert extract_answer(r"<think>\boxed{3}</think>") is None
    assert strip_thinking("no tags") == "no tags"


def test_last_boxed():
    assert last_boxed(r"\boxed{a} \boxed{b{c}}") == "b{c}"
    assert last_boxed("nothing") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (C).", "C"),
        ("answer: b", "B"),
        ("I considered A and B. Answer: D", "D"),
        (r"<think>the answer is A</think> The answer is B", "B"),
        (r"\boxed{C}", "C"),
        ("I cannot decide", None),
    ],
)
def test_extract_multiple_choice_letter(text, expected):
    assert extract_answer(text, "multiple_choice") == expected


def test_normalise():
    assert normalise(r" $\text{Paris}$ ") == "paris"
    assert normalise("42.") == "42"
    assert normalise(r"1\!000") == "1000"


# --- checking --------------------------------------------------------------------------------


def test_checker_is_math_verify():
    assert checker() == "math-verify"  # installed here; without it fractions would not match decimals


@pytest.mark.parametrize(
    ("response", "reference"),
    [
        (r"\boxed{0.5}", "1/2"),
        (r"\boxed{\frac{1}{2}}", "0.5"),
        ("1/2", "0.5"),
        (r"\boxed{\frac{2}{4}}", r"\frac{1}{2}"),
        ("12", "12.0"),
        (r"<think>hmm</think> The answer is \boxed{7}.", "7"),
        (r"\boxed{\text{Paris}}", "paris"),
        (r"\boxed{x = 2}", "2"),
    ],
)
def test_is_correct_true(response, reference):
    assert is_correct(response, reference) is True


@pytest.mark.parametrize(
    ("response", "reference"),
    [
        (r"\boxed{3}", "4"),
        (r"\boxed{\frac{1}{3}}", "0.5"),
        ("0.3333", "1/3"),
        ("", "1"),
        (r"<think>\boxed{7}</think>", "7"),  # the answer only inside thinking does not count
        ("no answer at all", "7"),
    ],
)
def test_is_correct_false(response, reference):
    assert is_correct(response, reference) is False


def test_is_correct_multiple_choice():
    assert is_correct("The answer is (C)", "C", "multiple_choice") is True
    assert is_correct("The answer is (C)", "c", "multiple_choice") is True
    assert is_correct(r"\boxed{B}", "B", "multiple_choice") is True
    assert is_correct("The answer is (C)", "D", "multiple_choice") is False
    assert is_correct("I am not sure", "A", "multiple_choice") is False


# --- formerly known bugs in sdk/answers.py (fixed; kept as regression tests) -------------------


def test_bare_letter_response_is_correct():
    assert is_correct("B", "B", "multiple_choice") is True
    assert is_correct("(b).", "B", "multiple_choice") is True


def test_unboxed_latex_fraction():
    assert extract_answer(r"\frac{1}{2}") == r"\frac{1}{2}"
    assert extract_answer(r"so x = \dfrac{3}{4}") == r"\dfrac{3}{4}"
    assert extract_answer(r"x = \frac{3}{4} for 5 apples") == "5"  # a number after it still wins


def test_article_a_is_not_a_choice():
    assert extract_answer("The answer is a prime number", "multiple_choice") is None
    assert extract_answer("The answer is a.", "multiple_choice") == "A"


# --- math-verify equivalences the benchmarks rely on -----------------------------------------


@pytest.mark.parametrize(
    ("response", "reference"),
    [
        (r"\boxed{25}", "025"),  # AIME answers are written with leading zeros
        (r"\boxed{[2, 5)}", "[2,5)"),  # intervals
        (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)"),  # tuples, \left/\right
        (r"\boxed{\dfrac{14}{3}}", r"\frac{14}{3}"),
        (r"\boxed{4\sqrt{2}}", r"\sqrt{32}"),
        (r"\boxed{26,000}", "26000"),
    ],
)
def test_math_verify_equivalences(response, reference):
    assert is_correct(response, reference, "math") is True


@pytest.mark.parametrize(
    ("response", "reference"),
    [(r"\boxed{[2, 5]}", "[2,5)"), (r"\boxed{(3, \pi)}", r"\left( 3, \frac{\pi}{2} \right)")],
)
def test_math_verify_tells_close_answers_apart(response, reference):
    assert is_correct(response, reference, "math") is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Reasoning...\nAnswer: $C$", "C"),  # the simple-evals GPQA format
        ("**Answer:** B", "B"),
        ("The correct option is (D).", "D"),
        ("so it must be the last one.\n\n**(C)**", "C"),
        ("<think>Answer: A</think>After checking, ANSWER: B", "B"),
    ],
)
def test_final_letter_variants(text, expected):
    assert extract_answer(text, "multiple_choice") == expected


def test_extract_code_takes_the_last_python_block_after_thinking():
    from distilflow.answers import extract_code

    text = "<think>```python\nprint('draft')\n```</think>Try:\n```python\nprint(1)\n```\nFinal:\n```python\nprint(2)\n```"
    assert extract_code(text) == "print(2)"
    assert extract_code("```\nx = 1\n```") == "x = 1"
    assert extract_code("```text\nnot code\n```\n```py\ny = 2\n```") == "y = 2"
    assert extract_code("no fences") is None
    assert extract_code("```python\nunfinished") is None
