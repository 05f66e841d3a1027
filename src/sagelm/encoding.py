"""Turning (aspect, question, two clips[, answer]) into model inputs; shared by judging and training,
so that what is trained is exactly what is judged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sagelm.audio import Clip, log_mel_batch
from sagelm.prompts import judge_segments, judge_text, markup_in

IGNORE_INDEX = -100  # label of tokens that carry no loss


@dataclass(frozen=True)
class Example:
    aspect: str
    question: str
    audio_1: Clip
    audio_2: Clip
    answer: str | None = None  # "{verdict}\n{rationale}<|im_end|>" when training

    @property
    def text(self) -> str:
        return judge_text(self.aspect, self.question, [self.audio_1.n_tokens, self.audio_2.n_tokens])


def encode_prompt(tokenizer: Any, aspect: str, question: str, audio_tokens: Sequence[int] | None = None) -> list[int]:
    """Token ids of the judge's prompt. A question that spells a special token (`<|AUDIO|>`, `<|im_end|>`, ...)
    keeps it as plain text: that segment is encoded with special tokens split, so the prompt always holds
    exactly the template's two audio spans. Any other question is encoded with the whole text, as trained."""
    before, q, after = judge_segments(aspect, question, audio_tokens)
    if markup_in(q) is None:
        return tokenizer.encode(before + q + after, add_special_tokens=False)
    return (tokenizer.encode(before, add_special_tokens=False)
            + tokenizer.encode(q, add_special_tokens=False, split_special_tokens=True)
            + tokenizer.encode(after, add_special_tokens=False))  # fmt: skip


def prompt_ids(tokenizer: Any, example: Example) -> list[int]:
    counts = [example.audio_1.n_tokens, example.audio_2.n_tokens]
    return encode_prompt(tokenizer, example.aspect, example.question, counts)


def answer_ids(tokenizer: Any, example: Example) -> list[int]:
    return tokenizer.encode(example.answer or "", add_special_tokens=False)


def sequence_length(tokenizer: Any, example: Example) -> int:
    """Tokens of prompt (audio tokens included) plus answer."""
    return len(prompt_ids(tokenizer, example)) + (len(answer_ids(tokenizer, example)) if example.answer else 0)


def build_inputs(
    tokenizer: Any, feature_extractor: Any, examples: Sequence[Example], with_answers: bool = False
) -> dict[str, Any]:
    """Left-padded `input_ids`/`attention_mask`, the audio features padded to the batch's longest clip, and
    with `with_answers` the `labels` (-100 everywhere but the answer tokens)."""
    import torch

    seqs: list[list[int]] = []
    labels: list[list[int]] = []
    for ex in examples:
        p = prompt_ids(tokenizer, ex)
        a = answer_ids(tokenizer, ex) if with_answers else []
        seqs.append(p + a)
        labels.append([IGNORE_INDEX] * len(p) + a)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], dtype=torch.long)
    attention_mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)
    # Audio features in the order their placeholders appear: row by row, Response 1 then Response 2.
    clips = [c for ex in examples for c in (ex.audio_1, ex.audio_2)]
    features, mask = log_mel_batch(clips, feature_extractor)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "input_features": torch.from_numpy(features),
        "feature_attention_mask": torch.from_numpy(mask),
    }
    if with_answers:
        batch["labels"] = torch.tensor(
            [[IGNORE_INDEX] * (width - len(lab)) + lab for lab in labels], dtype=torch.long
        )
    return batch
