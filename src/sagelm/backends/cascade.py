"""The cascade baseline of the SageLM paper: speech recognition, then a text LLM judges the two transcripts.

Each Request's clips (decoded by the judge's own front end) are transcribed by `sagelm.asr`; the SageLM prompt
gets each `<audio>` replaced by its transcript (or a `--text-prompt` template with {aspect}, {question},
{response_1}, {response_2}); any OpenAI-compatible chat server judges it (`sagelm.textjudge`). The verdict is
parsed by the same parser as SageLM's (in Judge); probabilities come from the first token's `top_logprobs` when
the server sends them, else None. Records gain "transcripts" and "usage" (the server's token counts).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sagelm.asr import DEFAULT_ASR, AsrSettings, Transcriber
from sagelm.backends.base import RawJudgment, Request
from sagelm.cache import cache_root
from sagelm.decoding import DecodingOptions
from sagelm.errors import SagelmError
from sagelm.model import DEFAULT_MODEL
from sagelm.prompts import SYSTEM_PROMPT, fill_responses
from sagelm.textjudge import CallFailed, ChatClient, ChatResult, ClientSettings
from sagelm.verdicts import VERDICTS, parse_verdict

TEMPLATE_FIELDS = ("{aspect}", "{question}", "{response_1}", "{response_2}")
TOP_LOGPROBS = 20  # the most the OpenAI API (and vLLM by default) return per token
VERDICT_ONLY_TOKENS = 3  # enough for "1", "2" or "Tie" in any tokenizer, then stop
DEFAULT_CONCURRENCY = 4


class CascadeError(SagelmError):
    """A cascade set-up problem: no --text-judge/--text-model, an unreadable or wrong --text-prompt."""


def read_template(path: str | Path | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CascadeError(f"--text-prompt {p}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    missing = [f for f in ("{response_1}", "{response_2}") if f not in text]
    if missing:
        raise CascadeError(f"--text-prompt {p}: the template lacks {' and '.join(missing)} "
                           f"(fields: {', '.join(TEMPLATE_FIELDS)})")  # fmt: skip
    return text


def text_prompt(aspect: str, question: str, transcripts: Sequence[str], template: str | None = None) -> str:
    """The user turn the text judge reads: SageLM's prompt with each `<audio>` replaced by its transcript."""
    if template is None:
        return fill_responses(aspect, question, transcripts)
    values = dict(zip(TEMPLATE_FIELDS, (aspect, question, *transcripts), strict=True))
    # one pass over the template, so a transcript that happens to contain "{question}" is left as it is
    out, i = [], 0
    while i < len(template):
        hit = next((f for f in TEMPLATE_FIELDS if template.startswith(f, i)), None)
        if hit:
            out.append(values[hit])
            i += len(hit)
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


def cascade_model_name(asr: str | None, text_model: str, template: str | None = None) -> str:
    """What the records call this judge (and what resume keys hold): recogniser, text model, prompt."""
    name = f"cascade:{asr or DEFAULT_ASR}+{text_model}"
    if template is not None:
        name += f"+prompt:{hashlib.sha256(template.encode()).hexdigest()[:12]}"
    return name


def verdict_probabilities(top_logprobs: list[dict[str, Any]] | None) -> dict[str, float] | None:
    """P(1), P(2), P(Tie) from the first token's alternatives, renormalised over the verdicts found there
    (as SageLM's are over its three verdict tokens); a verdict not among them gets 0. None when none is."""
    if not top_logprobs:
        return None
    mass = dict.fromkeys(VERDICTS, 0.0)
    for alt in top_logprobs:
        token = str(alt.get("token", "")).strip().strip("*_`").lower()
        try:
            p = math.exp(float(alt["logprob"]))
        except (TypeError, ValueError, OverflowError):
            continue
        if token in ("1", "2"):
            mass[token] += p
        elif token and "tie".startswith(token):  # "Tie" or its first piece ("T", "Ti")
            mass["Tie"] += p
    total = sum(mass.values())
    if total <= 0:
        return None
    return {v: mass[v] / total for v in VERDICTS}


class CascadeBackend:
    """ASR + an OpenAI-compatible text judge, behind the JudgeBackend seam."""

    name = "cascade"

    def __init__(self, transcriber: Transcriber, client: ChatClient, text_model: str, template: str | None = None,
                 model_name: str | None = None):  # fmt: skip
        self.transcriber = transcriber
        self.client = client
        self.text_model = text_model
        self.template = template
        self.model_name = model_name or cascade_model_name(transcriber.name, text_model, template)

    @classmethod
    def load(
        cls,
        model: str | None = None,
        *,
        text_judge: str | None = None,
        text_model: str | None = None,
        asr: str | None = None,
        api_key_env: str | None = None,
        text_prompt: str | Path | None = None,
        concurrency: int | None = None,
        device: str | None = None,
        cache_dir: str | Path | None = None,
        timeout_s: float | None = None,
        max_retries: int | None = None,
        **_other_engines: Any,
    ) -> CascadeBackend:
        """`model`: the records' name for this judge (default: cascade_model_name); `device`: the recogniser's."""
        if not text_judge or not text_model:
            raise CascadeError("the cascade backend needs --text-judge URL (an OpenAI-compatible server) and "
                               "--text-model NAME")  # fmt: skip
        template = read_template(text_prompt)
        root = Path(cache_dir) if cache_dir is not None else cache_root()
        on_gpu = bool(device and device.startswith("cuda"))
        settings = AsrSettings(model=asr or DEFAULT_ASR, device="cuda" if on_gpu else "cpu")
        transcriber = Transcriber(settings, cache_dir=root / "transcripts")
        extra = {k: v for k, v in {"timeout_s": timeout_s, "max_retries": max_retries}.items() if v is not None}
        client = ChatClient(ClientSettings(text_judge, api_key_env, concurrency or DEFAULT_CONCURRENCY,
                                           cache_dir=root / "responses", **extra))  # fmt: skip
        name = None if model in (None, DEFAULT_MODEL) else model
        return cls(transcriber, client, text_model, template, name)

    def body(self, request: Request, transcripts: Sequence[str], options: DecodingOptions) -> dict[str, Any]:
        """The chat completion request of one judgment."""
        prompt = text_prompt(request.aspect, request.question, transcripts, self.template)
        body: dict[str, Any] = {
            "model": self.text_model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
            "max_tokens": VERDICT_ONLY_TOKENS if options.verdict_only else options.max_new_tokens,
            "temperature": options.temperature if options.do_sample else 0.0,
            "logprobs": True,
            "top_logprobs": TOP_LOGPROBS,
        }
        if options.do_sample and options.top_p < 1.0:
            body["top_p"] = options.top_p
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    def judge(self, requests: Sequence[Request], options: DecodingOptions) -> list[RawJudgment]:
        transcripts = [(self.transcriber.transcribe(r.audio_1).text, self.transcriber.transcribe(r.audio_2).text)
                       for r in requests]  # fmt: skip
        bodies = [self.body(r, t, options) for r, t in zip(requests, transcripts, strict=True)]
        results = self.client.complete_many(bodies)
        return [_raw(res, t) for res, t in zip(results, transcripts, strict=True)]

    def close(self) -> None:
        self.client.close()


def _raw(result: ChatResult | CallFailed, transcripts: tuple[str, str]) -> RawJudgment:
    if isinstance(result, CallFailed):
        return RawJudgment("", None, None, 0, transcripts=transcripts, error=str(result))
    first_line = result.text.strip().split("\n", 1)[0] if result.text.strip() else ""
    return RawJudgment(
        text=result.text, first_verdict=parse_verdict(first_line),
        probabilities=verdict_probabilities(result.top_logprobs),
        new_tokens=int(result.usage.get("completion_tokens", 0)), transcripts=transcripts, usage=result.usage,
    )  # fmt: skip
