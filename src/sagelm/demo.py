"""The bundled demo: three real pairs of spoken answers (Qwen2.5-Omni vs Kimi-Audio) with human verdicts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sagelm.aspects import SEMANTIC_ASPECTS
from sagelm.data import Pair

DEMO_AUDIO_DIR = Path("..") / "shared" / "data" / "sagelm-release" / "demo_audio"
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


def find_demo_audio(audio_dir: str | Path | None = None) -> Path:
    """The demo audio folder: as given, else ../shared/... from the working directory or this checkout."""
    if audio_dir is not None:
        candidates = [Path(audio_dir)]
    else:
        here = Path(__file__).resolve()
        candidates = [Path.cwd() / DEMO_AUDIO_DIR, *(p / DEMO_AUDIO_DIR for p in here.parents)]
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
