"""The aspects SageLM was trained to judge, exactly as they appear in its prompt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sagelm.errors import SagelmError

Kind = Literal["semantic", "acoustic", "custom"]


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


class UnknownAspectError(SagelmError, ValueError):
    pass


class AspectsFileError(UnknownAspectError):
    """A checkpoint's sagelm_aspects.json that cannot be read (the message names it)."""


def get_aspect(name: str) -> Aspect:
    """The registered aspect called `name` (exact prompt string or a short alias)."""
    key = _ALIASES.get(name, name)
    try:
        return ASPECTS[key]
    except KeyError:
        known = ", ".join(repr(n) for n in ASPECTS)
        raise UnknownAspectError(f"unknown aspect {name!r}; known aspects: {known}") from None


# -- new aspects: a judge trained on aspects of its own (training's `new_aspects`) -----------------------------------
ASPECTS_FILE = "sagelm_aspects.json"  # beside a trained checkpoint: the new aspects it was trained on


def register_aspect(name: str) -> Aspect:
    """Add `name` as an aspect (its exact prompt string; its scoring group is the name itself)."""
    if name in ASPECTS:
        return ASPECTS[name]
    if not name.strip() or name != name.strip() or "**" in name or "\n" in name:
        raise UnknownAspectError(f"new aspect {name!r}: needs text without '**', newlines or surrounding space")
    ASPECTS[name] = Aspect(name, "custom", name)
    return ASPECTS[name]


def save_aspects(folder: str | Path, names: list[str]) -> None:
    if names:
        Path(folder, ASPECTS_FILE).write_text(json.dumps({"new_aspects": names}, indent=2) + "\n", encoding="utf-8")


def load_aspects(folder: str | Path) -> list[str]:
    """Register the new aspects a checkpoint folder was trained on (none when it has no ASPECTS_FILE)."""
    path = Path(folder, ASPECTS_FILE)
    if not path.is_file():
        return []
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AspectsFileError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    names = saved.get("new_aspects", []) if isinstance(saved, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise AspectsFileError(f'{path}: expected {{"new_aspects": [aspect names]}}')
    for n in names:
        try:
            register_aspect(n)
        except UnknownAspectError as e:
            raise AspectsFileError(f"{path}: {e}") from None
    return names
