"""Training samples: reading, swap augmentation, answer-only labels, cutoff accounting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import noise, tone, write

from sagelm.audio import load_audio
from sagelm.encoding import IGNORE_INDEX, Example, build_inputs
from sagelm.prompts import IM_END, instruction_prompt
from sagelm.samples import Sample, data_files, prepare, read_samples, swap_rationale, swapped
from sagelm.tiny import build_feature_extractor, build_tokenizer

ASPECT = "gender instruction following"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _rows(tmp_path: Path) -> Path:
    a = write(tmp_path / "a.wav", tone(1.0, 200.0))
    b = write(tmp_path / "b.wav", noise(2.0))
    rows = [
        {
            "instruction": instruction_prompt(ASPECT, "Say hi with a female voice."),
            "input": "",
            "output": "1\nResponse 1 uses woman's voice, Response 2 uses man's voice.",
            "audios": ["a.wav", "b.wav"],
        },
        {"instruction": "not a judge prompt", "input": "", "output": "1", "audios": ["a.wav", "b.wav"]},
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    lines = [
        {
            "id": "j1",
            "instruction": "Which is the tone?",
            "audio_1": str(a),
            "audio_2": str(b),
            "aspect": "helpfulness",
            "output": "Tie\nBoth are fine.",
        },
        {
            "id": "j2",
            "instruction": "Which is the tone?",
            "audio_1": "a.wav",
            "audio_2": "b.wav",
            "label": "2",
            "aspect": "helpfulness",
        },
        {"id": "j3", "instruction": "No label here", "audio_1": "a.wav", "audio_2": "b.wav", "aspect": "honesty"},
        {"id": "j4", "instruction": "No aspect", "audio_1": "a.wav", "audio_2": "b.wav", "label": "1"},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return tmp_path


def test_read_samples_keeps_trainable_rows_and_names_the_others(tmp_path):
    d = _rows(tmp_path)
    samples, problems = read_samples([d / "d.json", d / "d.jsonl"])
    assert [(s.id, s.aspect, s.verdict) for s in samples] == [
        ("d-0", ASPECT, "1"),
        ("j1", "helpfulness", "Tie"),
        ("j2", "helpfulness", "2"),
    ]
    assert samples[0].question == "Say hi with a female voice."
    assert samples[0].answer == "1\nResponse 1 uses woman's voice, Response 2 uses man's voice." + IM_END
    assert samples[2].answer == "2" + IM_END  # a label alone: the verdict is the whole target
    assert samples[0].audio_1 == str(d / "a.wav")
    assert len(problems) == 3
    assert "d.json row 1" in problems[0] and "not a SageLM instruction prompt" in problems[0]
    assert "row j3" in problems[1] and "no label" in problems[1]
    assert "row j4" in problems[2] and "no aspect" in problems[2]
    assert len(read_samples([d / "d.jsonl"], max_samples=2)[0]) == 2


def test_jsonl_label_and_output_must_agree(tmp_path):
    write(tmp_path / "a.wav", tone(0.5))
    row = {
        "id": "x",
        "instruction": "q",
        "audio_1": "a.wav",
        "audio_2": "a.wav",
        "aspect": "honesty",
        "label": "1",
        "output": "2\nResponse 2 ...",
    }
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    samples, problems = read_samples([tmp_path / "d.jsonl"])
    assert samples == [] and "disagrees" in problems[0] and "line 1" in problems[0]


def test_swap_maps_verdict_rationale_and_audio():
    s = Sample("p", ASPECT, "q", "a.wav", "b.wav", "1", "Response 1 is female; response 2 is male. Response2?")
    t = swapped(s)
    assert (t.audio_1, t.audio_2, t.verdict, t.swapped) == ("b.wav", "a.wav", "2", True)
    assert t.rationale == "Response 2 is female; response 1 is male. Response1?"
    assert swapped(t) == s
    assert swapped(Sample("p", ASPECT, "q", "a", "b", "Tie", "Both are Response 1 and 2")).verdict == "Tie"
    assert swap_rationale("Responses 12 and Response 12") == "Responses 12 and Response 12"


def _example(sample: Sample) -> Example:
    return Example(
        sample.aspect, sample.question, load_audio(sample.audio_1), load_audio(sample.audio_2), sample.answer
    )


def test_labels_cover_exactly_the_answer_tokens(tmp_path, tok):
    d = _rows(tmp_path)
    samples, _ = read_samples([d / "d.json", d / "d.jsonl"])
    examples = [_example(s) for s in samples]
    batch = build_inputs(tok, build_feature_extractor(), examples, with_answers=True)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape
    for row, ex in enumerate(examples):
        carried = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert tok.decode(carried) == ex.answer  # the answer, <|im_end|> included, and nothing else
        n = len(carried)
        assert ids[row, -n:].tolist() == carried  # the answer ends the row (padding is on the left)
        prompt = tok.decode(ids[row][mask[row].bool()][:-n].tolist())
        assert prompt == ex.text  # what precedes it is exactly what the judge reads
        assert (labels[row][mask[row] == 0] == IGNORE_INDEX).all()


def test_prepare_counts_tokens_drops_too_long_and_bad_audio(tmp_path, tok):
    short = write(tmp_path / "short.wav", tone(0.5))
    long = write(tmp_path / "long.wav", tone(3.0))
    (tmp_path / "broken.wav").write_bytes(b"RIFF....nonsense")
    samples = [
        Sample("s", "honesty", "q", str(short), str(short), "1", "Response 1 ok."),
        Sample("l", "honesty", "q", str(long), str(short), "2", "Response 2 ok."),
        Sample("b", "honesty", "q", str(tmp_path / "broken.wav"), str(short), "Tie", ""),
    ]
    fe = build_feature_extractor()
    lengths = [build_inputs(tok, fe, [_example(s)], with_answers=True)["input_ids"].shape[1] for s in samples[:2]]
    assert lengths[1] - lengths[0] == 75 - 12  # 3.0 s -> 75 audio tokens, 0.5 s -> 12 (25 per second)
    ready = prepare(samples, tok, cutoff_len=lengths[0] + 10)
    assert [s.id for s in ready.samples] == ["s"]
    assert ready.lengths == [lengths[0]]  # the count includes the audio tokens and the answer
    assert ready.summary() == {"read": 3, "kept": 1, "too_long": 1, "bad_audio": 1, "bad_rows": 0}
    assert "row b" in ready.problems[0] and "broken.wav" in ready.problems[0]
    both = prepare(samples, tok, cutoff_len=10_000, swap_augment=True)
    assert both.summary() == {"read": 6, "kept": 4, "too_long": 0, "bad_audio": 2, "bad_rows": 0}
    assert [(s.id, s.swapped, s.verdict) for s in both.samples] == [
        ("s", False, "1"),
        ("s", True, "2"),
        ("l", False, "2"),
        ("l", True, "1"),
    ]


def test_data_files_resolve_paths_and_registered_names(tmp_path):
    (tmp_path / "x.json").write_text("[]")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "x.json"}}))
    assert data_files(["mine", "x.json"], tmp_path) == [tmp_path / "x.json", tmp_path / "x.json"]
    with pytest.raises(ValueError, match="'other': no such file"):
        data_files(["other"], tmp_path)


def test_a_corrupt_registry_is_named(tmp_path):
    from sagelm.data import DataError

    (tmp_path / "dataset_info.json").write_text('{"mine": {"file_name": "x.json"')
    with pytest.raises(DataError, match=r"dataset_info.json: not valid JSON") as e:
        data_files(["mine"], tmp_path)
    assert str(tmp_path / "dataset_info.json") in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "dataset_info.json").write_text('["mine"]')
    with pytest.raises(DataError, match="expected a JSON object of dataset entries, got a list"):
        data_files(["mine"], tmp_path)


def test_media_dir_resolves_relative_audio_first(tmp_path):
    """LLaMA-Factory's media_dir: a relative path names media_dir/path when that exists, else as before."""
    d = _rows(tmp_path / "data")
    media = tmp_path / "media"
    write(media / "a.wav", tone(0.5, 300.0))  # only a.wav is in media_dir; b.wav stays beside the data
    samples, _ = read_samples([d / "d.json", d / "d.jsonl"], media_dir=media)
    by_id = {s.id: s for s in samples}
    assert (by_id["d-0"].audio_1, by_id["d-0"].audio_2) == (str(media / "a.wav"), str(d / "b.wav"))
    assert by_id["j2"].audio_1 == str(media / "a.wav")
    without, _ = read_samples([d / "d.json"])
    assert without[0].audio_1 == str(d / "a.wav")
