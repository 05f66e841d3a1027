"""The transformers engine: the Qwen2.5-Omni thinker's own `generate`, batched and left-padded.

Memory stays bounded at any batch size and length: the LM head runs on the last position only (the prefill
of a 7B judge with 152k-word vocabulary over ~3,000 prompt positions would otherwise make GBs of logits that
`generate` throws away), and only the first step's logits are kept (for P(1), P(2), P(Tie)), not every step's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sagelm.backends.base import RawJudgment, Request
from sagelm.decoding import DecodingOptions
from sagelm.encoding import Example, build_inputs
from sagelm.model import JudgeModel, load_judge_model
from sagelm.verdicts import VERDICTS


@contextmanager
def _last_position_head(thinker: Any) -> Iterator[Any]:
    """`thinker.lm_head` applied to the last position only while the block runs; the object yielded remembers,
    in `.first`, the logits of the head's first call (the prefill, i.e. the first decoding step) before any
    sampling warper touches them."""
    import torch

    class LastPositionHead(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner
            self.first: torch.Tensor | None = None

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            logits = self.inner(hidden[:, -1:, :])
            if self.first is None:
                self.first = logits[:, -1, :].float()
            return logits

    head = LastPositionHead(thinker.lm_head)
    thinker.lm_head = head
    try:
        yield head
    finally:
        thinker.lm_head = head.inner
    assert head.first is not None


class HFBackend:
    """`JudgeBackend` on transformers: greedy or sampled `generate`, or one forward pass for verdict-only."""

    name = "hf"

    def __init__(self, model: JudgeModel):
        self.model = model
        self.model_name = model.name
        self._seeded = False

    @classmethod
    def load(cls, model: str, *, device: str | None = None, **_: Any) -> HFBackend:
        return cls(load_judge_model(model, device=device))

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]

    def judge(self, requests: Sequence[Request], options: DecodingOptions) -> list[RawJudgment]:
        import torch

        if not requests:
            return []
        if options.seed is not None and not self._seeded:  # one seed per run, as generate's sampling is batched
            torch.manual_seed(options.seed)
            self._seeded = True
        m = self.model
        examples = [Example(r.aspect, r.question, r.audio_1, r.audio_2) for r in requests]
        inputs = build_inputs(m.tokenizer, m.feature_extractor, examples)
        inputs = {k: v.to(m.device) for k, v in inputs.items()}
        inputs["input_features"] = inputs["input_features"].to(m.thinker.dtype)
        with torch.inference_mode():
            if options.verdict_only:
                first = self._first_step_logits(inputs)
                new = [[t] for t in self._pick(first, options).tolist()]
            else:
                first, new = self._generate(inputs, options)
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
            results.append(
                RawJudgment(
                    text=m.tokenizer.decode(row, skip_special_tokens=True),
                    first_verdict=by_first_id.get(row[0]) if row else None,
                    probabilities=dict(zip(VERDICTS, p, strict=True)),
                    new_tokens=n_new,
                )
            )
        return results

    def _generate(self, inputs: dict[str, Any], options: DecodingOptions) -> tuple[Any, list[list[int]]]:
        thinker = self.model.thinker
        with _last_position_head(thinker) as head:
            sequences = thinker.generate(**inputs, generation_config=self._generation_config(options))
        return head.first, sequences[:, inputs["input_ids"].shape[1] :].tolist()

    def _generation_config(self, o: DecodingOptions) -> Any:
        from transformers import GenerationConfig

        m = self.model
        return GenerationConfig(
            max_new_tokens=o.max_new_tokens,
            do_sample=o.do_sample,
            temperature=o.temperature if o.do_sample else None,
            top_p=o.top_p if o.do_sample else None,
            top_k=o.top_k if o.do_sample else None,
            repetition_penalty=o.repetition_penalty,
            eos_token_id=m.im_end_id,
            pad_token_id=m.tokenizer.pad_token_id,
        )

    def _first_step_logits(self, inputs: dict[str, Any]) -> Any:
        """Logits of the first generated token from one forward pass of the whole thinker (audio merged in, mrope
        positions from the padding), the LM head on the last position only. Not `thinker.model`: before
        transformers 5.20 that is the text model alone, which never hears the audio."""
        thinker = self.model.thinker
        with _last_position_head(thinker) as head:
            thinker(**inputs, use_cache=False)
        return head.first

    @staticmethod
    def _pick(logits: Any, o: DecodingOptions) -> Any:
        """The first token as `generate` would pick it: argmax, or a sample after temperature/top-k/top-p."""
        import torch

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
