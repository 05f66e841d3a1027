"""The judge: SageLM listening to two spoken responses and saying 1, 2 or Tie, then why."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagelm.aspects import SEMANTIC_ASPECTS, get_aspect
from sagelm.audio import AudioError, ClipCache
from sagelm.backends import AsyncJudgeBackend, JudgeBackend, RawJudgment, Request, load_backend
from sagelm.data import BadRow, Pair
from sagelm.decoding import DecodingOptions
from sagelm.model import DEFAULT_MODEL
from sagelm.records import DigestCache, Judgment, judgment_key, model_fingerprint
from sagelm.verdicts import parse_verdict, split_rationale, swap_probabilities, swap_verdict

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Task:
    """One judgment to make: a pair, an aspect, and whether the responses are presented swapped."""

    pair: Pair
    aspect: str
    swapped: bool = False


def plan(pairs: Iterable[Pair], aspects: Sequence[str] | None = None, both_orders: bool = False) -> Iterator[Task]:
    """The tasks for `pairs`: each given aspect (default: the row's own, else the four semantic ones),
    in the original order and, with `both_orders`, swapped too."""
    names = [get_aspect(a).name for a in aspects] if aspects else None
    for pair in pairs:
        for aspect in names or ([pair.aspect] if pair.aspect else list(SEMANTIC_ASPECTS)):
            yield Task(pair, aspect, False)
            if both_orders:
                yield Task(pair, aspect, True)


def plan_rows(
    rows: Iterable[Pair | BadRow], aspects: Sequence[str] | None = None, both_orders: bool = False
) -> Iterator[Task | BadRow]:
    """`plan` over a data file's rows (sagelm.data.read_pairs), each bad row passed through in its place."""
    for row in rows:
        if isinstance(row, BadRow):
            yield row
        else:
            yield from plan([row], aspects, both_orders)


def error_record(bad: BadRow, model: str, options: DecodingOptions, backend: str = "hf") -> Judgment:
    """The record of a data row that cannot be judged; its resume key comes from the row id and the error (not the
    engine: the key is the one such records always had). It names the judge and engine as the others do."""
    key = judgment_key(("", ""), bad.error, None, False, model, options.as_dict(), bad.id)
    return Judgment(id=bad.id, aspect=None, error=bad.error, model=model, backend=backend, key=key)


class TaskKeys:
    """The resume key of a task (records.judgment_key), with each audio file hashed once."""

    def __init__(self, model_name: str, options: DecodingOptions, backend: str = "hf"):
        self.model_name = model_fingerprint(model_name)
        self.decoding = options.as_dict()
        self.backend = backend
        self._digests: dict[str, str] = {}
        self._remembered = DigestCache()

    def _digest(self, path: str) -> str:
        if path not in self._digests:
            self._digests[path] = self._remembered(path)
        return self._digests[path]

    def __call__(self, task: Task) -> str:
        p = task.pair
        return judgment_key(
            (self._digest(p.audio_1), self._digest(p.audio_2)), p.question, task.aspect, task.swapped,
            self.model_name, self.decoding, p.id, self.backend,
        )  # fmt: skip


class Judge:
    """A judging engine (a backend) plus decoding options; what is engine-independent lives here.

    >>> judge = Judge.from_pretrained("path/to/checkpoint")            # doctest: +SKIP
    >>> [j.verdict for j in judge.compare("Name a fruit.", "a.wav", "b.wav", aspects=["helpfulness"])]
    ['2']                                                              # doctest: +SKIP
    """

    def __init__(
        self,
        backend: JudgeBackend | AsyncJudgeBackend,  # an async one only prepares and records (sagelm serve)
        options: DecodingOptions = DecodingOptions(),
        keys: TaskKeys | None = None,
        clips: ClipCache | None = None,
    ):
        self.backend = backend
        self.options = options
        self.keys = keys or TaskKeys(backend.model_name, options, backend.name)
        self._clips = clips if clips is not None else ClipCache()  # anything with get(path) -> Clip (serve's)

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        options: DecodingOptions = DecodingOptions(),
        device: str | None = None,
        keys: TaskKeys | None = None,
        backend: str = "hf",
        **settings: Any,
    ) -> Judge:
        """Load `model` on the engine `backend` ("hf", "vllm", ...); `settings` are the engine's own."""
        return cls(load_backend(backend, model, device=device, options=options, **settings), options, keys)

    @property
    def model_name(self) -> str:
        return self.backend.model_name

    def close(self) -> None:
        self.backend.close()

    # -- judging ------------------------------------------------------------------------------------------
    def compare(
        self,
        question: str,
        audio_1: str | Path,
        audio_2: str | Path,
        aspects: Sequence[str] | None = None,
        both_orders: bool = False,
        batch_size: int = 1,
        id: str = "pair",
    ) -> list[Judgment]:
        """Judge one pair on `aspects` (default: the four semantic ones)."""
        pair = Pair(id=id, question=question, audio_1=str(audio_1), audio_2=str(audio_2))
        tasks = list(plan([pair], aspects, both_orders))
        return [j for batch in self.judge(tasks, batch_size) for j in batch]

    def judge(self, tasks: Iterable[Task], batch_size: int = 1) -> Iterator[list[Judgment]]:
        """Judge `tasks` `batch_size` prompts at a time; yields each batch's records in task order.
        A task whose audio cannot be read gets a record with `error` set; the others go on."""
        for chunk in batched(tasks, batch_size):
            yield self.judge_chunk(chunk)

    def _record(self, task: Task, **fields: Any) -> Judgment:
        p = task.pair
        return Judgment(
            id=p.id, aspect=task.aspect, swapped=task.swapped, label=p.label, question=p.question,
            audio_1=p.audio_1, audio_2=p.audio_2, model=self.model_name, backend=self.backend.name,
            key=self.keys(task), **fields,
        )  # fmt: skip

    def request(self, task: Task) -> Request:
        """The prompt of `task` with its clips decoded (AudioError for one that cannot be judged)."""
        a1, a2 = self._clips.get(task.pair.audio_1), self._clips.get(task.pair.audio_2)
        if task.swapped:
            a1, a2 = a2, a1
        return Request(task.aspect, task.pair.question, a1, a2, seed=self.options.seed)

    def prepare(self, task: Task) -> Request | Judgment:
        """The prompt of `task`, or its error record when its audio or row cannot be prompted."""
        try:
            return self.request(task)
        except (AudioError, ValueError) as e:
            return self._record(task, error=str(e))

    def record(self, task: Task, request: Request, raw: RawJudgment) -> Judgment:
        """The record of `task` from what the engine made of its `request`: verdict parsed, rationale split, a
        swapped task's verdict and probabilities mapped back to the original numbering, what the judge heard
        (a silent or cut response) as the warning."""
        warning = _warning(request)
        extra = _extra_fields(raw, task.swapped)
        if raw.error is not None:
            return self._record(task, error=raw.error, warning=warning, **extra)
        verdict = raw.first_verdict if self.options.verdict_only else parse_verdict(raw.text)
        rationale = None if self.options.verdict_only else split_rationale(raw.text)
        probs = raw.probabilities
        if task.swapped:
            verdict, probs = swap_verdict(verdict), (swap_probabilities(probs) if probs is not None else None)
        return self._record(
            task, verdict=verdict, probabilities=probs, rationale=rationale, raw=raw.text,
            new_tokens=raw.new_tokens, warning=warning, **extra,
        )  # fmt: skip

    def judge_chunk(self, tasks: Sequence[Task]) -> list[Judgment]:
        """One engine call for `tasks`; tasks that cannot be prompted get error records instead."""
        prepared = [self.prepare(t) for t in tasks]
        ready = [(i, p) for i, p in enumerate(prepared) if isinstance(p, Request)]
        records = [p if isinstance(p, Judgment) else None for p in prepared]
        if ready:
            outputs = self.backend.judge([r for _, r in ready], self.options)
            for (i, req), raw in zip(ready, outputs, strict=True):
                records[i] = self.record(tasks[i], req, raw)
        return records  # type: ignore[return-value]  # every None was filled above


def _extra_fields(raw: RawJudgment, swapped: bool) -> dict[str, Any]:
    """A backend's optional record fields (the cascade's transcripts and token usage), in the record's order."""
    extra: dict[str, Any] = {}
    if raw.transcripts is not None:
        extra["transcripts"] = list(raw.transcripts[::-1] if swapped else raw.transcripts)
    if raw.usage is not None:
        extra["usage"] = dict(raw.usage)
    return extra


def _warning(request: Request) -> str | None:
    """What the log should know about what the judge heard (a silent response, a cut one), per response."""
    clips = (request.audio_1, request.audio_2)
    return "; ".join(f"audio {n}: {c.warning}" for n, c in enumerate(clips, start=1) if c.warning) or None


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """`items` in lists of `size` (the last one shorter): the one batching helper of judge, arena and serve."""
    chunk: list[Any] = []
    for it in items:
        chunk.append(it)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
