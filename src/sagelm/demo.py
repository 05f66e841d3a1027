"""The bundled demo: three real pairs of spoken answers (Qwen2.5-Omni vs Kimi-Audio) with human verdicts."""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path

from sagelm.aspects import SEMANTIC_ASPECTS
from sagelm.data import Pair

RELEASE_ENV = "SAGELM_RELEASE"  # the released data folder, where it is not found beside the checkout
RELEASE_DIR = Path("shared") / "data" / "sagelm-release"  # beside the checkout, as the project lays it out
RESPONSE_1 = "Qwen2.5-omni-Audio.wav"
RESPONSE_2 = "kimi-Audio.wav"


@dataclass(frozen=True)
class DemoPair:
    id: str
    question: str
    human: dict[str, str]  # aspect -> human verdict (Response 1 = Qwen2.5-Omni, Response 2 = Kimi-Audio)


def _human(helpfulness: str, honesty: str, truthfulness: str, instruction_following: str) -> dict[str, str]:
    return {"helpfulness": helpfulness, "honesty": honesty, "truthfulness": truthfulness,
            "instruction_following": instruction_following}  # fmt: skip


DEMO_PAIRS = (
    DemoPair("16", "Come up with healthy and easy dinner ideas for weeknights.", _human("2", "Tie", "2", "Tie")),
    DemoPair("18", "For a quick and efficient office workout, suggest a short routine.",
             _human("2", "Tie", "Tie", "Tie")),
    DemoPair("53", "How can I create a budget and stick to it for better financial health?",
             _human("Tie", "Tie", "Tie", "Tie")),
)  # fmt: skip


def _origin_checkout(start: Path) -> Path | None:
    """The local checkout this one was cloned from (a CI clone elsewhere still finds the data beside it)."""
    for folder in start.parents:
        config = folder / ".git" / "config"
        if config.is_file():
            parser = configparser.ConfigParser(strict=False)
            try:
                parser.read(config, encoding="utf-8")
                url = parser.get('remote "origin"', "url", fallback="")
            except configparser.Error:
                return None
            origin = Path(url).expanduser()
            return origin if url and origin.is_dir() else None
    return None


def release_candidates() -> list[Path]:
    """Where the released SageLM data may be, in order: $SAGELM_RELEASE; shared/data/sagelm-release beside
    the working directory or this checkout; the same beside the checkout this one was cloned from."""
    here = Path(__file__).resolve()
    out = [Path(os.environ[RELEASE_ENV])] if os.environ.get(RELEASE_ENV) else []
    out += [base.parent / RELEASE_DIR for base in (Path.cwd(), *here.parents)]
    origin = _origin_checkout(here)
    if origin is not None:
        out.append(origin.parent / RELEASE_DIR)
    return out


def find_demo_audio(audio_dir: str | Path | None = None) -> Path:
    """The demo audio folder: as given, else `demo_audio` in the released data (release_candidates)."""
    candidates = [Path(audio_dir)] if audio_dir is not None else [c / "demo_audio" for c in release_candidates()]
    for c in candidates:
        if (c / DEMO_PAIRS[0].id / RESPONSE_1).exists():
            return c
    raise FileNotFoundError(
        f"demo audio not found (looked in {candidates[0]}); pass --audio-dir with the demo_audio folder"
    )


def demo_pairs(audio_dir: Path) -> list[Pair]:
    return [
        Pair(
            id=d.id,
            question=d.question,
            audio_1=str(audio_dir / d.id / RESPONSE_1),
            audio_2=str(audio_dir / d.id / RESPONSE_2),
        )
        for d in DEMO_PAIRS
    ]


def human_verdict(pair_id: str, aspect: str) -> str:
    return next(d.human[aspect] for d in DEMO_PAIRS if d.id == pair_id)


DEMO_ASPECTS = SEMANTIC_ASPECTS
