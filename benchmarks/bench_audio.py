"""Audio input benchmarks (issue 9 items 7, 8), each next to the whole-file way it replaced, in one run:

(a) load_audio of a 2-hour 8 kHz wav vs a 1-minute one: time and peak RSS, each in a fresh process, beside
    decoding and resampling the whole file before the 60 s cut (the way before);
(b) resume-key digests (records.file_digest) of 2,000 ten-second 16 kHz wavs and of one 1 GiB file, beside a
    sha256 of every byte, and at a rerun's start, when the user cache remembers them (records.DigestCache).

    .venv/bin/python benchmarks/bench_audio.py
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

N_FILES = 2_000  # a dataset of this many clips, keyed at every start of `sagelm judge`
CLIP_BYTES = 10 * 16_000 * 2 + 44  # ten seconds of 16 kHz 16-bit mono wav
BIG_BYTES = 1 << 30

LOAD = """
import resource, sys, time
import numpy as np, soundfile as sf, soxr
from sagelm.audio import MAX_SAMPLES, load_audio, resample
t = time.perf_counter()
if sys.argv[2] == "sagelm":
    n = len(load_audio(sys.argv[1]).samples)
else:  # the way before: decode and resample the whole file, then cut
    data, sr = sf.read(sys.argv[1], dtype="float32", always_2d=True)
    n = len(resample(np.ascontiguousarray(data[:, 0]), sr)[:MAX_SAMPLES])
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, n)
"""


def write_tone(path: Path, minutes: int, sr: int = 8_000) -> None:
    block = (0.5 * np.sin(2 * np.pi * 440 * np.arange(60 * sr) / sr)).astype(np.float32)
    with sf.SoundFile(str(path), "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        for _ in range(minutes):
            f.write(block)


def bench_load(d: Path) -> None:
    print("(a) load_audio: seconds, peak RSS of a fresh process (after importing numpy, soundfile, soxr: ~35 MB)")
    for minutes in (1, 120):
        path = d / f"{minutes}min.wav"
        write_tone(path, minutes)
        for way in ("sagelm", "whole-file"):
            out = subprocess.run([sys.executable, "-c", LOAD, str(path), way], capture_output=True, text=True,
                                 check=True).stdout.split()  # fmt: skip
            print(f"    {minutes:4d} min at 8 kHz, {way:10s}: {float(out[0]):6.2f} s, {float(out[1]):6.0f} MB, "
                  f"{out[2]} samples kept")  # fmt: skip


def sha256_whole(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def bench_digest(d: Path) -> None:
    from sagelm.records import DIGEST_RACY_S, DigestCache, file_digest

    rng = np.random.default_rng(0)
    clips = [d / f"c{i}.wav" for i in range(N_FILES)]
    for c in clips:
        c.write_bytes(rng.bytes(CLIP_BYTES))
    big = d / "big.wav"
    with big.open("wb") as f:
        for _ in range(BIG_BYTES >> 24):
            f.write(rng.bytes(1 << 24))
    time.sleep(DIGEST_RACY_S)  # a dataset is older than this; a file changed just now is not remembered
    remembered = DigestCache(d / "cache")
    for p in [*clips, big]:  # the first start
        remembered(str(p))
    print("(b) resume-key digests (files in the page cache; best of 3)")
    rerun = ("DigestCache, a rerun", lambda p: DigestCache(d / "cache")(p))
    for name, fn in (("file_digest", file_digest), ("sha256 of every byte", sha256_whole), rerun):
        for what, paths in ((f"{N_FILES} x {CLIP_BYTES / 1e3:.0f} KB clips", clips), ("one 1 GiB file", [big])):
            best = min(_timed(fn, paths) for _ in range(3))
            print(f"    {name:21s} {what:22s}: {best:6.3f} s")


def _timed(fn, paths) -> float:
    t = time.perf_counter()
    for p in paths:
        fn(p if fn is sha256_whole else str(p))
    return time.perf_counter() - t


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bench_load(Path(tmp))
        bench_digest(Path(tmp))


if __name__ == "__main__":
    main()
