"""Speech recognition on espeak-ng sentences with known text: the embedded Whisper base, its cache."""

import shutil

import jiwer
import numpy as np
import pytest

from sagelm import synth
from sagelm.asr import EMBEDDED, AsrError, AsrSettings, Transcriber, embedded_model_dir
from sagelm.audio import Clip, load_audio

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (make system-deps)")

# Sentences without numerals (Whisper may write "seven" as "7", which is not a recognition error).
TEXTS = [s for s in synth.SENTENCES if not any(w in s.lower() for w in ("seven", "eight", "hundred", "two", "an hour"))]
# The clearest espeak-ng voices for Whisper base (WER on 12 sentences, measured here: steph 0.09, m3 0.12, m1 0.15;
# f2 0.22, travis 0.31, f1 0.37, linda 0.39, belinda 0.45, Andy 0.70).
SPOKEN = [(TEXTS[i], ("m3", "steph", "m1")[i % 3]) for i in range(9)]
NORMALISE = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()])


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> list[tuple[str, Clip]]:
    d = tmp_path_factory.mktemp("asr")
    return [(text, load_audio(synth.speak(text, voice, d / f"{n}.wav"))) for n, (text, voice) in enumerate(SPOKEN)]


@pytest.fixture(scope="module")
def transcriber(tmp_path_factory) -> Transcriber:
    return Transcriber(AsrSettings(), cache_dir=tmp_path_factory.mktemp("transcripts"))


def test_the_embedded_base_model_recognises_espeak_english(spoken, transcriber):
    hyps = [transcriber.transcribe(clip).text for _, clip in spoken]
    wer = jiwer.wer([NORMALISE(t) for t, _ in spoken], [NORMALISE(h) for h in hyps])
    assert wer < 0.2, list(zip([t for t, _ in spoken], hyps, strict=True))
    t = transcriber.transcribe(spoken[0][1])
    assert t.seconds == pytest.approx(len(spoken[0][1].samples) / 16_000, abs=1e-3) and 1.0 < t.words_per_second < 6


def test_a_clip_is_transcribed_once_for_every_aspect_and_order(spoken, tmp_path):
    t = Transcriber(AsrSettings(), cache_dir=tmp_path)
    a, b = spoken[0][1], spoken[1][1]
    for _aspect in range(4):
        for first, second in ((a, b), (b, a)):
            t.transcribe(first), t.transcribe(second)
    assert (t.misses, t.hits) == (2, 14)
    again = Transcriber(AsrSettings(), cache_dir=tmp_path)  # a rerun: from the disk cache, no model loaded
    assert again.transcribe(a).text == t.transcribe(a).text and again.misses == 0 and again._model is None
    other = Transcriber(AsrSettings(beam_size=2), cache_dir=tmp_path)  # other settings: transcribed anew
    other.transcribe(a)
    assert other.misses == 1
    copy = Clip(path="elsewhere.wav", samples=a.samples.copy(), original_seconds=a.original_seconds)
    t.transcribe(copy)
    assert t.misses == 2  # keyed by content, not by path
    louder = Clip(path=a.path, samples=np.clip(a.samples * 1.5, -1, 1), original_seconds=a.original_seconds)
    t.transcribe(louder)
    assert t.misses == 3


def test_the_embedded_model_is_checked_when_assembled(tmp_path, monkeypatch):
    good = embedded_model_dir("base")
    assert good.name.startswith("faster-whisper-base-") and (good / "model.bin").stat().st_size > 100e6
    monkeypatch.setitem(EMBEDDED, "base", EMBEDDED["base"].__class__(EMBEDDED["base"].packages,
                                                                     EMBEDDED["base"].pip_names, "0" * 64))
    with pytest.raises(AsrError, match="has sha256 905e5bf8.*reinstall them"):
        embedded_model_dir("base", root=tmp_path)
    assert not any((tmp_path / "models").iterdir())  # nothing half-assembled left behind


def test_an_unloadable_model_is_one_clear_error(tmp_path, spoken):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AsrError, match="--asr .*empty: cannot load a faster-whisper model"):
        Transcriber(AsrSettings(model=str(tmp_path / "empty")), use_disk=False).transcribe(spoken[0][1])
