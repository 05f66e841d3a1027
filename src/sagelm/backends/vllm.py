"""The vLLM engines: vLLM's offline `LLM`, batched by vLLM's own scheduler (`VLLMBackend`, for `sagelm judge`),
and its async engine, each request joining the running batch as it arrives (`AsyncVLLMBackend`, for
`sagelm serve`). Both build prompts and read answers the same way (`_VLLMPrompts`).

The judge hears exactly what it hears on the hf engine: the same chat text (`sagelm.prompts.judge_text`
with one `<|AUDIO|>` per clip, which vLLM's Qwen2.5-Omni processor expands) and our own decoded 16 kHz
clips as `multi_modal_data`. P(1), P(2), P(Tie) come from the first step's raw logprobs of the three
verdict first tokens (`logprob_token_ids`, so all three are always there), renormalised over the three
as the hf engine's softmax over the same ids is. `--verdict-only` is a one-token request.

vLLM needs a full Qwen2.5-Omni checkpoint (its registry knows `Qwen2_5OmniModel`); a thinker-only folder, as
training saves it, is refused with the `sagelm merge` command that makes a full one.

On a CPU build of vLLM, `VLLM_CPU_KVCACHE_SPACE` (GiB) defaults here to `CPU_KV_CACHE_GIB` rather than
vLLM's 92 % of the machine's memory, and the engine runs eager, in float32 (the offline one in this process;
the async one's core always in a process of its own).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sagelm.audio import SAMPLE_RATE, padded_samples
from sagelm.backends.base import RawJudgment, Request
from sagelm.decoding import DecodingOptions
from sagelm.encoding import encode_prompt
from sagelm.model import ModelFormatError, load_processor, resolve_checkpoint
from sagelm.prompts import AUDIO_TOKEN, IM_END, judge_text, markup_in
from sagelm.verdicts import VERDICTS

logger = logging.getLogger(__name__)

CLIPS_PER_PROMPT = 2  # Response 1 and Response 2; the judge sees no images or video
CPU_KV_CACHE_GIB = 4  # a 7B judge's fp32 KV cache of ~9k tokens (3 prompts of 60 s pairs); tests need 1
GREEDY_TEMPERATURE = 0.0  # vLLM's greedy decoding


class _VLLMPrompts:
    """What both vLLM engines share: the prompt and sampling parameters of a Request, and its RawJudgment."""

    name = "vllm"

    def __init__(self, model_name: str, tokenizer: Any):
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.im_end_id: int = tokenizer.convert_tokens_to_ids(IM_END)
        first_ids = [tokenizer.encode(v, add_special_tokens=False)[0] for v in VERDICTS]
        if len(set(first_ids)) != len(first_ids):
            raise ModelFormatError(f"{model_name}: verdicts 1/2/Tie do not start with distinct tokens")
        self.verdict_token_ids: dict[str, int] = dict(zip(VERDICTS, first_ids, strict=True))

    def sampling_params(self, request: Request, options: DecodingOptions) -> Any:
        from vllm import SamplingParams

        sampled = options.do_sample
        return SamplingParams(
            temperature=options.temperature if sampled else GREEDY_TEMPERATURE,
            top_p=options.top_p if sampled else 1.0,
            top_k=options.top_k if sampled else 0,
            seed=request.seed if sampled else None,
            repetition_penalty=options.repetition_penalty,
            max_tokens=1 if options.verdict_only else options.max_new_tokens,
            stop_token_ids=[self.im_end_id],
            logprob_token_ids=[self.verdict_token_ids[v] for v in VERDICTS],
            detokenize=False,  # decoded below with the hf engine's tokenizer call, so both write the same text
        )

    def prompt(self, request: Request) -> dict[str, Any]:
        pair = (request.audio_1, request.audio_2)
        audio = {
            "multi_modal_data": {"audio": [(c.samples, SAMPLE_RATE) for c in pair]},
            # The stock processor pads every clip to 300 s before its STFT (~0.5 s of CPU per pair, serial, ahead
            # of the scheduler); padding to the longer clip plus one window gives the same features, as on hf.
            "mm_processor_kwargs": {"audio_kwargs": {"max_length": padded_samples(pair)}},
        }
        if markup_in(request.question):  # a question spelling <|AUDIO|> & co. stays text: our own token ids
            return {"prompt_token_ids": encode_prompt(self.tokenizer, request.aspect, request.question), **audio}
        text = judge_text(request.aspect, request.question)  # one <|AUDIO|> per clip: vLLM expands them
        assert text.count(AUDIO_TOKEN) == CLIPS_PER_PROMPT
        return {"prompt": text, **audio}

    def raw(self, completion: Any) -> RawJudgment:
        row = list(completion.token_ids)
        n_new = len(row)
        if self.im_end_id in row:
            row = row[: row.index(self.im_end_id)]
            n_new = len(row) + 1
        elif completion.finish_reason == "stop":  # stopped on <|im_end|> without returning it
            n_new += 1
        by_first_id = {tid: v for v, tid in self.verdict_token_ids.items()}
        return RawJudgment(
            text=self.tokenizer.decode(row, skip_special_tokens=True),
            first_verdict=by_first_id.get(row[0]) if row else None,
            probabilities=self._first_step_probabilities(completion.logprobs),
            new_tokens=n_new,
        )

    def _first_step_probabilities(self, logprobs: Any) -> dict[str, float] | None:
        """P(1), P(2), P(Tie) at the first step, renormalised over the three."""
        import math

        if not logprobs:
            return None
        first = logprobs[0]
        lp = [first[self.verdict_token_ids[v]].logprob for v in VERDICTS]
        top = max(lp)
        w = [math.exp(x - top) for x in lp]
        total = sum(w)
        return {v: x / total for v, x in zip(VERDICTS, w, strict=True)}


class VLLMBackend(_VLLMPrompts):
    """`JudgeBackend` on vLLM's offline engine (`LLM`): each call's prompts batched by vLLM's scheduler."""

    def __init__(self, llm: Any, model_name: str, tokenizer: Any):
        super().__init__(model_name, tokenizer)
        self.llm = llm

    @classmethod
    def load(cls, model: str, **settings: Any) -> VLLMBackend:
        """`model` (hub id or full Qwen2.5-Omni folder) on vLLM; see `engine_arguments` for `settings`."""
        path, tokenizer, engine = engine_arguments(model, **settings)
        from vllm import LLM

        logger.info("starting vLLM on %s (%s)", path, engine)
        return cls(LLM(**engine), model, tokenizer)

    def close(self) -> None:
        self.llm = None

    def judge(self, requests: Sequence[Request], options: DecodingOptions) -> list[RawJudgment]:
        if not requests:
            return []
        outputs = self.llm.generate(
            [self.prompt(r) for r in requests], [self.sampling_params(r, options) for r in requests], use_tqdm=False
        )
        return [self.raw(out.outputs[0]) for out in outputs]


class AsyncVLLMBackend(_VLLMPrompts):
    """`AsyncJudgeBackend` on vLLM's async engine (`AsyncLLM`, its engine core in a process of its own): each
    request joins the running batch as soon as it arrives (continuous batching), as `sagelm serve` wants."""

    def __init__(self, engine: Any, model_name: str, tokenizer: Any):
        super().__init__(model_name, tokenizer)
        self.engine = engine
        self._ids = itertools.count()

    @classmethod
    def load(cls, model: str, **settings: Any) -> AsyncVLLMBackend:
        """As `VLLMBackend.load`; blocks until the engine core is up (call it from a thread in a server)."""
        path, tokenizer, engine = engine_arguments(model, **settings)
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        logger.info("starting vLLM's async engine on %s (%s)", path, engine)
        return cls(AsyncLLM.from_engine_args(AsyncEngineArgs(**engine)), model, tokenizer)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    async def judge_one(self, request: Request, options: DecodingOptions) -> RawJudgment:
        final = None
        async for out in self.engine.generate(
            self.prompt(request), self.sampling_params(request, options), f"sagelm-{next(self._ids)}"
        ):
            final = out
        assert final is not None and final.finished
        return self.raw(final.outputs[0])


def engine_arguments(
    model: str,
    *,
    max_num_seqs: int | None = None,
    gpu_memory_utilization: float | None = None,
    tensor_parallel_size: int | None = None,
    max_model_len: int | None = None,
    load_format: str | None = None,
    options: DecodingOptions | None = None,
    **_: Any,
) -> tuple[Path, Any, dict[str, Any]]:
    """The checkpoint folder, its tokenizer and vLLM's engine arguments for `model` (hub id or full
    Qwen2.5-Omni folder); None settings are vLLM's defaults. `device` is vLLM's own choice (its build decides
    CPU or GPU) and is ignored, as other engines' settings are; `load_format="dummy"` gives random weights from
    the config alone (benchmarks/bench_gpu.py)."""
    path = resolve_checkpoint(model)
    _check_full_checkpoint(path)
    tokenizer, _ = load_processor(path)  # the same tokenizer files, read the way the hf engine reads them
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    if on_cpu:  # before the engine starts: vLLM reads these when it builds its CPU worker
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    engine: dict[str, Any] = dict(
        max_num_seqs=max_num_seqs,
        gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len,
        load_format=load_format,
        seed=options.seed if options is not None else None,
    )
    engine = {k: v for k, v in engine.items() if v is not None}
    if on_cpu:
        engine.update(enforce_eager=True, dtype="float32")
    limits = {"audio": CLIPS_PER_PROMPT, "image": 0, "video": 0}
    return path, tokenizer, dict(model=str(path), tokenizer=str(path), limit_mm_per_prompt=limits, **engine)


def _check_full_checkpoint(path: Path) -> None:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelFormatError(f"{path}: no config.json; not a model checkpoint")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{config_file}: not readable JSON ({e})") from None
    if "thinker_config" not in config:
        raise ModelFormatError(
            f"{path} is a thinker-only checkpoint and the vllm backend needs a full Qwen2.5-Omni one: make it with "
            f"`sagelm merge {path} --base FULL_CHECKPOINT --out FOLDER` (or judge it with --backend hf)"
        )
