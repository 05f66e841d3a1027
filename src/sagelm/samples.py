"""Training samples: judge data rows turned into (prompt, two clips, answer), checked before training starts.

A sample is what `sagelm judge` would be asked (same aspect, question, clips and prompt rendering) plus the
answer the judge should write, `{verdict}\\n{rationale}<|im_end|>`. `prepare` decodes every clip once (bad
audio is found before the first step, not in the middle of an epoch), counts each sample's tokens with its
audio tokens, and drops those longer than the cutoff, counting them, instead of truncating them silently.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sagelm.audio import AudioError, ClipCache, load_audio
from sagelm.data import BadRow, DataError, read_pairs
from sagelm.encoding import Example, encode_prompt
from sagelm.prompts import ANSWER_TEMPLATE, IM_END
from sagelm.verdicts import Verdict, parse_verdict, swap_verdict

logger = logging.getLogger(__name__)

_RESPONSE_RE = re.compile(r"\b(response)(\s*)([12])\b", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    id: str
    aspect: str
    question: str
    audio_1: str
    audio_2: str
    verdict: Verdict
    rationale: str  # may be empty: then the target is the verdict alone
    swapped: bool = False
    source: str = ""  # the data file, for messages

    @property
    def answer(self) -> str:
        """The target text, prompts.ANSWER_TEMPLATE: `{verdict}\\n{rationale}<|im_end|>` (the verdict alone and
        `<|im_end|>` when there is no rationale)."""
        if not self.rationale:
            return self.verdict + IM_END
        return ANSWER_TEMPLATE.format(verdict=self.verdict, rationale=self.rationale)

    @property
    def output(self) -> str:
        """The answer as data files write it (their `output` column): without `<|im_end|>`."""
        return self.answer.removesuffix(IM_END)


def swap_rationale(text: str) -> str:
    """The rationale with "Response 1" and "Response 2" exchanged, for the pair presented the other way.

    >>> swap_rationale("Response 1 uses woman's voice, response 2 uses man's voice.")
    "Response 2 uses woman's voice, response 1 uses man's voice."
    """
    return _RESPONSE_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{3 - int(m.group(3))}", text)


def swapped(sample: Sample) -> Sample:
    """The same judgment with the two responses presented in the other order."""
    return replace(
        sample,
        audio_1=sample.audio_2,
        audio_2=sample.audio_1,
        verdict=swap_verdict(sample.verdict),  # type: ignore[arg-type]
        rationale=swap_rationale(sample.rationale),
        swapped=not sample.swapped,
    )


def _in_media_dir(audio: str, data_folder: Path, media_dir: Path) -> str:
    """LLaMA-Factory's `media_dir`: a relative audio path names `media_dir/path` when that file exists, else the
    path as before. `read_pairs` has already joined a relative path to the data file's folder (or the working
    directory); this takes that folder off again to find the path as written (so an absolute path inside the
    data folder is read as relative to it too)."""
    for folder in (data_folder, Path.cwd()):
        prefix = str(folder) + os.sep
        if audio.startswith(prefix) and (media_dir / audio[len(prefix):]).is_file():
            return str(media_dir / audio[len(prefix):])
    return audio


def read_samples(
    paths: Sequence[str | Path], max_samples: int | None = None, media_dir: str | Path | None = None
) -> tuple[list[Sample], list[str]]:
    """The samples of the data files, and one-line problems for the rows that cannot be trained on. With
    `media_dir`, relative audio paths resolve against it first (LLaMA-Factory's meaning)."""
    samples: list[Sample] = []
    problems: list[str] = []
    media = Path(media_dir).expanduser() if media_dir is not None else None
    for path in paths:
        n = 0
        for row in read_pairs(path):
            if max_samples is not None and n >= max_samples:
                break
            n += 1
            if isinstance(row, BadRow):
                problems.append(row.error)
                continue
            where = f"{path} row {row.id}"
            target = row.reference if row.reference is not None else row.label
            verdict = parse_verdict(target)
            if target is None or verdict is None:
                problems.append(f"{where}: no label (the output must start with 1, 2 or Tie)")
                continue
            if row.aspect is None:
                problems.append(f"{where}: no aspect (give it in the prompt or an 'aspect' field)")
                continue
            rationale = target.split("\n", 1)[1].strip("\n") if "\n" in target else ""
            audio_1, audio_2 = row.audio_1, row.audio_2
            if media is not None:
                audio_1, audio_2 = (_in_media_dir(a, Path(path).parent, media) for a in (audio_1, audio_2))
            samples.append(Sample(row.id, row.aspect, row.question, audio_1, audio_2, verdict, rationale,
                                  source=str(path)))  # fmt: skip
    return samples, problems


@dataclass
class Prepared:
    """The samples kept for training and the accounting of those that were not."""

    samples: list[Sample]
    lengths: list[int]  # tokens of each kept sample, audio tokens included
    read: int = 0  # samples read (after swap augmentation)
    too_long: int = 0  # dropped: longer than cutoff_len
    bad_audio: int = 0  # dropped: an unreadable clip
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {"read": self.read, "kept": len(self.samples), "too_long": self.too_long,
                "bad_audio": self.bad_audio, "bad_rows": len(self.problems) - self.bad_audio}  # fmt: skip


def prepare(
    samples: Iterable[Sample],
    tokenizer: Any,
    cutoff_len: int,
    swap_augment: bool = False,
    problems: Sequence[str] = (),
) -> Prepared:
    """Augment with the other order (when asked), decode every clip once, drop the too long, count all."""
    tokens_of: dict[str, int | AudioError] = {}
    out = Prepared([], [], problems=list(problems))

    def audio_tokens(path: str) -> int:
        if path not in tokens_of:
            try:
                tokens_of[path] = load_audio(path).n_tokens
            except AudioError as e:
                tokens_of[path] = e
        got = tokens_of[path]
        if isinstance(got, AudioError):
            raise got
        return got

    answer_len: dict[str, int] = {}
    for base in samples:
        for s in (base, swapped(base)) if swap_augment else (base,):
            out.read += 1
            try:
                counts = [audio_tokens(s.audio_1), audio_tokens(s.audio_2)]
            except AudioError as e:
                out.bad_audio += 1
                out.problems.append(f"{s.source} row {s.id}: {e}".lstrip())
                continue
            prompt = len(encode_prompt(tokenizer, s.aspect, s.question, counts))
            if s.answer not in answer_len:
                answer_len[s.answer] = len(tokenizer.encode(s.answer, add_special_tokens=False))
            length = prompt + answer_len[s.answer]
            if length > cutoff_len:
                out.too_long += 1
            else:
                out.samples.append(s)
                out.lengths.append(length)
    if out.too_long:
        logger.warning("%d of %d samples are longer than cutoff_len %d tokens and were dropped",
                       out.too_long, out.read, cutoff_len)  # fmt: skip
    return out


class SampleDataset:
    """A map-style dataset of `Example`s (clips decoded on demand, recently used ones kept)."""

    def __init__(self, samples: Sequence[Sample]):
        self.samples = list(samples)
        self._clips = ClipCache(size=64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Example:
        s = self.samples[i]
        return Example(s.aspect, s.question, self._clips.get(s.audio_1), self._clips.get(s.audio_2), s.answer)


class Collator:
    """Batches of Examples to model inputs with answer-only labels: the judge's own `encoding.build_inputs`."""

    def __init__(self, tokenizer: Any, feature_extractor: Any):
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        from sagelm.encoding import build_inputs

        return build_inputs(self.tokenizer, self.feature_extractor, examples, with_answers=True)


def read_dataset_info(path: Path) -> dict[str, Any]:
    """LLaMA-Factory's dataset registry ({} when there is none); a DataError naming it when it is not a JSON
    object."""
    import json

    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected a JSON object of dataset entries, got a {type(info).__name__}")
    return info


def data_files(names: Sequence[str], dataset_dir: str | Path | None) -> list[Path]:
    """Data files for `dataset` entries: a path, or a name registered in `dataset_dir/dataset_info.json`
    (LLaMA-Factory's registry, as `sagelm export llamafactory` writes it)."""
    out: list[Path] = []
    info: dict[str, Any] | None = None
    base = Path(dataset_dir) if dataset_dir else Path.cwd()
    for name in names:
        p = Path(name).expanduser()
        if not p.is_absolute() and not p.exists() and (base / p).exists():
            p = base / p
        if p.is_file():
            out.append(p)
            continue
        if info is None:
            info = read_dataset_info(base / "dataset_info.json")
        entry = info.get(name)
        if not isinstance(entry, dict) or "file_name" not in entry:
            raise DataError(f"dataset {name!r}: no such file, and not registered in {base / 'dataset_info.json'}")
        out.append(base / entry["file_name"])
    return out
