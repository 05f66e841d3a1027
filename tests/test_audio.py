import logging
import math

import numpy as np
import pytest
import soundfile as sf
from conftest import DEMO_AUDIO, noise, tone, write

from sagelm.audio import (
    MAX_SAMPLES,
    AudioError,
    load_audio,
    log_mel_batch,
    n_audio_tokens,
    n_frames,
)


def test_token_counts_follow_the_protocol():
    assert n_frames(47_520) == 297
    assert n_audio_tokens(int(2.97 * 16_000)) == 74
    assert n_audio_tokens(60 * 16_000) == 1500
    assert n_audio_tokens(16_000) == 25
    assert n_audio_tokens(321) == 1  # 3 frames
    assert n_audio_tokens(161) == 0  # 2 frames: load_audio rejects such a clip


def test_sixty_seconds_gives_1500_tokens_and_longer_is_cut(tmp_path, caplog):
    write(tmp_path / "60.wav", tone(60.0))
    write(tmp_path / "75.wav", tone(75.0))
    assert load_audio(tmp_path / "60.wav").n_tokens == 1500
    with caplog.at_level(logging.WARNING):
        clip = load_audio(tmp_path / "75.wav")
    assert clip.truncated and len(clip.samples) == MAX_SAMPLES and clip.n_tokens == 1500
    assert "75.0 s long; the judge hears only its first 60 s" in caplog.text


def test_real_68_second_answer_is_cut_to_1500_tokens(release, caplog):
    with caplog.at_level(logging.WARNING):
        clip = load_audio(DEMO_AUDIO / "53" / "kimi-Audio.wav")
    assert clip.original_seconds == pytest.approx(68.2, abs=0.1)
    assert clip.n_tokens == 1500
    assert "first 60 s" in caplog.text


def test_2_97_seconds_at_24khz(tmp_path):
    path = write(tmp_path / "a.wav", tone(2.97, sr=24_000), sr=24_000)
    clip = load_audio(path)
    assert len(clip.samples) == math.ceil(int(round(2.97 * 24_000)) * 16_000 / 24_000)  # librosa-style length
    assert clip.n_tokens == 74


def test_stereo_is_downmixed_to_the_mean(tmp_path):
    left, right = tone(0.5, 440), tone(0.5, 880, amp=0.2)
    sf.write(str(tmp_path / "st.wav"), np.stack([left, right], axis=1), 16_000, subtype="FLOAT")
    clip = load_audio(tmp_path / "st.wav")
    np.testing.assert_allclose(clip.samples, (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3", "ogg"])
def test_formats(tmp_path, ext):
    sf.write(str(tmp_path / f"a.{ext}"), tone(1.0, sr=22_050), 22_050)
    clip = load_audio(tmp_path / f"a.{ext}")
    assert clip.original_seconds == pytest.approx(1.0, abs=0.1)
    assert abs(len(clip.samples) - 16_000) < 2_000
    assert np.max(np.abs(clip.samples)) > 0.3


def test_bad_inputs_name_the_file_and_the_problem(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio, just text\n" * 20)
    good = write(tmp_path / "good.wav", tone(1.0))
    (tmp_path / "corrupt.wav").write_bytes(good.read_bytes()[:20] + b"\x00garbage" * 50)
    sf.write(str(tmp_path / "zero.wav"), np.zeros((0,), dtype=np.float32), 16_000)
    write(tmp_path / "silent.wav", np.zeros(16_000, dtype=np.float32))
    write(tmp_path / "blip.wav", tone(0.01))
    cases = {
        "missing.wav": "no such file",
        "empty.wav": "empty file",
        "text.wav": "not readable as audio",
        "corrupt.wav": "not readable as audio",
        "zero.wav": "zero length",
        "silent.wav": "is silent",
        "blip.wav": "too short (10 ms)",
    }
    for name, problem in cases.items():
        with pytest.raises(AudioError) as e:
            load_audio(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and problem in str(e.value), name
        assert "\n" not in str(e.value)


def test_features_match_the_stock_extractor_on_valid_frames(tmp_path):
    from sagelm.tiny import build_feature_extractor

    stock = build_feature_extractor()  # the real checkpoint's settings: pads every clip to 300 s
    a = load_audio(write(tmp_path / "a.wav", tone(2.97)))
    b = load_audio(write(tmp_path / "b.wav", noise(1.31)))
    features, mask = log_mel_batch([a, b], stock)
    assert features.shape == (2, 128, 297) and mask.sum(axis=1).tolist() == [297, 131]
    ref = stock([a.samples, b.samples], sampling_rate=16_000, return_attention_mask=True, return_tensors="np")
    assert ref["input_features"].shape == (2, 128, 30_000)
    assert ref["attention_mask"].sum(axis=1).tolist() == [297, 131]
    for i, clip in enumerate([a, b]):
        n = clip.n_frames
        np.testing.assert_allclose(features[i, :, :n], ref["input_features"][i, :, :n], atol=1e-5)


def test_features_do_not_depend_on_the_batch(tmp_path):
    from sagelm.tiny import build_feature_extractor

    fe = build_feature_extractor()
    a = load_audio(write(tmp_path / "a.wav", tone(0.8)))
    b = load_audio(write(tmp_path / "b.wav", noise(2.5)))
    alone, _ = log_mel_batch([a], fe)
    together, _ = log_mel_batch([a, b], fe)
    np.testing.assert_allclose(together[0, :, : a.n_frames], alone[0], atol=1e-6)
