"""The judge: SageLM listening to two spoken responses and saying 1, 2 or Tie, then why."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagelm.aspects import SEMANTIC_ASPECTS, get_aspect
from sagelm.audio import AudioError, ClipCache
from sagelm.data import Pair
from sagelm.decoding import DecodingOptions
from sagelm.encoding import Example, build_inputs
from sagelm.model import DEFAULT_MODEL, JudgeModel, load_judge_model
from sagelm.records import Judgment, file_digest, judgment_key, model_fingerprint
from sagelm.verdicts import VERDICTS, parse_verdict, swap_probabilities, swap_verdict

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


class TaskKeys:
    """The resume key of a task (records.judgment_key), with each audio file hashed once."""

    def __init__(self, model_name: str, options: DecodingOptions):
        self.model_name = model_fingerprint(model_name)
        self.decoding = options.as_dict()
        self._digests: dict[str, str] = {}

    def _digest(self, path: str) -> str:
        if path not in self._digests:
            self._digests[path] = file_digest(path)
        return self._digests[path]

    def __call__(self, task: Task) -> str:
        p = task.pair
        return judgment_key(
            (self._digest(p.audio_1), self._digest(p.audio_2)), p.question, task.aspect, task.swapped,
            self.model_name, self.decoding, p.id,
        )  # fmt: skip


class Judge:
    """A loaded judge model plus decoding options.

    >>> judge = Judge.from_pretrained("path/to/checkpoint")            # doctest: +SKIP
    >>> [j.verdict for j in judge.compare("Name a fruit.", "a.wav", "b.wav", aspects=["helpfulness"])]
    ['2']                                                              # doctest: +SKIP
    """

    def __init__(
        self, model: JudgeModel, options: DecodingOptions = DecodingOptions(), keys: TaskKeys | None = None
    ):
        self.model = model
        self.options = options
        self.keys = keys or TaskKeys(model.name, options)
        self._clips = ClipCache()

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        options: DecodingOptions = DecodingOptions(),
        device: str | None = None,
        keys: TaskKeys | None = None,
    ) -> Judge:
        return cls(load_judge_model(model, device=device), options, keys)

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
        """Judge `tasks` `batch_size` prompts per forward pass; yields each batch's records in task order.
        A task whose audio cannot be read gets a record with `error` set; the others go on."""
        import torch

        if self.options.seed is not None:
            torch.manual_seed(self.options.seed)
        chunk: list[Task] = []
        for task in tasks:
            chunk.append(task)
            if len(chunk) == batch_size:
                yield self._judge_chunk(chunk)
                chunk = []
        if chunk:
            yield self._judge_chunk(chunk)

    def _record(self, task: Task, **fields: Any) -> Judgment:
        p = task.pair
        return Judgment(
            id=p.id, aspect=task.aspect, swapped=task.swapped, label=p.label, question=p.question,
            audio_1=p.audio_1, audio_2=p.audio_2, model=self.model.name, key=self.keys(task), **fields,
        )  # fmt: skip

    def _judge_chunk(self, tasks: list[Task]) -> list[Judgment]:
        records: dict[int, Judgment] = {}
        ready: list[tuple[int, Example]] = []
        for i, t in enumerate(tasks):
            try:
                a1, a2 = self._clips.get(t.pair.audio_1), self._clips.get(t.pair.audio_2)
            except AudioError as e:
                records[i] = self._record(t, error=str(e))
                continue
            if t.swapped:
                a1, a2 = a2, a1
            ready.append((i, Example(t.aspect, t.pair.question, a1, a2)))
        if ready:
            outputs = self._generate([ex for _, ex in ready])
            for (i, _), (verdict, probs, rationale, raw, n_new) in zip(ready, outputs, strict=True):
                t = tasks[i]
                if t.swapped:
                    verdict, probs = swap_verdict(verdict), swap_probabilities(probs)
                records[i] = self._record(
                    t, verdict=verdict, probabilities=probs, rationale=rationale, raw=raw, new_tokens=n_new
                )
        return [records[i] for i in range(len(tasks))]

    def _generate(self, examples: list[Example]) -> list[tuple[str | None, dict[str, float], str | None, str, int]]:
        import torch

        m, o = self.model, self.options
        inputs = build_inputs(m.tokenizer, m.feature_extractor, examples)
        inputs = {k: v.to(m.device) for k, v in inputs.items()}
        inputs["input_features"] = inputs["input_features"].to(m.thinker.dtype)
        with torch.inference_mode():
            if o.verdict_only:
                first = self._first_step_logits(inputs)
                new = [[t] for t in self._pick(first).tolist()]
            else:
                out = m.thinker.generate(**inputs, generation_config=self._generation_config())
                first = out.logits[0].float()  # raw logits of the first step, before any sampling warper
                new = out.sequences[:, inputs["input_ids"].shape[1] :].tolist()
        ids = [m.verdict_token_ids[v] for v in VERDICTS]
        probs = torch.softmax(first[:, ids], dim=-1).tolist()
        by_first_id = {tid: v for v, tid in m.verdict_token_ids.items()}
        results = []
        for row, p in zip(new, probs, strict=True):
            n_new = len(row)
            if m.im_end_id in row:
                row = row[: row.index(m.im_end_id)]
                n_new = len(row) + 1
            row = [t for t in row if t != m.tokenizer.pad_token_id]
            raw = m.tokenizer.decode(row, skip_special_tokens=True)
            if o.verdict_only:
                verdict, rationale = (by_first_id.get(row[0]) if row else None), None
            else:
                verdict = parse_verdict(raw)
                rationale = raw.split("\n", 1)[1].strip() if "\n" in raw else None
            results.append((verdict, dict(zip(VERDICTS, p, strict=True)), rationale, raw, n_new))
        return results

    def _generation_config(self) -> Any:
        from transformers import GenerationConfig

        m, o = self.model, self.options
        return GenerationConfig(
            max_new_tokens=o.max_new_tokens,
            do_sample=o.do_sample,
            temperature=o.temperature if o.do_sample else None,
            top_p=o.top_p if o.do_sample else None,
            top_k=o.top_k if o.do_sample else None,
            repetition_penalty=o.repetition_penalty,
            eos_token_id=m.im_end_id,
            pad_token_id=m.tokenizer.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )

    def _first_step_logits(self, inputs: dict[str, Any]) -> Any:
        """Logits of the first generated token from one forward pass, with the LM head on the last
        position only (the full-sequence logits of a 7B model with a 152k vocabulary would take GBs)."""
        thinker = self.model.thinker
        hidden = thinker.model(**inputs, use_cache=False).last_hidden_state[:, -1, :]
        return thinker.lm_head(hidden).float()

    def _pick(self, logits: Any) -> Any:
        """The first token as `generate` would pick it: argmax, or a sample after temperature/top-k/top-p."""
        import torch

        o = self.options
        if not o.do_sample:
            return logits.argmax(dim=-1)
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        warpers = LogitsProcessorList(
            [TemperatureLogitsWarper(o.temperature), TopKLogitsWarper(o.top_k), TopPLogitsWarper(o.top_p)]
        )
        scores = warpers(None, logits)
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
