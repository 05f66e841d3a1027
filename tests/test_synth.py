"""The synthetic gender-instruction-following set: voices, labels, rationales, held-out split."""

from __future__ import annotations

import json
import re

import pytest

from sagelm import synth
from sagelm.audio import load_audio
from sagelm.samples import read_samples


def test_held_out_voices_and_sentences_never_train():
    train, held = synth.voices(False), synth.voices(True)
    assert not {v.name for v in train} & {v.name for v in held}
    for split in (train, held):
        assert {v.gender for v in split} == {"male", "female"}
    assert not set(synth.sentences(False)) & set(synth.sentences(True))


@pytest.mark.parametrize(
    ("wanted", "first", "second", "verdict"),
    [
        ("female", "female", "male", "1"),
        ("female", "male", "female", "2"),
        ("male", "male", "male", "Tie"),
        ("male", "female", "female", "Tie"),
        ("male", "male", "female", "1"),
    ],
)
def test_verdict_and_rationale(wanted, first, second, verdict):
    assert synth.verdict(wanted, first, second) == verdict
    r = synth.rationale(wanted, first, second)
    assert r.startswith(f"The Instruction requires using {synth.SPEAKER[wanted]}'s voice. ")
    assert f"Response 1 uses {synth.SPEAKER[first]}'s voice, Response 2 uses {synth.SPEAKER[second]}'s voice." in r


def test_make_gender_set(tmp_path):
    train, held = synth.make_gender_set(tmp_path, train_pairs=30, heldout_pairs=12, seed=3)
    for path, n, held_out in ((train, 60, False), (held, 12, True)):  # training pairs come in both orders
        rows = json.loads(path.read_text())
        samples, problems = read_samples([path])
        assert len(samples) == n and problems == []
        voices = {v.name: v.gender for v in synth.voices(held_out)}
        for row, s in zip(rows, samples, strict=True):
            assert s.aspect == synth.ASPECT
            wanted = re.search(r"with a (male|female) voice", s.question).group(1)
            genders = []
            for audio in row["audios"]:
                sentence_index, voice = re.match(r"audio/s(\d+)-(.+)\.wav", audio).groups()
                assert (
                    voice in voices and (synth.SENTENCES[int(sentence_index)] in synth.HELD_OUT_SENTENCES) == held_out
                )
                assert synth.SENTENCES[int(sentence_index)] in s.question
                genders.append(voices[voice])
            assert s.verdict == synth.verdict(wanted, *genders)
            assert s.rationale == synth.rationale(wanted, *genders)
    rows = json.loads(train.read_text())
    for a, b in zip(rows[::2], rows[1::2], strict=True):
        assert b["audios"] == a["audios"][::-1] and b["instruction"] == a["instruction"]
        assert b["output"].split("\n")[0] == {"1": "2", "2": "1", "Tie": "Tie"}[a["output"].split("\n")[0]]
        assert "Response 1 uses" in b["output"].split("\n")[1].split(",")[0]  # Response 1 named first
    clip = load_audio(tmp_path / json.loads(train.read_text())[0]["audios"][0])
    assert 0.5 < len(clip.samples) / 16_000 < 4.0  # a short sentence, resampled from espeak-ng's 22.05 kHz
    labels = synth.label_counts(json.loads(train.read_text()))
    assert labels["1"] > 0 and labels["2"] > 0


def test_missing_espeak_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(synth.SynthError, match="espeak-ng not found: install it"):
        synth.speak("hello", "m1", tmp_path / "x.wav")


def test_cli_synth_gender(tmp_path):
    import os
    import subprocess

    from conftest import REPO

    exe = REPO / ".venv" / "bin" / "sagelm"
    done = subprocess.run(
        [str(exe) if exe.exists() else "sagelm", "synth", "gender", str(tmp_path / "g"), "--train-pairs", "3",
         "--heldout-pairs", "2", "--seed", "1"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(json.loads((tmp_path / "g" / "train.json").read_text())) == 6
    assert len(json.loads((tmp_path / "g" / "heldout.json").read_text())) == 2


def test_existing_data_or_a_file_as_out_is_refused(tmp_path):
    (tmp_path / "train.json").write_text("[] mine")
    with pytest.raises(synth.SynthError, match=r"train.json exists; choose another folder, or pass --overwrite"):
        synth.make_gender_set(tmp_path, train_pairs=1, heldout_pairs=1)
    assert (tmp_path / "train.json").read_text() == "[] mine" and not (tmp_path / "audio").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(synth.SynthError, match="is a file, not a folder"):
        synth.make_gender_set(tmp_path / "file", train_pairs=1, heldout_pairs=1)


def test_cli_synth_refuses_to_overwrite_in_one_line(tmp_path):
    import os
    import subprocess

    from conftest import REPO

    exe = REPO / ".venv" / "bin" / "sagelm"
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "heldout.json").write_text("mine")
    done = subprocess.run([str(exe) if exe.exists() else "sagelm", "synth", "gender", str(tmp_path / "g")],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=60)  # fmt: skip
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("sagelm: error: ")
    assert "heldout.json exists" in done.stderr and (tmp_path / "g" / "heldout.json").read_text() == "mine"


def test_cli_synth_out_that_is_a_file_is_one_line(tmp_path):
    import os
    import subprocess

    from conftest import REPO

    exe = REPO / ".venv" / "bin" / "sagelm"
    (tmp_path / "g").write_text("mine")
    done = subprocess.run([str(exe) if exe.exists() else "sagelm", "synth", "gender", str(tmp_path / "g")],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=60)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [f"sagelm: error: {tmp_path / 'g'} is a file, not a folder"]
    assert (tmp_path / "g").read_text() == "mine"
