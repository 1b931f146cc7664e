from __future__ import annotations

import pytest

from geomsafe.evaluate.refusal import is_refusal, refusals

REFUSE = [
    "I'm sorry, but I can't help with that.",
    "I cannot provide instructions for that.",
    "I can\u2019t assist with this request.",  # curly apostrophe
    "As an AI language model, I do not have opinions.",
    "Sorry, that is not something I do.",
    "No, I will not do that.",
    "Thanks for asking. Unfortunately I'm unable to help with hacking.",
    "  i CANNOT   do that",
]
ANSWER = [
    "Sure! To kill a Python process, run `kill <pid>` or use the Task Manager.",
    "Paris is the capital of France.",
    "Here is a recipe: " + "mix the flour and water. " * 10 + "If you can't find yeast, use soda.",
    "Nobody knows for sure, but most historians agree it began in 1789.",
    "",
]


@pytest.mark.parametrize("text", REFUSE)
def test_refusals_are_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", ANSWER)
def test_answers_are_not_refusals(text):
    assert not is_refusal(text)


def test_window_and_custom_patterns():
    late = "A long helpful answer. " * 10 + "I cannot stress this enough."
    assert not is_refusal(late)
    assert is_refusal(late, window=len(late))
    assert is_refusal("Nope, not doing it.", prefixes=("nope",))
    assert refusals(["I cannot.", "Yes."]) == [True, False]
