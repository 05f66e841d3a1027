"""A small synthetic judge dataset for "gender instruction following", spoken by espeak-ng voices.

Each item asks for a male or a female voice and gives two readings of the same text (a "TTS" item, as in
SageLM's acoustic data). The better response is the one in the requested voice; when both or neither are,
it is a Tie. Rationales follow SageLM's style ("The Instruction requires using woman's voice. Response 1
uses woman's voice, Response 2 uses man's voice."). Voices and sentences of the held-out split never occur
in the training split, so a judge scored on it must have learned to hear the voice, not to remember a clip.

The rows are SageLM / LLaMA-Factory JSON (instruction, input, output, audios), so `sagelm train`,
`sagelm judge --data` and `sagelm export llamafactory` read them like the released data.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sagelm.errors import SagelmError
from sagelm.prompts import instruction_prompt
from sagelm.verdicts import Verdict

logger = logging.getLogger(__name__)

Gender = Literal["male", "female"]
ASPECT = "gender instruction following"
ESPEAK = "espeak-ng"

# espeak-ng voice variants whose files declare the gender (espeak-ng-data/voices/!v).
MALE_VOICES = ("m1", "m2", "m3", "m4", "m6", "m7", "m8", "Andy", "Denis", "Diogo", "Hugo", "antonio", "michel",
               "miguel", "sandro", "travis", "victor", "Lee", "Henrique")  # fmt: skip
FEMALE_VOICES = ("f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "anika", "belinda", "linda", "steph", "steph3")
HELD_OUT_VOICES = ("m7", "victor", "Henrique", "f4", "Andrea", "steph3")
BASE_VOICES = ("en-us", "en")  # the language voice the variant is applied to

SENTENCES = (
    "The weather is lovely today.", "Please close the door behind you.", "I will call you after lunch.",
    "The train leaves at seven.", "Water boils at one hundred degrees.", "She planted roses in the garden.",
    "Turn left at the next corner.", "The museum opens on Monday.", "Our team won the final match.",
    "Bring an umbrella, it may rain.", "This soup needs more salt.", "The library is very quiet.",
    "He fixed the bike in an hour.", "We are out of fresh milk.", "The meeting moved to Friday.",
    "Cats sleep most of the day.", "Read the first chapter tonight.", "The bridge was built in stone.",
    "My phone battery is almost empty.", "Let us walk along the river.", "The bakery sells warm bread.",
    "Keep your receipt for returns.", "The concert starts at eight.", "Snow covered the whole valley.",
    "Add two eggs and stir slowly.", "The printer is out of paper.", "Birds sing early in spring.",
    "Wash your hands before dinner.", "The road is closed for repairs.", "I lost my keys again.",
    "Mountains look blue from far away.", "Send me the file by noon.", "The shop is around the corner.",
    "Tea tastes better with honey.", "The clock on the wall stopped.", "Plant the seeds in moist soil.",
    "The children built a sand castle.", "Our flight was delayed an hour.", "Lemons are sour and bright.",
    "Stars fill the sky at night.", "The old piano still plays well.", "Lock the gate when you leave.",
    "The market is busy on Saturday.", "Drink water after running.", "The lake froze last winter.",
    "Write your name at the top.", "The movie ended too soon.", "Fresh paint dries in a day.",
)  # fmt: skip
HELD_OUT_SENTENCES = SENTENCES[-12:]

QUESTION_TEMPLATES = (
    "{sentence} Read this text with a {gender} voice.",
    "Read this text with a {gender} voice: {sentence}",
    "Say the following with a {gender} voice: {sentence}",
)
SPEAKER = {"male": "man", "female": "woman"}


class SynthError(SagelmError, RuntimeError):
    """Speech cannot be made (espeak-ng missing or failing), or not where asked."""


@dataclass(frozen=True)
class Voice:
    name: str
    gender: Gender


def voices(held_out: bool) -> list[Voice]:
    """The training voices, or the held-out ones."""
    out = [Voice(v, "male") for v in MALE_VOICES] + [Voice(v, "female") for v in FEMALE_VOICES]
    return [v for v in out if (v.name in HELD_OUT_VOICES) == held_out]


def sentences(held_out: bool) -> list[str]:
    return [s for s in SENTENCES if (s in HELD_OUT_SENTENCES) == held_out]


def speak(text: str, voice: str, path: Path, speed: int = 175, pitch: int = 50, base: str = "en-us") -> Path:
    """Say `text` with espeak-ng voice variant `voice` into the wav file `path` (22.05 kHz, as espeak-ng writes)."""
    exe = shutil.which(ESPEAK)
    if exe is None:
        raise SynthError(f"{ESPEAK} not found: install it (Debian/Ubuntu: apt-get install espeak-ng)")
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "-v", f"{base}+{voice}", "-s", str(speed), "-p", str(pitch), "-w", str(path), text]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not path.exists():
        raise SynthError(f"{ESPEAK} failed for voice {voice!r}: {done.stderr.strip() or done.returncode}")
    return path


def rationale(wanted: Gender, first: Gender, second: Gender) -> str:
    return (
        f"The Instruction requires using {SPEAKER[wanted]}'s voice. "
        f"Response 1 uses {SPEAKER[first]}'s voice, Response 2 uses {SPEAKER[second]}'s voice."
    )


def verdict(wanted: Gender, first: Gender, second: Gender) -> Verdict:
    ok1, ok2 = first == wanted, second == wanted
    return "Tie" if ok1 == ok2 else ("1" if ok1 else "2")


def _row(question: str, wanted: Gender, first: tuple[str, Gender], second: tuple[str, Gender]) -> dict:
    return {
        "instruction": instruction_prompt(ASPECT, question),
        "input": "",
        "output": f"{verdict(wanted, first[1], second[1])}\n{rationale(wanted, first[1], second[1])}",
        "audios": [first[0], second[0]],
    }


def _split_rows(
    out: Path, name: str, n_pairs: int, held_out: bool, rng: np.random.Generator, tie_share: float,
    clip: Callable[[str, Voice], str], both_orders: bool,
) -> list[dict]:  # fmt: skip
    pool = voices(held_out)
    by_gender = {g: [v for v in pool if v.gender == g] for g in ("male", "female")}
    texts = sentences(held_out)
    rows = []
    for _ in range(n_pairs):
        sentence = texts[rng.integers(len(texts))]
        wanted: Gender = "male" if rng.random() < 0.5 else "female"
        other: Gender = "female" if wanted == "male" else "male"
        if rng.random() < tie_share:  # both in the wanted voice, or neither
            g1 = g2 = wanted if rng.random() < 0.5 else other
        else:
            g1, g2 = (wanted, other) if rng.random() < 0.5 else (other, wanted)
        v1 = by_gender[g1][rng.integers(len(by_gender[g1]))]
        v2 = by_gender[g2][rng.integers(len(by_gender[g2]))]
        while v2 == v1:
            v2 = by_gender[g2][rng.integers(len(by_gender[g2]))]
        question = QUESTION_TEMPLATES[rng.integers(len(QUESTION_TEMPLATES))].format(sentence=sentence, gender=wanted)
        a, b = (clip(sentence, v1), g1), (clip(sentence, v2), g2)
        rows.append(_row(question, wanted, a, b))
        if both_orders:  # the other order, its rationale written for that order (Response 1 named first)
            rows.append(_row(question, wanted, b, a))
    path = out / f"{name}.json"
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return rows


def check_out(out: str | Path, overwrite: bool = False) -> None:
    """`out` can take a data set: a folder (or none yet) without train.json or heldout.json, unless `overwrite`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out} is a file, not a folder")
    existing = [out / f"{n}.json" for n in ("train", "heldout") if (out / f"{n}.json").exists()]
    if existing and not overwrite:
        raise SynthError(f"{existing[0]} exists; choose another folder, or pass --overwrite to replace it")


def make_gender_set(
    out: str | Path, train_pairs: int = 300, heldout_pairs: int = 100, seed: int = 0, tie_share: float = 0.2,
    train_both_orders: bool = True, on_clip: Callable[[], None] | None = None, overwrite: bool = False,
) -> tuple[Path, Path]:  # fmt: skip
    """Write `train.json` and `heldout.json` (SageLM JSON rows) and their wav files under `out/audio/`.

    With `train_both_orders` each training pair is written in both orders (2 x `train_pairs` rows), each with a
    rationale that names Response 1 first; the held-out pairs are written once (judge them with --both-orders).

    Each (sentence, voice) reading is made once, with a speed and pitch drawn for it, and reused across pairs.
    An existing `train.json` or `heldout.json` in `out` is refused unless `overwrite`. Returns the two data files.
    """
    out = Path(out)
    check_out(out, overwrite)
    rng = np.random.default_rng(seed)
    made: dict[tuple[str, str], str] = {}

    def clip(sentence: str, voice: Voice) -> str:
        key = (sentence, voice.name)
        if key not in made:
            rel = f"audio/s{SENTENCES.index(sentence):02d}-{voice.name}.wav"
            speak(sentence, voice.name, out / rel, speed=int(rng.integers(150, 200)),
                  pitch=int(rng.integers(45, 56)), base=BASE_VOICES[rng.integers(len(BASE_VOICES))])  # fmt: skip
            made[key] = rel
            if on_clip:
                on_clip()
        return made[key]

    _split_rows(out, "train", train_pairs, False, rng, tie_share, clip, train_both_orders)
    _split_rows(out, "heldout", heldout_pairs, True, rng, tie_share, clip, False)
    logger.info("%s: %d train pairs, %d held-out pairs, %d clips", out, train_pairs, heldout_pairs, len(made))
    return out / "train.json", out / "heldout.json"


def label_counts(rows: Sequence[dict]) -> dict[str, int]:
    counts = {"1": 0, "2": 0, "Tie": 0}
    for r in rows:
        counts[r["output"].split("\n", 1)[0]] += 1
    return counts
