import doctest

import pytest

import sagelm.verdicts as verdicts
from sagelm.verdicts import parse_verdict, swap_probabilities, swap_verdict


def test_docstring_examples():
    assert doctest.testmod(verdicts).failed == 0


@pytest.mark.parametrize(
    "text,expected",
    [
        ("1\nResponse 1 is better", "1"),
        ("2", "2"),
        ("Tie\nBoth are fine", "Tie"),
        ("TIE", "Tie"),
        (" 2 \nbecause", "2"),
        ("**Tie**\n", "Tie"),
        ("1.\nok", "1"),
        ("12\n", None),
        ("Tied\n", None),
        ("Response 2\n", None),
        ("\n1", None),
        ("", None),
        (None, None),
        ("3\n", None),
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_swap():
    assert [swap_verdict(v) for v in ("1", "2", "Tie", None)] == ["2", "1", "Tie", None]
    assert swap_probabilities({"1": 0.7, "2": 0.2, "Tie": 0.1}) == {"1": 0.2, "2": 0.7, "Tie": 0.1}
