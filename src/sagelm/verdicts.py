"""Verdicts: reading them from the judge's text, and mapping a swapped judgment back.

The judge writes the verdict alone on its first line. `parse_verdict` reads that line only:

    >>> parse_verdict("2\\nResponse 2 is more helpful ...")
    '2'
    >>> parse_verdict("Tie\\nBoth responses are correct ...")
    'Tie'
    >>> parse_verdict("  tie.  \\n...")      # case, surrounding space and a final period are forgiven
    'Tie'
    >>> parse_verdict("**1**")               # so is markdown emphasis
    '1'
    >>> parse_verdict("12\\n") is None        # not a verdict: no first-character guessing
    True
    >>> parse_verdict("Response 1 is better") is None
    True
    >>> parse_verdict("") is None
    True

A text with no verdict gives None: that is neither a Tie nor a loss, and scoring counts it apart.
"""

from __future__ import annotations

import re
from typing import Literal

Verdict = Literal["1", "2", "Tie"]
VERDICTS: tuple[Verdict, ...] = ("1", "2", "Tie")

_FIRST_LINE_RE = re.compile(r"^\s*[*_`]*\s*(1|2|tie)\s*[*_`]*\s*\.?\s*$", re.IGNORECASE)


def parse_verdict(text: str | None) -> Verdict | None:
    """The verdict on the first line of `text`, or None when that line holds none."""
    if not text:
        return None
    if text[1:2] == "\n" and text[0] in "12":  # the judge's own form, "1\n..." / "2\n...": no regex needed
        return text[0]  # type: ignore[return-value]
    if text.startswith("Tie\n"):
        return "Tie"
    first = text.split("\n", 1)[0]
    m = _FIRST_LINE_RE.match(first)
    if m is None:
        return None
    v = m.group(1)
    return "Tie" if v.lower() == "tie" else v  # type: ignore[return-value]


def split_rationale(text: str | None) -> str | None:
    """The rationale under the verdict line, or None when the text has no second line.

    >>> split_rationale("2\\nResponse 2 is more helpful.\\n")
    'Response 2 is more helpful.'
    >>> split_rationale("1") is None
    True
    """
    if not text or "\n" not in text:
        return None
    return text.split("\n", 1)[1].strip()


def swap_verdict(verdict: Verdict | None) -> Verdict | None:
    """The verdict in the other numbering: a judgment of (B, A) said about (A, B)."""
    return {"1": "2", "2": "1"}.get(verdict, verdict) if verdict else None  # type: ignore[return-value]


def swap_probabilities(probs: dict[str, float] | None) -> dict[str, float] | None:
    if probs is None:
        return None
    return {"1": probs["2"], "2": probs["1"], "Tie": probs["Tie"]}


def label_of(output: str | None) -> Verdict | None:
    """The reference label of a released row's `output` ("2\\nResponse 2 ..."), or None."""
    return parse_verdict(output)
