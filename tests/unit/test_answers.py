from __future__ import annotations

import pytest

from strategies.shared.answers import answers_equal, extract_answer, normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the total is \\boxed{1,800}.", "1800"),
        ("\\boxed{\\frac{1}{2}} then \\boxed{42}", "42"),
        ("work...\n#### 72", "72"),
        ("The answer is $18.00.", "18"),
        ("**Answer:** 12 apples", "12"),
        ("Final answer: (b)", "B"),
        ("She has 3 cats and then 5 dogs", "5"),
        ("The answer is 4/2.", "2"),
        ("The answer is 0.250", "0.25"),
        ("The answer is -7.", "-7"),
        ("no numbers here", None),
    ],
)
def test_extracts_the_stated_final_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_explicit_answer_beats_a_later_number() -> None:
    assert extract_answer("The answer is 10.\nCheck: 10 - 3 = 7") == "10"


def test_equivalent_spellings_share_one_vote_key() -> None:
    keys = {normalize_answer(x) for x in ["18", "18.0", "$18", "18.00", " 18 ", "18 dollars"]}
    assert keys == {"18"}


def test_grading_equivalence() -> None:
    assert answers_equal("1,800", "1800")
    assert answers_equal("0.5", "1/2")
    assert not answers_equal("18", "19")
    assert not answers_equal(None, "1")
