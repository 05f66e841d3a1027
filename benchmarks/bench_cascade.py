"""The cascade baseline: transcription throughput with and without the transcript cache, and its cost per judgment.

    python benchmarks/bench_cascade.py [--pairs 4] [--text-judge URL --text-model NAME [--api-key-env VAR]]

espeak-ng speaks 2 x PAIRS different sentences; each pair is judged on the four semantic aspects in both orders
(8 judgments, 16 clips heard) by the cascade backend with the embedded Whisper base (int8, beam 1, CPU).
(a) "audio seconds per second" = seconds of audio the judgments hear / seconds spent in recognition:
    without the cache every heard clip is recognised again; with it each distinct clip once.
(b) API calls and tokens per judgment, as the server reports them. Without --text-judge the tests' own
    OpenAI-compatible server answers (tests/chat_server.py), whose "tokens" are whitespace words.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sagelm import synth
from sagelm.aspects import SEMANTIC_ASPECTS
from sagelm.asr import AsrSettings, Transcriber
from sagelm.audio import load_audio
from sagelm.backends.cascade import CascadeBackend
from sagelm.data import Pair
from sagelm.judge import Judge, Task

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--text-judge")
    ap.add_argument("--text-model", default="tiny")
    ap.add_argument("--api-key-env")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_cascade_"))
    texts = synth.SENTENCES[: 2 * args.pairs]
    files = [str(synth.speak(t, "m3", tmp / f"{i}.wav")) for i, t in enumerate(texts)]
    pairs = [Pair(id=f"p{i}", question="Say something.", audio_1=files[2 * i], audio_2=files[2 * i + 1])
             for i in range(args.pairs)]  # fmt: skip
    tasks = [Task(p, a, s) for p in pairs for a in SEMANTIC_ASPECTS for s in (False, True)]  # fmt: skip

    # (a) recognition alone, as the judgments ask for it
    clips = {f: load_audio(f) for f in files}
    heard = [clips[f] for t in tasks for f in (t.pair.audio_1, t.pair.audio_2)]
    heard_s = sum(len(c.samples) for c in heard) / 16_000
    cold = Transcriber(AsrSettings(), use_disk=False)
    cold.transcribe(heard[0])  # load the model outside the timing
    t0 = time.perf_counter()
    for c in heard:
        cold._recognise(c)  # no cache: every heard clip recognised again
    no_cache_s = time.perf_counter() - t0
    warm = Transcriber(AsrSettings(), cache_dir=tmp / "transcripts")
    warm.transcribe(heard[0])
    warm._memory.clear()
    (tmp / "transcripts").exists() and [p.unlink() for p in (tmp / "transcripts").glob("*.json")]
    warm.hits = warm.misses = 0
    t0 = time.perf_counter()
    for c in heard:
        warm.transcribe(c)
    cache_s = time.perf_counter() - t0
    print(f"(a) {len(tasks)} judgments, {len(heard)} clips heard ({heard_s:.1f} s of audio), "
          f"{len(files)} distinct clips")  # fmt: skip
    print(f"    without cache: {no_cache_s:.2f} s recognising = {heard_s / no_cache_s:.1f} audio s/s "
          f"(real-time factor {no_cache_s / heard_s:.3f})")  # fmt: skip
    print(f"    with cache:    {cache_s:.2f} s recognising ({warm.misses} recognised, {warm.hits} cache hits) = "
          f"{heard_s / cache_s:.1f} audio s/s ({no_cache_s / cache_s:.1f}x)")  # fmt: skip

    # (b) the whole cascade: calls and tokens per judgment
    server = None
    url = args.text_judge
    if url is None:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from chat_server import ChatServer

        server = ChatServer().__enter__()
        url = server.url
    try:
        backend = CascadeBackend.load(text_judge=url, text_model=args.text_model, api_key_env=args.api_key_env,
                                      cache_dir=tmp / "cascade")  # fmt: skip
        judge = Judge(backend)
        t0 = time.perf_counter()
        records = [r for batch in judge.judge(tasks, batch_size=8) for r in batch]
        wall = time.perf_counter() - t0
        ok = [r for r in records if r.error is None]
        usage = [getattr(r, "usage", None) or {} for r in ok]
        print(f"(b) {len(records)} judgments in {wall:.2f} s ({len(records) / wall:.1f}/s, recognition included), "
              f"{len(ok)} answered, {backend.client.calls} API calls = "
              f"{backend.client.calls / len(records):.2f} per judgment")  # fmt: skip
        for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
            vals = [u[k] for u in usage if k in u]
            if vals:
                print(f"    {k}: mean {statistics.mean(vals):.1f} per judgment (min {min(vals)}, max {max(vals)})")
        prompt_chars = [len(backend.body(judge.request(t), r.transcripts, judge.options)["messages"][1]["content"])
                        for t, r in zip(tasks, records, strict=True) if r.error is None]  # fmt: skip
        print(f"    prompt: mean {statistics.mean(prompt_chars):.0f} characters per judgment")
        judge.close()
    finally:
        if server is not None:
            server.__exit__(None, None, None)


if __name__ == "__main__":
    main()
