"""Audio front end: decode, downmix, resample to 16 kHz, keep the first 60 s, log-mel features.

Everything here matches how SageLM was trained (judge-protocol.md); nothing here imports torch.
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sagelm.errors import SagelmError
from sagelm.paths import UnusableFile, is_utf8, open_regular, shown

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
HOP_LENGTH = 160  # Whisper STFT hop: 10 ms, so 100 mel frames per second
N_FFT = 400  # Whisper STFT window: 25 ms
N_MELS = 128  # Qwen2.5-Omni's audio encoder takes 128 mel bins
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
AUDIO_TOKENS_PER_SECOND = FRAMES_PER_SECOND // 4  # conv stride 2, then average pool 2: 25
MAX_AUDIO_SECONDS = 60  # SageLM was trained on the first 60 s of each response
MAX_SAMPLES = MAX_AUDIO_SECONDS * SAMPLE_RATE  # 960,000 samples -> 6,000 frames -> 1,500 audio tokens
MIN_FRAMES = 3  # fewer mel frames than this make no audio token at all
AUDIO_CACHE_SIZE = 16  # clips kept decoded: a pair judged on several aspects and in both orders loads once
SILENCE_PEAK = 1e-4  # below this peak amplitude a clip holds nothing to hear: judged, with a warning
# Input decoded past the 60 s cut: soxr's HQ filter reaches a few ms either side of an output sample, so with a
# second more the kept part resamples as it did from the whole file (to float rounding).
EDGE_SECONDS = 1.0


class AudioError(SagelmError, ValueError):
    """A file that cannot be judged; the message names the file and the problem."""


@dataclass(frozen=True)
class Clip:
    """A response as the judge hears it: mono float32 at 16 kHz, at most 60 s."""

    path: str
    samples: np.ndarray
    original_seconds: float
    warning: str | None = None  # what a reader of the judgment should know: "silent", "cut to its first 60 s"

    @property
    def truncated(self) -> bool:
        return self.original_seconds > MAX_AUDIO_SECONDS

    @property
    def n_frames(self) -> int:
        return n_frames(len(self.samples))

    @property
    def n_tokens(self) -> int:
        return n_audio_tokens(len(self.samples))


def n_frames(n_samples: int) -> int:
    """Mel frames the processor counts for a clip: ceil(samples / 160)."""
    return math.ceil(n_samples / HOP_LENGTH)


def tokens_for_frames(frames: int) -> int:
    """Audio tokens Qwen2.5-Omni makes of `frames` mel frames (conv stride 2, then pool 2)."""
    after_conv = (frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def n_audio_tokens(n_samples: int) -> int:
    """Audio tokens for a 16 kHz clip of `n_samples` (after the 60 s cut): 25 per second."""
    return tokens_for_frames(n_frames(n_samples))


def resample(x: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """soxr (HQ) resampling with librosa's output length, ceil(n * target / orig), as the authors' path."""
    if orig_sr == target_sr:
        return x
    import soxr

    y = soxr.resample(x, orig_sr, target_sr, quality="HQ")
    n = math.ceil(len(x) * target_sr / orig_sr)
    if len(y) < n:
        y = np.pad(y, (0, n - len(y)))
    return np.ascontiguousarray(y[:n], dtype=np.float32)


def load_audio(path: str | Path) -> Clip:
    """Read wav/flac/mp3/ogg, downmix to mono, resample to 16 kHz and keep the first 60 s.

    Only what the judge hears is decoded: the first 60 s and EDGE_SECONDS more (for the resampler's filter),
    read frame by frame from the start, so a two-hour file costs what a minute does. A silent clip is judged,
    with `warning` set; what cannot be judged (missing, not a regular file, not audio, no samples, NaN or
    infinite samples, too short for one audio token) is an AudioError naming the file and the problem.
    """
    import soundfile as sf

    p = Path(path)
    if not is_utf8(p):
        raise AudioError(f"{shown(p)}: the file name is not valid UTF-8; rename the file (records hold its name as "
                         "UTF-8 text)")  # fmt: skip
    try:
        f = open_regular(p, "an audio file")
    except UnusableFile as e:
        raise AudioError(f"{p}: {e.problem}") from None
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise AudioError(f"{p}: empty file")
        try:
            with sf.SoundFile(f) as sound:
                sr = sound.samplerate
                heard = math.ceil(MAX_AUDIO_SECONDS * sr)  # input frames of the first 60 s
                wanted = heard + math.ceil(EDGE_SECONDS * sr)
                data = sound.read(wanted, dtype="float32", always_2d=True)
                total = max(sound.frames, len(data)) if len(data) == wanted else len(data)
        except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise AudioError(f"{p}: not readable as audio ({detail})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{p}: holds no samples (zero length)")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{p}: holds NaN or infinite samples")
    original_seconds = total / sr
    samples = resample(np.ascontiguousarray(mono), sr)
    if n_frames(len(samples)) < MIN_FRAMES:
        raise AudioError(f"{p}: too short ({1000 * original_seconds:.0f} ms) to make a single audio token")
    warnings = []
    if float(np.max(np.abs(mono[:heard]))) < SILENCE_PEAK:
        logger.warning("%s is silent (peak amplitude below %g); judging it as it is", p, SILENCE_PEAK)
        warnings.append(f"silent (peak amplitude below {SILENCE_PEAK})")
    if total > heard:
        logger.warning(
            "%s is %.1f s long; the judge hears only its first %d s", p, original_seconds, MAX_AUDIO_SECONDS
        )
        warnings.append(f"cut to its first {MAX_AUDIO_SECONDS} s ({original_seconds:.1f} s long)")
        samples = samples[:MAX_SAMPLES]
    return Clip(path=str(p), samples=samples, original_seconds=original_seconds, warning="; ".join(warnings) or None)


def padded_samples(clips: Sequence[Clip]) -> int:
    """Samples the longest of `clips` is padded to for the STFT: its frames plus one window of trailing zeros.

    On every valid frame this gives the values the stock processor's padding to 300 s gives (no frame sees
    reflection padding), for a fraction of the STFT."""
    return max(c.n_frames for c in clips) * HOP_LENGTH + N_FFT


def log_mel_batch(clips: Sequence[Clip], feature_extractor: Any) -> tuple[np.ndarray, np.ndarray]:
    """Whisper log-mel features of `clips`, padded to the longest clip of the batch (not to 300 s).

    Returns (features [n, 128, frames], mask [n, frames]). On each clip's valid frames the values equal those
    of the stock processor, which pads every clip with zeros to the extractor's full window: every clip gets
    at least one window of trailing zeros here too, so no frame sees STFT reflection padding instead.
    """
    lengths = [c.n_frames for c in clips]
    longest = max(lengths)
    batch = np.zeros((len(clips), padded_samples(clips)), dtype=np.float32)
    for i, c in enumerate(clips):
        batch[i, : len(c.samples)] = c.samples
    out = feature_extractor(
        list(batch),
        sampling_rate=SAMPLE_RATE,
        padding="longest",
        truncation=False,
        return_attention_mask=False,
        return_tensors="np",
    )
    features = np.ascontiguousarray(out["input_features"][:, :, :longest], dtype=np.float32)
    mask = (np.arange(longest)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    return features, mask


class ClipCache:
    """Decoded clips by path, least recently used dropped first; a failure is remembered and raised again."""

    def __init__(self, size: int = AUDIO_CACHE_SIZE):
        self.size = size
        self._items: OrderedDict[str, Clip | AudioError] = OrderedDict()

    def get(self, path: str) -> Clip:
        if path not in self._items:
            try:
                self._items[path] = load_audio(path)
            except AudioError as e:
                self._items[path] = e
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        self._items.move_to_end(path)
        item = self._items[path]
        if isinstance(item, AudioError):
            raise item
        return item
