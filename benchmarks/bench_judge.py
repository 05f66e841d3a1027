"""Judge benchmarks, measured side by side in one run (run on demand: `make bench`).

(a) audio front end for a pair of 60 s clips: sagelm (pad to the batch's longest clip) vs the stock
    processor settings of the released checkpoint (every clip padded to 300 s);
(b) a tiny thinker judging 32 pairs: batch 8 vs batch 1;
(c) --verdict-only (one decoding step) vs a full rationale of 64 new tokens.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from sagelm.audio import load_audio, log_mel_batch
from sagelm.data import Pair
from sagelm.decoding import DecodingOptions
from sagelm.judge import Judge, plan
from sagelm.tiny import build_feature_extractor, build_tiny_judge

SR = 16_000


def best_of(fn, reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def speech_like(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.5 * t)
    x = np.sin(2 * np.pi * np.cumsum(f0) / SR) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) * 0.4
    return (x + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def front_end(tmp: Path) -> None:
    paths = []
    for i in range(2):
        paths.append(tmp / f"long{i}.wav")
        sf.write(str(paths[-1]), speech_like(60.0, i), SR)
    clips = [load_audio(p) for p in paths]
    fe = build_feature_extractor()  # chunk_length 300, n_samples 4.8 M: the released checkpoint's settings
    ours_t = best_of(lambda: log_mel_batch(clips, fe))
    stock_t = best_of(lambda: fe([c.samples for c in clips], sampling_rate=SR, return_attention_mask=True,
                                 return_tensors="np"))  # fmt: skip
    ours, _ = log_mel_batch(clips, fe)
    stock = fe([c.samples for c in clips], sampling_rate=SR, return_attention_mask=True, return_tensors="np")
    diff = max(np.abs(ours[i, :, : c.n_frames] - stock["input_features"][i, :, : c.n_frames]).max()
               for i, c in enumerate(clips))  # fmt: skip
    print("(a) audio front end, a pair of 60 s clips")
    print(f"    sagelm : {ours_t * 1000:8.1f} ms  features {ours.nbytes / 2**20:6.1f} MiB  {ours.shape}")
    print(f"    stock  : {stock_t * 1000:8.1f} ms  features {stock['input_features'].nbytes / 2**20:6.1f} MiB  "
          f"{stock['input_features'].shape}")  # fmt: skip
    print(f"    speed-up {stock_t / ours_t:.1f}x, feature memory {stock['input_features'].nbytes / ours.nbytes:.1f}x "
          f"less; max |difference| on valid frames {diff:.2e}")  # fmt: skip


def judging(tmp: Path) -> None:
    model_dir = build_tiny_judge(tmp / "tiny")
    pairs = []
    for i in range(32):
        a, b = tmp / f"a{i}.wav", tmp / f"b{i}.wav"
        sf.write(str(a), speech_like(3.0 + (i % 5), 2 * i), SR)
        sf.write(str(b), speech_like(2.5 + (i % 3), 2 * i + 1), SR)
        pairs.append(Pair(f"p{i}", "Give me a healthy dinner idea.", str(a), str(b)))
    tasks = list(plan(pairs, ["helpfulness"]))

    def rate(options: DecodingOptions, batch_size: int) -> tuple[float, float]:
        judge = Judge.from_pretrained(str(model_dir), options)
        list(judge.judge(tasks[:batch_size], batch_size))  # warm-up, and the audio cache
        t = time.perf_counter()
        records = [r for b in judge.judge(tasks, batch_size) for r in b]
        dt = time.perf_counter() - t
        n_tokens = np.mean([r.new_tokens for r in records])
        return len(records) / dt, float(n_tokens)

    full = DecodingOptions(max_new_tokens=64)
    r1, t1 = rate(full, 1)
    r8, t8 = rate(full, 8)
    print("(b) tiny thinker, 32 pairs, 64 new tokens at most")
    print(f"    batch 1: {r1:7.2f} judgments/s (mean {t1:.0f} tokens)   batch 8: {r8:7.2f} judgments/s "
          f"(mean {t8:.0f} tokens)   ratio {r8 / r1:.1f}x")  # fmt: skip
    rv, _ = rate(DecodingOptions(verdict_only=True), 1)
    print("(c) --verdict-only vs a full rationale of 64 new tokens (batch 1)")
    print(f"    verdict-only: {rv:7.2f} judgments/s   full: {r1:7.2f} judgments/s   ratio {rv / r1:.1f}x")


def main() -> None:
    torch.set_num_threads(2)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as d:
        front_end(Path(d))
        judging(Path(d))


if __name__ == "__main__":
    main()
