"""Decoding options: greedy by default, the authors' sampling as the `paper` preset."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class DecodingOptions:
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    max_new_tokens: int = 1024
    repetition_penalty: float = 1.0
    seed: int | None = None
    verdict_only: bool = False  # stop after the verdict: one decoding step, no rationale

    def as_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes: object) -> DecodingOptions:
        return replace(self, **changes)


PRESETS: dict[str, DecodingOptions] = {
    "greedy": DecodingOptions(),
    # The authors' vLLM run: T 0.95, top_p 0.7, top_k 50, 1024 new tokens, repetition penalty 1.0
    # (they ran seeds 42, 123 and 1234).
    "paper": DecodingOptions(do_sample=True, temperature=0.95, top_p=0.7, top_k=50, max_new_tokens=1024),
}
# The authors' own inference run (their vllm_infer.py): the paper's sampling, one sequence at a time.
PRESETS["authors"] = PRESETS["paper"]
PRESET_ENGINE_SETTINGS: dict[str, dict[str, object]] = {"authors": {"max_num_seqs": 1}}


def preset(name: str) -> DecodingOptions:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
