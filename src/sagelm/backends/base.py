"""The one seam every judging engine plugs into: Requests in, RawJudgments out.

A backend only turns prompts (an aspect, a question and two clips, already in the order they are presented)
into generated text and first-step verdict probabilities. Everything engine-independent stays in
`sagelm.judge.Judge`: planning, loading audio through our own front end, resume keys, order swapping and
mapping back, verdict parsing, rationale splitting and records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sagelm.audio import Clip
from sagelm.decoding import DecodingOptions


@dataclass(frozen=True)
class Request:
    """One prompt: what the judge hears, Response 1 first."""

    aspect: str
    question: str
    audio_1: Clip
    audio_2: Clip
    seed: int | None = None  # per-request sampling seed (sampled presets)


@dataclass(frozen=True)
class RawJudgment:
    """What an engine made of one Request, before any parsing."""

    text: str  # the generated text up to (not including) <|im_end|>, special tokens skipped
    first_verdict: str | None  # "1"/"2"/"Tie" when the first generated token is that verdict's first token
    probabilities: dict[str, float] | None  # over the verdict first tokens at step 1; None if the engine cannot say
    new_tokens: int  # tokens generated, <|im_end|> included
    # Optional, for engines that have them (the cascade): what the judge read, what the call cost, and a failure
    # of this one judgment (the record gets `error`, the run goes on).
    transcripts: tuple[str, str] | None = None  # Response 1's and Response 2's, in the order presented
    usage: dict[str, int] | None = None  # the API's token counts (prompt_tokens, completion_tokens, ...)
    error: str | None = None


@runtime_checkable
class JudgeBackend(Protocol):
    name: str  # "hf", "vllm", ...: each record's "backend"
    model_name: str

    def judge(self, requests: Sequence[Request], options: DecodingOptions) -> list[RawJudgment]: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncJudgeBackend(Protocol):
    """An engine that batches for itself as requests arrive (vLLM's continuous batching): `sagelm serve` hands
    it each request as it comes instead of gathering batches for it."""

    name: str
    model_name: str

    async def judge_one(self, request: Request, options: DecodingOptions) -> RawJudgment: ...

    def close(self) -> None: ...
