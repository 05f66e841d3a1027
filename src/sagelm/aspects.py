"""The aspects SageLM was trained to judge, exactly as they appear in its prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["semantic", "acoustic"]


@dataclass(frozen=True)
class Aspect:
    name: str  # the exact `{ASPECT}` string of the prompt
    kind: Kind
    group: str  # the scoring group (metrics.md)


ASPECTS: dict[str, Aspect] = {
    a.name: a
    for a in (
        # Stage 1: UltraFeedback's four aspects.
        Aspect("helpfulness", "semantic", "helpfulness"),
        Aspect("honesty", "semantic", "honesty"),
        Aspect("instruction_following", "semantic", "instruction_following"),
        Aspect("truthfulness", "semantic", "truthfulness"),
        # Stage 2: the voice requirement is part of the instruction text.
        Aspect("emotion instruction following", "acoustic", "emotion"),
        Aspect("gender instruction following", "acoustic", "gender"),
        Aspect("character instruction following", "acoustic", "character"),
        Aspect("gender instruction following and emotion instruction following", "acoustic", "mixed"),
    )
}

SEMANTIC_ASPECTS: tuple[str, ...] = tuple(n for n, a in ASPECTS.items() if a.kind == "semantic")
ACOUSTIC_ASPECTS: tuple[str, ...] = tuple(n for n, a in ASPECTS.items() if a.kind == "acoustic")

# Short names users may type on the command line.
_ALIASES = {
    "emotion": "emotion instruction following",
    "gender": "gender instruction following",
    "character": "character instruction following",
    "mixed": "gender instruction following and emotion instruction following",
    "instruction-following": "instruction_following",
}


class UnknownAspectError(ValueError):
    pass


def get_aspect(name: str) -> Aspect:
    """The registered aspect called `name` (exact prompt string or a short alias)."""
    key = _ALIASES.get(name, name)
    try:
        return ASPECTS[key]
    except KeyError:
        known = ", ".join(repr(n) for n in ASPECTS)
        raise UnknownAspectError(f"unknown aspect {name!r}; known aspects: {known}") from None
